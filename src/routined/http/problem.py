"""The HTTP error, and how each kind of routined's errors is answered over HTTP.

`Problem` is a status, a message and headers: what code that is HTTP itself raises (a
header checked, a token refused, a body refused). The operations behind the
management API raise routined's own kinds (`routined.errors`) and know nothing of
HTTP; `problem_of` is the one place that says which status and headers each kind is
answered with. The app answers both in its envelope (`routined.http.app`); the CLI,
answering on the store in this process, words an error as the app would. No web
framework here: the CLI imports this without loading one.
"""

from __future__ import annotations

from collections.abc import Mapping

from routined.admission import Code
from routined.errors import (
    BadInput,
    Conflict,
    NotAllowed,
    NotFound,
    Refused,
    RoutinedError,
    ServerFault,
    Unauthenticated,
)


class Problem(Exception):
    """A request that cannot be done as asked; `status` is its HTTP status."""

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


# The status of each kind of error (a refusal's is its rule's, below); a narrower kind
# comes before the kind it narrows.
STATUS: Mapping[type[RoutinedError], int] = {
    BadInput: 400,
    Unauthenticated: 401,
    NotAllowed: 403,
    NotFound: 404,
    Conflict: 409,
    ServerFault: 500,  # the operator's to fix (the secret key, say), said in the message
}

# How a refused fire is answered, by the rule that refused it; `admission.admit`
# decides, for the fire endpoint and a fire by hand alike.
REFUSED_STATUS: Mapping[str, int] = {
    Code.ACCOUNT_DISABLED: 403,
    Code.ROUTINE_PAUSED: 400,
    Code.QUEUE_FULL: 503,
    Code.OVER_LIMIT: 429,
}

# The kinds answered with their own message. An error of any other kind is a bug where
# it surfaced, whose message may hold what a caller must not see (a failing git
# command's URL, say): the app answers it as any other, 500 "internal error", with its
# traceback in the log.
ANSWERED: tuple[type[RoutinedError], ...] = (*STATUS, Refused)


def problem_of(error: RoutinedError) -> Problem:
    """How `error` is answered: its kind's status and its message; a refusal with its
    rule's status and, when its window resets, a Retry-After."""
    if isinstance(error, Refused):
        retry = {} if error.retry_after is None else {"retry-after": str(error.retry_after)}
        return Problem(REFUSED_STATUS[error.code], str(error), headers=retry)
    for kind, status in STATUS.items():
        if isinstance(error, kind):
            return Problem(status, str(error))
    return Problem(500, "internal error; the server log has the details")
