"""How each kind of routined's errors is answered over HTTP, in one table.

The operations raise routined's error kinds (`routined.errors`) and no HTTP status;
`http.problem.problem_of` says which status and headers each is answered with, for
the app and for the CLI answering on the store in this process alike.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from routined import api_keys
from routined.admission import Code
from routined.api_keys import Scope
from routined.config import Settings
from routined.db import Store
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
from routined.http.app import create_app
from routined.http.problem import ANSWERED, problem_of
from routined.limits import PlanError
from routined.models import DEFAULT_ACCOUNT_ID
from routined.operations import routines as operations_routines
from routined.secrets.vault import VaultError
from routined.timeutil import utcnow
from routined.workspace import GitError

# error → status, headers answered. The message is the error's own, except for an
# error of no kind: a bug, answered as any other would be.
TABLE: list[tuple[RoutinedError, int, dict[str, str]]] = [
    (BadInput("name: too long"), 400, {}),
    (PlanError("no plan 'gold'"), 400, {}),  # a concrete error, by its kind
    (Unauthenticated("invalid token for this trigger"), 401, {}),  # narrower than NotAllowed
    (NotAllowed("this key has the read scope; this needs write"), 403, {}),
    (NotFound("no routine named 'x'"), 404, {}),
    (Conflict("run r is active"), 409, {}),
    (ServerFault("cannot read the secret key"), 500, {}),
    (Refused("not started: disabled", code=Code.ACCOUNT_DISABLED), 403, {}),
    (Refused("paused", code=Code.ROUTINE_PAUSED), 400, {}),
    (Refused("full", code=Code.QUEUE_FULL, retry_after=5), 503, {"retry-after": "5"}),
    (Refused("limit", code=Code.OVER_LIMIT, retry_after=3600), 429, {"retry-after": "3600"}),
]


@pytest.mark.parametrize(("error", "status", "headers"), TABLE, ids=lambda v: repr(v)[:40])
def test_each_kind_is_answered_with_its_status_and_own_message(
    error: RoutinedError, status: int, headers: dict[str, str]
) -> None:
    problem = problem_of(error)
    assert (problem.status, problem.message, problem.headers) == (status, str(error), headers)
    assert isinstance(error, ANSWERED)


def test_an_error_of_no_kind_is_an_internal_error() -> None:
    problem = problem_of(VaultError("the key is wrong"))
    assert (problem.status, problem.message) == (
        500,
        "internal error; the server log has the details",
    )
    assert not isinstance(VaultError("x"), ANSWERED)


def test_only_a_refusal_keeps_what_was_written_before_it() -> None:
    assert [kind.__name__ for kind in ANSWERED if kind.keeps] == ["Refused"]


def test_a_failure_outside_routined_is_not_answered_with_its_message(
    sqlite_store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: an error whose message holds a credential (here a git URL with an
    installation token) escapes an operation. Its caller learns only that it failed."""
    leaked = "ghs_SECRETSECRETSECRET"

    def failing(*args: object, **kwargs: object) -> object:
        raise GitError(f"git fetch https://x-access-token:{leaked}@github.com/o/r failed")

    monkeypatch.setattr(operations_routines, "list_routines", failing)
    with sqlite_store.transaction() as session:
        _key, secret = api_keys.issue(
            session, DEFAULT_ACCOUNT_ID, name="operator", scope=Scope.ADMIN, now=utcnow()
        )
    app = create_app(sqlite_store, settings, clock=utcnow)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/api/v1/routines", headers={"authorization": f"Bearer {secret}"})
    assert answer.status_code == 500
    assert answer.json()["error"]["message"] == "internal error; the server log has the details"
    assert leaked not in answer.text
    assert not isinstance(GitError("x"), ANSWERED)
