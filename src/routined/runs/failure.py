"""Why a run failed: the codes its `error` starts with, and the exception that ends it.

docs/runs.md lists exactly the members of `Failure` (a test compares them).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from routined.runs import push


class Failure(enum.StrEnum):
    """The code before the colon of a failed (or otherwise ended) run's `error`."""

    CLONE_FAILED = "clone_failed"  # a repository could not be cloned
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"  # bubblewrap, Claude Code or the caps
    SETUP_FAILED = "setup_failed"  # the setup script failed or ran out of time
    SECRETS_UNAVAILABLE = "secrets_unavailable"  # a secret is missing or undecryptable
    AGENT_FAILED = "agent_failed"  # the session ended with an error
    BUDGET = "budget"  # max_turns or max_cost_usd reached
    TIMED_OUT = "timed_out"  # max_duration (or ROUTINED_RUN_TIMEOUT) reached
    OUT_OF_MEMORY = "out_of_memory"  # a process was killed at the memory cap
    TOO_MANY_PROCESSES = "too_many_processes"  # the process cap refused a process
    DISK_FULL = "disk_full"  # the run's folders went past the disk cap
    DELIVERY_FAILED = "delivery_failed"  # the work could not be packed or pushed
    UNSAFE_OBJECTS = "unsafe_objects"  # git's fsck refused objects of the work
    FILE_TOO_LARGE = "file_too_large"  # the work adds a file over limits.max_file_mb
    SKIPPED = "skipped"  # the trigger's gate turned the run away
    CANCELLED = "cancelled"  # stopped on request
    LOST = "lost"  # its worker stopped beating
    INTERRUPTED = "interrupted"  # the server stopped while it was active
    INTERNAL_ERROR = "internal_error"  # a bug


class RunFailure(Exception):
    """Ends a run as failed with `code: message` as its error."""

    def __init__(self, code: Failure, message: str, *, pushed: Sequence[push.Pushed] = ()) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.pushed = list(pushed)  # branches delivered before the failure
