"""What goes wrong, in three kinds, each with a message that says what to do.

Every error routined raises on purpose is a `RoutinedError`, of one of three kinds that
decide how a surface answers it: the caller's input cannot be used (`BadInput`: fix
what was sent), the caller may not do this (`NotAllowed`), or something outside
routined failed (`OutsideFailure`: git, GitHub, the kernel, the file system; trying
again may help). The concrete errors keep their built-in base too (`ValueError`,
`RuntimeError`, `OSError`), so code that catches those goes on catching them.
"""

from __future__ import annotations


class RoutinedError(Exception):
    """An error routined raises on purpose; its message is meant for a person."""


class BadInput(RoutinedError):
    """Input that cannot be used: a setting, a routines file, a schedule, a body."""


class NotAllowed(RoutinedError):
    """Something the caller may not do, or may not reach."""


class OutsideFailure(RoutinedError):
    """Something outside routined failed: git, GitHub, the sandbox, the kernel, files."""
