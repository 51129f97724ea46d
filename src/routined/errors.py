"""What goes wrong, in a few kinds, each with a message that says what to do.

Every error routined raises on purpose is a `RoutinedError`, of one kind that decides
how a surface answers it: the caller's input cannot be used (`BadInput`: fix what was
sent), the caller may not do this (`NotAllowed`), there is no such object for the
caller (`NotFound`), the object is not in a state that allows it (`Conflict`), a fire
was refused by the admission rules and the refusal recorded (`Refused`), or something
outside routined failed (`OutsideFailure`: git, GitHub, the kernel, the file system;
trying again may help). The concrete errors keep their built-in base too
(`ValueError`, `RuntimeError`, `OSError`), so code that catches those goes on catching
them. Nothing here speaks HTTP: `routined.http.problem` maps each kind to its status.
"""

from __future__ import annotations

from typing import ClassVar


class RoutinedError(Exception):
    """An error routined raises on purpose; its message is meant for a person."""

    # Whether a transaction it ends commits what was written before it (a refusal
    # worth recording) instead of rolling it back.
    keeps: ClassVar[bool] = False


class BadInput(RoutinedError):
    """Input that cannot be used: a setting, a routines file, a schedule, a body."""


class NotAllowed(RoutinedError):
    """Something the caller may not do, or may not reach."""


class Unauthenticated(NotAllowed):
    """The caller showed no credentials that hold: a token or key missing, unknown or
    revoked. Nothing is said of what it would have reached."""


class NotFound(RoutinedError):
    """No such object for the caller: another account's objects are not found either,
    as if they did not exist. The message says where to find what there is."""


class Conflict(RoutinedError):
    """The object is not in a state that allows this (a name taken, a run past
    cancelling, another request changing it meanwhile); the message says what to do."""


class Refused(RoutinedError):
    """A fire the admission rules refused (`routined.admission`): no run started, and
    the refusal is recorded with its reason, so the transaction it ends `keeps` what
    was written before it.

    `code` is the admission code of the rule that refused (a disabled account, a limit
    reached); `retry_after`, the seconds until the window that refused resets, if one
    does.
    """

    keeps = True

    def __init__(self, message: str, *, code: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class OutsideFailure(RoutinedError):
    """Something outside routined failed: git, GitHub, the sandbox, the kernel, files."""


class ServerFault(OutsideFailure):
    """Something the server's operator must fix (its secret key, its configuration),
    said to the caller, who can pass it on. Any other failure outside routined that
    reaches a surface is a bug there: answered as an internal error, and logged."""
