"""The management API under /api/v1: keys and scopes, account isolation, every operation.

Everything goes through the real app (`create_app`), on both stores where the store
takes part; the store is touched directly only to make the first operator key (as an
install's first `routined key create` does), to check where a routine landed and to
stand in for a worker that has taken a run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from routined import api_keys
from routined.api_keys import Scope
from routined.config import Settings
from routined.db import Store
from routined.http import fire as fire_api
from routined.http.app import create_app
from routined.models import DEFAULT_ACCOUNT_ID, Account, Routine, Run
from tests.conftest import T0

PUBLIC_URL = "https://routined.example.com"
PLANS = "small:2,pro:5,unlimited:none"


class Answer(Protocol):
    """What the tests read of an HTTP answer (TestClient's responses are httpx-like)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...
    @property
    def is_success(self) -> bool: ...
    def json(self) -> Any: ...


@dataclass
class Api:
    """The app on one store, with a key of the operator (an admin key of `default`)."""

    client: TestClient
    store: Store
    settings: Settings
    origin: Path
    operator: str
    woken: list[int]

    def call(
        self,
        method: str,
        path: str,
        key: str | None,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if key is not None:
            sent["authorization"] = f"Bearer {key}"
        return self.client.request(
            method,
            f"/api/v1{path}",
            json=body,
            params=params,
            headers=sent,
        )

    def ok(self, method: str, path: str, key: str, **kwargs: Any) -> Any:
        """The JSON of a 2xx answer (None for 204); anything else fails the test."""
        response = self.call(method, path, key, **kwargs)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        assert response.headers["request-id"].startswith("req_")
        return None if response.status_code == 204 else response.json()

    def account(self, name: str, plan: str = "unlimited") -> dict[str, Any]:
        made: dict[str, Any] = self.ok(
            "POST", "/accounts", self.operator, body={"name": name, "plan": plan}
        )
        return made

    def key(self, account: str, scope: str = "admin", name: str = "test") -> str:
        made = self.ok(
            "POST",
            "/keys",
            self.operator,
            body={"name": name, "scope": scope, "account": account},
        )
        secret: str = made["key"]
        return secret

    def routine(self, name: str, **fields: Any) -> dict[str, Any]:
        # An account's key may name https repositories on public hosts only; these
        # tests start runs but never clone.
        return {
            "name": name,
            "prompt": "Tidy up.",
            "repositories": [{"url": "https://git.example.com/acme/app.git"}],
            "triggers": [{"type": "api"}, {"type": "schedule", "cron": "0 9 * * *"}],
            **fields,
        }

    def apply(self, key: str, *routines: dict[str, Any]) -> list[dict[str, Any]]:
        changes: list[dict[str, Any]] = self.ok(
            "PUT", "/routines", key, body={"routines": list(routines)}
        )
        return changes

    def trigger(self, key: str, routine: str, kind: str = "api") -> str:
        found = self.ok("GET", f"/routines/{routine}", key)
        trigger_id: str = next(t["id"] for t in found["triggers"] if t["type"] == kind)
        return trigger_id

    def fire(self, token: str, url: str, text: str | None = None) -> Answer:
        """The real fire endpoint, at the URL the token was issued with."""
        assert url.startswith(PUBLIC_URL), url
        return self.client.post(
            url.removeprefix(PUBLIC_URL),
            content=b"" if text is None else json.dumps({"text": text}).encode(),
            headers={
                "authorization": f"Bearer {token}",
                "anthropic-version": fire_api.ANTHROPIC_VERSION,
                "anthropic-beta": self.settings.accepted_betas[-1],
                "content-type": "application/json",
            },
        )


def operator_key(store: Store, scope: Scope = Scope.ADMIN) -> str:
    """A key of the default account, made on the store (the way an install starts)."""
    with store.transaction() as session:
        _key, secret = api_keys.issue(
            session, DEFAULT_ACCOUNT_ID, name="operator", scope=scope, now=T0
        )
    return secret


def make_api(
    store: Store, tmp_path: Path, origin: Path, clock: Callable[[], datetime] = lambda: T0
) -> Iterator[Api]:
    settings = Settings.from_env(
        {
            "ROUTINED_HOME": str(tmp_path / "home"),
            "ROUTINED_PUBLIC_URL": PUBLIC_URL,
            "ROUTINED_PLANS": PLANS,
        }
    )
    woken: list[int] = []
    app = create_app(store, settings, clock=clock, on_run_created=lambda: woken.append(1))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, store, settings, origin, operator_key(store), woken)


@pytest.fixture
def api(store: Store, tmp_path: Path, origin: Path) -> Iterator[Api]:
    """On each store: for what the store takes part in."""
    yield from make_api(store, tmp_path, origin)


@pytest.fixture
def http(sqlite_store: Store, tmp_path: Path) -> Iterator[Api]:
    """On SQLite only, for what the store does not decide. No run is executed here, so
    the repository is any folder that exists."""
    yield from make_api(sqlite_store, tmp_path, tmp_path)


def assert_error(response: Answer, status: int, kind: str, says: str, *, case: str = "") -> str:
    """The answer is `status` in the error envelope, its message containing `says`."""
    assert response.status_code == status, f"{case}: {response.status_code} {response.text}"
    body = response.json()
    assert body["type"] == "error" and set(body) == {"type", "error"}, (case, body)
    assert set(body["error"]) == {"type", "message"}, (case, body)
    assert body["error"]["type"] == kind, (case, body)
    message: str = body["error"]["message"]
    assert says in message, (case, message)
    assert response.headers["request-id"].startswith("req_"), case
    return message


# Authentication


def test_the_operator_key_reaches_the_api_by_bearer_or_x_api_key(http: Api) -> None:
    [by_bearer] = http.ok("GET", "/accounts", http.operator)
    assert (by_bearer["id"], by_bearer["name"]) == (DEFAULT_ACCOUNT_ID, "default")
    by_header = http.call("GET", "/accounts", None, headers={"x-api-key": http.operator})
    assert by_header.status_code == 200 and by_header.json() == [by_bearer]
    lower_scheme = http.call(
        "GET", "/accounts", None, headers={"authorization": f"bearer {http.operator}"}
    )
    assert lower_scheme.status_code == 200


# (headers, what the 401 says): nothing that is not a live API key gets in.
NOT_KEYS: list[tuple[dict[str, str], str]] = [
    ({}, "send an API key as Authorization: Bearer rtdk_"),
    ({"authorization": "Bearer "}, "send an API key"),
    ({"authorization": "Basic dXNlcjpwYXNz"}, "send an API key"),
    ({"x-api-key": ""}, "send an API key"),
    ({"authorization": "Bearer rtdk_"}, "invalid or revoked API key"),
    ({"authorization": "Bearer rtdk_short"}, "invalid or revoked API key"),
    ({"authorization": "Bearer " + api_keys.PREFIX + "x" * 60}, "invalid or revoked API key"),
    ({"authorization": "Bearer not-a-key-at-all"}, "invalid or revoked API key"),
    ({"x-api-key": "rtdk_" + "A" * 44}, "invalid or revoked API key"),
]


def test_missing_or_malformed_keys_are_401(http: Api) -> None:
    for headers, says in NOT_KEYS:
        for path in ("/accounts", "/routines", "/runs", "/usage", "/keys", "/events"):
            response = http.call("GET", path, None, headers=headers)
            assert_error(response, 401, "authentication_error", says, case=f"{headers} GET {path}")


def test_a_key_with_one_changed_character_is_401(http: Api) -> None:
    last = http.operator[-1]
    forged = http.operator[:-1] + ("A" if last != "A" else "B")
    assert_error(http.call("GET", "/accounts", forged), 401, "authentication_error", "invalid")


def test_a_revoked_key_is_401_at_once(api: Api) -> None:
    api.account("acme")
    made = api.ok(
        "POST", "/keys", api.operator, body={"name": "ci", "scope": "write", "account": "acme"}
    )
    assert api.call("GET", "/routines", made["key"]).status_code == 200
    assert api.call("DELETE", f"/keys/{made['id']}", api.operator).status_code == 204
    for path in ("/routines", "/accounts", "/usage"):
        assert_error(
            api.call("GET", path, made["key"]),
            401,
            "authentication_error",
            "invalid or revoked API key",
        )
    by_header = api.call("GET", "/routines", None, headers={"x-api-key": made["key"]})
    assert_error(by_header, 401, "authentication_error", "invalid or revoked")


def test_a_trigger_token_is_not_an_api_key(http: Api) -> None:
    http.apply(http.operator, http.routine("nightly"))
    trigger_id = http.trigger(http.operator, "nightly")
    issued = http.ok("POST", f"/triggers/{trigger_id}/token", http.operator)
    token = issued["token"]
    assert not token.startswith(api_keys.PREFIX)
    for headers in ({"authorization": f"Bearer {token}"}, {"x-api-key": token}):
        response = http.call("GET", "/routines", None, headers=headers)
        assert_error(response, 401, "authentication_error", "invalid or revoked API key")
    # …and an API key does not fire a trigger.
    assert http.fire(http.operator, issued["url"]).status_code == 401
    assert http.ok("GET", "/runs", http.operator) == []


# Scopes


def test_a_read_key_reads_but_cannot_write(http: Api) -> None:
    http.account("acme")
    admin = http.key("acme", "admin")
    http.apply(admin, http.routine("acme-nightly"))
    trigger_id = http.trigger(admin, "acme-nightly")
    started = http.ok("POST", "/routines/acme-nightly/runs", admin)
    reader = http.key("acme", "read")

    for path in ("/routines", "/routines/acme-nightly", "/triggers", f"/triggers/{trigger_id}",
                 "/runs", f"/runs/{started['run_id']}", f"/runs/{started['run_id']}/events",
                 "/events", "/usage", "/accounts", "/accounts/acme"):  # fmt: skip
        assert http.call("GET", path, reader).status_code == 200, path

    refused = [
        ("PUT", "/routines", {"routines": [http.routine("acme-other")]}),
        ("DELETE", "/routines/acme-nightly", None),
        ("POST", "/routines/acme-nightly/pause", None),
        ("POST", "/routines/acme-nightly/resume", None),
        ("POST", "/routines/acme-nightly/runs", {"text": "hi"}),
        ("POST", f"/triggers/{trigger_id}/token", None),
        ("DELETE", f"/triggers/{trigger_id}/token", None),
        ("POST", f"/runs/{started['run_id']}/cancel", None),
        ("GET", "/keys", None),
        ("POST", "/keys", {"name": "mine", "scope": "read"}),
    ]
    for method, path, body in refused:
        response = http.call(method, path, reader, body=body)
        assert_error(response, 403, "permission_error", "this key has the read scope")
    # Nothing changed.
    [routine] = http.ok("GET", "/routines", admin)
    assert routine["name"] == "acme-nightly" and not routine["paused"]
    assert [r["status"] for r in http.ok("GET", "/runs", admin)] == ["queued"]


def test_a_write_key_changes_routines_but_cannot_manage_keys(http: Api) -> None:
    http.account("acme")
    writer = http.key("acme", "write")
    assert http.apply(writer, http.routine("acme-nightly"))[0]["action"] == "created"
    assert http.ok("POST", "/routines/acme-nightly/pause", writer)["paused"] is True
    trigger_id = http.trigger(writer, "acme-nightly")
    assert http.ok("POST", f"/triggers/{trigger_id}/token", writer)["token"]
    other = http.ok(
        "POST", "/keys", http.operator, body={"name": "x", "scope": "read", "account": "acme"}
    )

    for method, path, body in [
        ("GET", "/keys", None),
        ("POST", "/keys", {"name": "mine", "scope": "read"}),
        ("POST", "/keys", {"name": "mine", "scope": "admin"}),
        ("DELETE", f"/keys/{other['id']}", None),
    ]:
        assert_error(
            http.call(method, path, writer, body=body),
            403,
            "permission_error",
            "this key has the write scope; this needs admin",
        )
    assert http.call("GET", "/routines", other["key"]).status_code == 200  # not revoked


def test_an_admin_of_another_account_manages_its_keys_but_not_accounts(http: Api) -> None:
    http.account("acme")
    admin = http.key("acme", "admin")
    made = http.ok("POST", "/keys", admin, body={"name": "laptop", "scope": "write"})
    assert (made["account"], made["scope"]) == ("acme", "write")
    assert [k["name"] for k in http.ok("GET", "/keys", admin)] == ["test", "laptop"]

    for method, path, body in [
        ("POST", "/accounts", {"name": "mine"}),
        ("PATCH", "/accounts/acme", {"plan": "unlimited"}),
        ("PATCH", "/accounts/acme", {"extra_usage": True}),
        ("PATCH", "/accounts/default", {"disabled": True}),
    ]:
        assert_error(
            http.call(method, path, admin, body=body), 403, "permission_error", "only the operator"
        )
    # It sees its own account only, unchanged.
    assert [
        (a["name"], a["plan"], a["extra_usage"]) for a in http.ok("GET", "/accounts", admin)
    ] == [("acme", "unlimited", False)]
    assert [a["name"] for a in http.ok("GET", "/accounts", http.operator)] == ["acme", "default"]


def test_only_an_admin_key_of_default_is_the_operator(http: Api) -> None:
    writer = operator_key(http.store, Scope.WRITE)
    assert_error(
        http.call("POST", "/accounts", writer, body={"name": "acme"}),
        403,
        "permission_error",
        "only the operator",
    )
    made = http.ok("POST", "/accounts", http.operator, body={"name": "acme", "plan": "small"})
    assert (made["name"], made["plan"], made["extra_usage"], made["disabled"]) == (
        "acme",
        "small",
        False,
        False,
    )
    assert made["id"].startswith("acct_")
    changed = http.ok(
        "PATCH", "/accounts/acme", http.operator, body={"plan": "pro", "extra_usage": True}
    )
    assert (changed["plan"], changed["extra_usage"]) == ("pro", True)
    # The operator issues keys for any account, and they act for that account.
    acme_key = http.key("acme", "read")
    [usage] = http.ok("GET", "/usage", acme_key)
    assert (usage["account"], usage["plan"], usage["runs_per_day"]) == ("acme", "pro", 5)


# Isolation between accounts


@dataclass
class Two:
    a: str  # an admin key of acme
    b: str  # an admin key of globex
    b_routine: str
    b_trigger: str
    b_schedule: str
    b_run: dict[str, Any]
    b_key_id: str


@pytest.fixture
def two(api: Api) -> Two:
    api.account("acme")
    api.account("globex")
    a, b = api.key("acme"), api.key("globex")
    api.apply(a, api.routine("acme-nightly"))
    api.apply(b, api.routine("globex-nightly"))
    b_trigger = api.trigger(b, "globex-nightly")
    b_schedule = api.trigger(b, "globex-nightly", "schedule")
    api.ok("POST", f"/triggers/{b_trigger}/token", b)
    b_run = api.ok("POST", "/routines/globex-nightly/runs", b, body={"text": "b's"})
    api.ok("POST", "/routines/acme-nightly/runs", a)
    b_key = api.ok("POST", "/keys", b, body={"name": "ci", "scope": "read"})
    return Two(a, b, "globex-nightly", b_trigger, b_schedule, b_run, b_key["id"])


def test_another_accounts_objects_are_not_found(api: Api, two: Two) -> None:
    run_id, session_id = two.b_run["run_id"], two.b_run["session_id"]

    def unknown(text: str) -> str:
        """`text` about objects like B's that do not exist."""
        text = text.replace(two.b_routine, "no-such-routine").replace("globex", "nobody")
        for real in (run_id, session_id, two.b_trigger, two.b_schedule, two.b_key_id):
            text = text.replace(real, real[:-4] + "ZZZZ")
        return text

    for method, path, body in [
        ("GET", f"/routines/{two.b_routine}", None),
        ("DELETE", f"/routines/{two.b_routine}", None),
        ("POST", f"/routines/{two.b_routine}/pause", None),
        ("POST", f"/routines/{two.b_routine}/resume", None),
        ("POST", f"/routines/{two.b_routine}/runs", {"text": "mine now"}),
        ("GET", f"/triggers/{two.b_trigger}", None),
        ("GET", f"/triggers/{two.b_schedule}", None),
        ("POST", f"/triggers/{two.b_trigger}/token", None),
        ("DELETE", f"/triggers/{two.b_trigger}/token", None),
        ("GET", f"/runs/{run_id}", None),
        ("GET", f"/runs/{session_id}", None),
        ("GET", f"/runs/{run_id}/events", None),
        ("POST", f"/runs/{run_id}/cancel", None),
        ("POST", f"/runs/{session_id}/cancel", None),
        ("DELETE", f"/keys/{two.b_key_id}", None),
        ("GET", "/accounts/globex", None),
        ("GET", "/usage", {"account": "globex"}),
        ("GET", "/keys", {"account": "globex"}),
        ("GET", "/runs", {"routine": two.b_routine}),
        ("GET", "/events", {"routine": two.b_routine}),
        ("GET", "/triggers", {"routine": two.b_routine}),
    ]:
        query = body if method == "GET" else None
        sent = None if method == "GET" else body
        response = api.call(method, path, two.a, params=query, body=sent)
        message = assert_error(response, 404, "not_found_error", "no ", case=f"{method} {path}")
        # …answered exactly as for an object that does not exist at all.
        twin = api.call(
            method,
            unknown(path),
            two.a,
            params={k: unknown(v) for k, v in query.items()} if query else None,
            body=sent,
        )
        assert_error(twin, 404, "not_found_error", unknown(message), case=f"{method} {path}")

    # B's things are all still there, untouched.
    routine = api.ok("GET", f"/routines/{two.b_routine}", two.b)
    assert not routine["paused"] and routine["last_run"] == {"id": run_id, "status": "queued"}
    assert [t["has_token"] for t in routine["triggers"] if t["type"] == "api"] == [True]
    assert [r["id"] for r in api.ok("GET", "/runs", two.b)] == [run_id]
    assert [k["revoked_at"] for k in api.ok("GET", "/keys", two.b) if k["id"] == two.b_key_id] == [
        None
    ]


def test_lists_show_only_the_keys_own_account(api: Api, two: Two) -> None:
    assert [r["name"] for r in api.ok("GET", "/routines", two.a)] == ["acme-nightly"]
    assert {t["routine"] for t in api.ok("GET", "/triggers", two.a)} == {"acme-nightly"}
    assert [r["routine"] for r in api.ok("GET", "/runs", two.a)] == ["acme-nightly"]
    assert [e["routine"] for e in api.ok("GET", "/events", two.a)] == ["acme-nightly"]
    assert [a["name"] for a in api.ok("GET", "/accounts", two.a)] == ["acme"]
    assert [u["account"] for u in api.ok("GET", "/usage", two.a)] == ["acme"]
    assert {k["account"] for k in api.ok("GET", "/keys", two.a)} == {"acme"}
    # The operator's key is the default account's: its lists of routines, runs and
    # keys are default's; accounts (and their usage and keys, by name) are everyone's.
    assert api.ok("GET", "/routines", api.operator) == []
    assert api.ok("GET", "/runs", api.operator) == []
    assert {k["account"] for k in api.ok("GET", "/keys", api.operator)} == {"default"}
    assert {
        k["account"] for k in api.ok("GET", "/keys", api.operator, params={"account": "globex"})
    } == {"globex"}
    assert [a["name"] for a in api.ok("GET", "/accounts", api.operator)] == [
        "acme",
        "default",
        "globex",
    ]
    assert [u["account"] for u in api.ok("GET", "/usage", api.operator)] == [
        "acme",
        "default",
        "globex",
    ]
    assert_error(
        api.call("GET", f"/routines/{two.b_routine}", api.operator),
        404,
        "not_found_error",
        "no routine",
    )


def test_the_operator_revokes_any_accounts_keys(api: Api, two: Two) -> None:
    assert api.call("DELETE", f"/keys/{two.b_key_id}", api.operator).status_code == 204
    [revoked] = [k for k in api.ok("GET", "/keys", two.b) if k["id"] == two.b_key_id]
    assert revoked["revoked_at"] is not None


def test_a_name_another_account_uses_is_taken(api: Api, two: Two) -> None:
    taken = api.call(
        "PUT", "/routines", two.a, body={"routines": [api.routine(two.b_routine, prompt="Mine.")]}
    )
    assert_error(
        taken,
        400,
        "invalid_request_error",
        f"routines[0] ({two.b_routine}).name: the name is taken",
    )
    named = api.call(
        "PUT", "/routines", two.a, body={"routines": [api.routine("acme-2", account="globex")]}
    )
    assert_error(
        named,
        400,
        "invalid_request_error",
        "routines[0] (acme-2).account: there is no account 'globex'",
    )
    # B's routine is unchanged, and nothing of A's was made.
    assert api.ok("GET", f"/routines/{two.b_routine}", two.b)["last_run"] is not None
    assert [r["name"] for r in api.ok("GET", "/routines", two.a)] == ["acme-nightly"]


def test_a_routine_without_an_account_lands_in_the_keys_account(api: Api, two: Two) -> None:
    [change] = api.apply(two.a, api.routine("acme-weekly"))
    assert change["action"] == "created"
    with api.store.transaction() as session:
        owner = session.scalar(
            select(Account.name)
            .join(Routine, Routine.account_id == Account.id)
            .where(Routine.name == "acme-weekly")
        )
    assert owner == "acme"
    assert_error(
        api.call("GET", "/routines/acme-weekly", two.b), 404, "not_found_error", "no routine named"
    )
    # Its own account named explicitly is fine too; applying again changes nothing.
    [again] = api.apply(two.a, api.routine("acme-weekly", account="acme"))
    assert again["action"] == "unchanged"
    [usage] = api.ok("GET", "/usage", two.a)
    assert [r["routine"] for r in usage["routines"]] == ["acme-nightly", "acme-weekly"]


# The whole round trip


def test_routines_triggers_runs_and_events_round_trip(api: Api) -> None:
    api.account("acme")
    key = api.key("acme", "write")
    [created] = api.apply(key, api.routine("nightly"))
    assert (created["name"], created["action"]) == ("nightly", "created")
    assert "nightly" in created["description"]

    [listed] = api.ok("GET", "/routines", key)
    shown = api.ok("GET", "/routines/nightly", key)
    assert listed["id"] == shown["id"]
    assert shown["repositories"] == ["https://git.example.com/acme/app.git"]
    assert [t["type"] for t in shown["triggers"]] == ["api", "schedule"]
    schedule = shown["triggers"][1]
    assert (schedule["schedule"], schedule["state"], len(schedule["next_runs"])) == (
        "cron 0 9 * * *",
        "scheduled",
        5,
    )
    assert schedule["next_runs"][0] == "2026-11-29T09:00:00Z"  # T0 is 12:00 on the 28th
    assert (
        shown["next_run"] == listed["next_run"]
        and listed["next_run"]["at"] == "2026-11-29T09:00:00Z"
    )
    assert shown["last_run"] is None

    # Pause and resume, each once.
    assert api.ok("POST", "/routines/nightly/pause", key) == {
        "name": "nightly",
        "paused": True,
        "changed": True,
    }
    assert api.ok("POST", "/routines/nightly/pause", key)["changed"] is False
    paused = api.ok("GET", "/routines/nightly", key)
    assert paused["paused"] and paused["paused_at"] == "2026-11-28T12:00:00Z"
    assert paused["triggers"][1]["state"] == "paused"
    assert api.ok("POST", "/routines/nightly/resume", key) == {
        "name": "nightly",
        "paused": False,
        "changed": True,
    }
    assert api.ok("GET", "/routines/nightly", key)["paused"] is False

    # A token for the API trigger fires the real fire endpoint.
    trigger_id = shown["triggers"][0]["id"]
    assert api.ok("GET", f"/triggers/{trigger_id}", key)["routine"] == "nightly"
    assert [t["id"] for t in api.ok("GET", "/triggers", key, params={"routine": "nightly"})] == [
        trigger_id, schedule["id"],
    ]  # fmt: skip
    issued = api.ok("POST", f"/triggers/{trigger_id}/token", key)
    assert (issued["trigger_id"], issued["routine"]) == (trigger_id, "nightly")
    assert issued["url"].startswith(PUBLIC_URL) and trigger_id in issued["url"]
    assert api.ok("GET", f"/triggers/{trigger_id}", key)["has_token"] is True
    fired = api.fire(issued["token"], issued["url"], text="Sentry alert SEN-1")
    assert fired.status_code == 200, fired.text
    session_id = fired.json()["claude_code_session_id"]
    assert api.woken == [1]

    [run] = api.ok("GET", "/runs", key)
    assert (run["session_id"], run["routine"], run["status"], run["trigger"], run["trigger_id"]) == (
        session_id, "nightly", "queued", "api", trigger_id,
    )  # fmt: skip
    assert run["session_url"] == f"{PUBLIC_URL}/sessions/{session_id}"
    assert api.ok("GET", f"/runs/{run['id']}", key) == run
    assert api.ok("GET", f"/runs/{session_id}", key) == run
    events = api.ok("GET", f"/runs/{run['id']}/events", key)
    assert (events["run_id"], events["status"]) == (run["id"], "queued")
    [first] = events["events"]
    assert (first["seq"], first["to_status"]) == (1, "queued") and trigger_id in first["reason"]
    assert (
        api.ok("GET", f"/runs/{run['id']}/events", key, params={"after": first["seq"]})["events"]
        == []
    )

    # A run by hand, then cancel the API one.
    by_hand = api.ok("POST", "/routines/nightly/runs", key, body={"text": "by hand"})
    assert by_hand["session_url"] == f"{PUBLIC_URL}/sessions/{by_hand['session_id']}"
    assert api.woken == [1, 1]
    assert api.ok("POST", f"/runs/{run['id']}/cancel", key) == {
        "run_id": run["id"],
        "cancel": "cancelled",
    }
    assert_error(
        api.call("POST", f"/runs/{run['id']}/cancel", key),
        409,
        "invalid_request_error",
        "past cancelling",
    )
    cancelled = api.ok("GET", f"/runs/{run['id']}", key)
    assert cancelled["status"] == "cancelled" and "cancelled by API key" in (
        cancelled["error"] or ""
    )
    after = api.ok("GET", f"/runs/{run['id']}/events", key, params={"after": 1})
    assert [(e["from_status"], e["to_status"]) for e in after["events"]] == [
        ("queued", "cancelled")
    ]
    assert [(r["id"], r["status"]) for r in api.ok("GET", "/runs", key)] == [
        (by_hand["run_id"], "queued"), (run["id"], "cancelled"),
    ]  # fmt: skip
    assert len(api.ok("GET", "/runs", key, params={"limit": 1})) == 1
    assert api.ok("GET", "/routines/nightly", key)["last_run"]["status"] in ("queued", "cancelled")

    # Fire decisions: newest first, with the runs they started.
    decisions = api.ok("GET", "/events", key)
    assert [(d["trigger_type"], d["outcome"], d["run_id"]) for d in decisions] == [
        ("manual", "fired", by_hand["run_id"]), ("api", "fired", run["id"]),
    ]  # fmt: skip
    assert decisions[1]["trigger_id"] == trigger_id and decisions[0]["trigger_id"] is None
    assert "fired by hand (API key " in decisions[0]["reason"]
    assert api.ok("GET", "/events", key, params={"routine": "nightly", "limit": 1}) == decisions[:1]

    # Revoking the token stops it firing.
    assert api.ok("DELETE", f"/triggers/{trigger_id}/token", key) == {
        "trigger_id": trigger_id,
        "revoked": True,
    }
    assert api.ok("DELETE", f"/triggers/{trigger_id}/token", key)["revoked"] is False
    assert api.fire(issued["token"], issued["url"]).status_code == 401
    assert_error(
        api.call("POST", f"/triggers/{schedule['id']}/token", key),
        400,
        "invalid_request_error",
        "is a schedule trigger; only API triggers have tokens",
    )

    # Usage counts both runs against the account.
    [usage] = api.ok("GET", "/usage", key)
    assert (usage["account"], usage["runs_today"], usage["api_runs_this_hour"]) == ("acme", 2, 1)
    assert usage["routines"] == [
        {"routine": "nightly", "manual_and_api_this_hour": 2, "remaining_this_hour": 28}
    ]

    # Delete: the routine, its triggers and runs are gone.
    assert api.call("DELETE", "/routines/nightly", key).status_code == 204
    assert_error(
        api.call("GET", "/routines/nightly", key),
        404,
        "not_found_error",
        "no routine named 'nightly'",
    )
    assert_error(
        api.call("GET", f"/triggers/{trigger_id}", key), 404, "not_found_error", trigger_id
    )
    assert_error(api.call("GET", f"/runs/{run['id']}", key), 404, "not_found_error", run["id"])
    assert api.ok("GET", "/routines", key) == []
    assert api.ok("GET", "/runs", key) == []
    assert api.ok("GET", "/events", key) == []
    assert_error(api.call("DELETE", "/routines/nightly", key), 404, "not_found_error", "no routine")


def test_a_routine_with_an_active_run_is_not_deleted(http: Api) -> None:
    http.apply(http.operator, http.routine("nightly"))
    started = http.ok("POST", "/routines/nightly/runs", http.operator)
    with http.store.transaction() as session:  # a worker has taken it
        session.get_one(Run, started["run_id"]).status = "running"
    refused = http.call("DELETE", "/routines/nightly", http.operator)
    assert_error(
        refused, 409, "invalid_request_error", f"run {started['run_id']} of nightly is active"
    )
    assert http.ok("GET", f"/runs/{started['run_id']}", http.operator)["status"] == "running"
    assert (
        http.ok("POST", f"/runs/{started['run_id']}/cancel", http.operator)["cancel"] == "requested"
    )


def test_applying_changes_a_routine_by_name(http: Api) -> None:
    http.apply(http.operator, http.routine("nightly"))
    before = http.ok("GET", "/routines/nightly", http.operator)
    [changed] = http.apply(
        http.operator, http.routine("nightly", prompt="Tidy up more.", overlap="skip")
    )
    assert changed["action"] == "updated" and changed["details"], changed
    after = http.ok("GET", "/routines/nightly", http.operator)
    assert after["id"] == before["id"] and after["overlap"] == "skip"
    assert [t["id"] for t in after["triggers"]] == [t["id"] for t in before["triggers"]]


def test_keys_are_shown_once_listed_without_secrets_and_revoked(api: Api) -> None:
    api.account("acme")
    admin = api.key("acme", "admin", name="admin")
    made = api.call("POST", "/keys", admin, body={"name": "ci", "scope": "write"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert set(body) >= {"id", "account", "name", "scope", "created_at", "revoked_at", "key"}
    assert body["key"].startswith(api_keys.PREFIX) and body["id"].startswith("key_")
    assert (body["account"], body["name"], body["scope"], body["revoked_at"]) == (
        "acme",
        "ci",
        "write",
        None,
    )
    assert body["created_at"] == "2026-11-28T12:00:00Z"

    listed = api.ok("GET", "/keys", admin)
    assert [(k["name"], k["scope"]) for k in listed] == [("admin", "admin"), ("ci", "write")]
    assert all("key" not in k for k in listed)
    assert body["key"] not in api.call("GET", "/keys", admin).text
    assert api.ok("GET", "/keys", admin, params={"account": "acme"}) == listed

    # The new key works for its account with its scope.
    assert api.apply(body["key"], api.routine("acme-nightly"))[0]["action"] == "created"
    assert api.call("DELETE", f"/keys/{body['id']}", admin).status_code == 204
    revoked = next(k for k in api.ok("GET", "/keys", admin) if k["id"] == body["id"])
    assert revoked["revoked_at"] == "2026-11-28T12:00:00Z"
    assert api.call("GET", "/routines", body["key"]).status_code == 401
    assert_error(
        api.call("DELETE", "/keys/key_nosuchkey", admin),
        404,
        "not_found_error",
        "no API key key_nosuchkey",
    )
    # The operator names the account; an account's admin need not.
    assert_error(
        api.call(
            "POST", "/keys", api.operator, body={"name": "x", "scope": "read", "account": "nobody"}
        ),
        404,
        "not_found_error",
        "no account named 'nobody'",
    )


def test_accounts_are_created_changed_and_disabled(api: Api) -> None:
    created = api.call("POST", "/accounts", api.operator, body={"name": "acme", "plan": "small"})
    assert created.status_code == 201, created.text
    assert created.json()["created_at"] == "2026-11-28T12:00:00Z"
    assert_error(
        api.call("POST", "/accounts", api.operator, body={"name": "acme"}),
        409,
        "invalid_request_error",
        "there is already an account 'acme'",
    )
    assert api.ok("GET", "/accounts/acme", api.operator) == created.json()
    key = api.key("acme", "write")
    api.apply(key, api.routine("acme-nightly"))
    issued = api.ok("POST", f"/triggers/{api.trigger(key, 'acme-nightly')}/token", key)
    patched = api.ok("PATCH", "/accounts/acme", api.operator, body={"disabled": True})
    assert (patched["plan"], patched["disabled"], patched["extra_usage"]) == ("small", True, False)
    # A disabled account's API fires get 403; its keys still read, and change nothing.
    assert_error(
        api.fire(issued["token"], issued["url"]),
        403,
        "permission_error",
        "account acme is disabled",
    )
    assert [r["name"] for r in api.ok("GET", "/routines", key)] == ["acme-nightly"]
    assert_error(
        api.call("POST", "/routines/acme-nightly/runs", key, body={}),
        403,
        "permission_error",
        "account is disabled",
    )
    assert (
        api.ok("PATCH", "/accounts/acme", api.operator, body={"disabled": False})["disabled"]
        is False
    )
    assert api.fire(issued["token"], issued["url"]).status_code == 200
    assert_error(
        api.call("PATCH", "/accounts/nobody", api.operator, body={"plan": "pro"}),
        404,
        "not_found_error",
        "no account named 'nobody'",
    )
    [usage] = api.ok("GET", "/usage", api.operator, params={"account": "acme"})
    assert (
        usage["plan"],
        usage["runs_today"],
        usage["runs_per_day"],
        usage["remaining_today"],
    ) == ("small", 1, 2, 1)
    assert (
        usage["day_resets_at"] == "2026-11-29T00:00:00Z"
        and usage["hour_resets_at"] == "2026-11-28T13:00:00Z"
    )


# Limits


@pytest.fixture
def late(store: Store, tmp_path: Path, origin: Path) -> Iterator[Api]:
    """The app at 22:15:30 UTC, 1 h 44 min 30 s before the day resets."""
    now = datetime(2026, 11, 28, 22, 15, 30, tzinfo=UTC)
    yield from make_api(store, tmp_path, origin, clock=lambda: now)


def test_runs_by_hand_past_the_plan_are_429_and_the_refusal_is_recorded(late: Api) -> None:
    api = late
    api.account("acme", plan="small")
    key = api.key("acme", "write")
    api.apply(key, api.routine("nightly"))
    started = [
        api.call("POST", "/routines/nightly/runs", key, body={"text": str(n)}) for n in range(2)
    ]
    assert [r.status_code for r in started] == [201, 201]
    refused = api.call("POST", "/routines/nightly/runs", key, body={"text": "third"})
    message = assert_error(
        refused, 429, "rate_limit_error", "not started: account acme has started 2 runs today"
    )
    assert "plan small's limit of 2 a day" in message
    assert refused.headers["retry-after"] == str(
        int(timedelta(hours=1, minutes=44, seconds=30).total_seconds())
    )
    assert len(api.ok("GET", "/runs", key)) == 2  # nothing started
    assert api.woken == [1, 1]

    decisions = api.ok("GET", "/events", key)
    assert [(d["outcome"], d["trigger_type"]) for d in decisions] == [
        ("refused", "manual"), ("fired", "manual"), ("fired", "manual"),
    ]  # fmt: skip
    assert decisions[0]["run_id"] is None
    assert "a fire by hand (API key " in decisions[0]["reason"]
    assert "has started 2 runs today" in decisions[0]["reason"]

    # Extra usage lets runs go on, and says so.
    api.ok("PATCH", "/accounts/acme", api.operator, body={"extra_usage": True})
    assert api.call("POST", "/routines/nightly/runs", key).status_code == 201
    assert "extra usage is on" in api.ok("GET", "/events", key)[0]["reason"]


# Validation


# (method, path, body, query, what the 400 says): each message names the field.
BAD_INPUT: list[tuple[str, str, Any, dict[str, Any] | None, str]] = [
    ("POST", "/keys", {"name": "x", "scope": "root"}, None, "scope: Input should be 'read', 'write' or 'admin'"),
    ("POST", "/keys", {"scope": "read"}, None, "name: Field required"),
    ("POST", "/keys", {"name": "   ", "scope": "read"}, None, "name: give the key a name"),
    ("POST", "/keys", {"name": "x" * 101, "scope": "read"}, None, "name: give the key a name"),
    ("POST", "/accounts", {}, None, "name: Field required"),
    ("POST", "/accounts", {"name": "no spaces"}, None, "name: 'no spaces'"),
    ("POST", "/accounts", {"name": "acme", "plan": "gold"}, None, "plan: unknown plan 'gold'"),
    ("POST", "/accounts", {"name": 5}, None, "name: Input should be a valid string"),
    ("PATCH", "/accounts/default", {"plan": "gold"}, None, "plan: unknown plan 'gold'"),
    ("PATCH", "/accounts/default", {"extra_usage": "perhaps"}, None, "extra_usage: Input should be a valid boolean"),
    ("GET", "/runs", None, {"limit": 0}, "limit: Input should be greater than or equal to 1"),
    ("GET", "/runs", None, {"limit": "many"}, "limit: Input should be a valid integer"),
    ("GET", "/events", None, {"limit": 1001}, "limit: Input should be less than or equal to 1000"),
    ("PUT", "/routines", {"routines": [{"name": "x", "prompt": "p", "repositories": [], "triggers": []}]}, None,
     "request: routines[0] (x).repositories: list at least one repository"),
    ("PUT", "/routines", {"routines": [{"name": "x", "prompt": "p", "repositories": [{"url": "/r"}], "triggers": [{"type": "cron"}]}]},
     None, "request: routines[0] (x).triggers[0].type: unknown trigger type 'cron'"),
    ("PUT", "/routines", {"routines": [{"name": "bad name", "prompt": "p", "repositories": [{"url": "/r"}]}]},
     None, "routines[0] (bad name).name: names use letters"),
    ("PUT", "/routines", {"nothing": []}, None, "request: routines: required field is missing"),
    ("PUT", "/routines", {"routines": [{"name": "x", "prompt": "p", "repositories": [{"url": "relative/path"}]}]},
     None, "request: routines[0] (x).repositories[0].url: 'relative/path' is a relative path"),
    ("PUT", "/routines", [1, 2], None, "body: Input should be a valid dictionary"),
    ("POST", "/routines/ghost/runs", {"text": 5}, None, "text: Input should be a valid string"),
    ("POST", "/routines/ghost/runs", [1], None, "body: Input should be a valid dictionary"),
]  # fmt: skip


def test_bad_input_is_400_naming_the_field(http: Api) -> None:
    for method, path, body, params, says in BAD_INPUT:
        response = http.call(method, path, http.operator, body=body, params=params)
        assert_error(
            response, 400, "invalid_request_error", says, case=f"{method} {path} {body} {params}"
        )


def test_a_body_that_is_not_json_is_400(http: Api) -> None:
    response = http.client.put(
        "/api/v1/routines",
        content=b"routines: [",
        headers={"authorization": f"Bearer {http.operator}", "content-type": "application/json"},
    )
    assert_error(response, 400, "invalid_request_error", "JSON")


def test_text_over_the_limit_is_400_and_starts_nothing(http: Api) -> None:
    http.apply(http.operator, http.routine("nightly"))
    response = http.call(
        "POST", "/routines/nightly/runs", http.operator, body={"text": "x" * 65_537}
    )
    assert_error(
        response, 400, "invalid_request_error", "text: 65537 characters is over the limit of 65536"
    )
    assert (
        http.ok("GET", "/runs", http.operator) == []
        and http.ok("GET", "/events", http.operator) == []
    )
    assert (
        http.call(
            "POST", "/routines/nightly/runs", http.operator, body={"text": "é" * 65_536}
        ).status_code
        == 201
    )


def test_unknown_api_paths_and_methods_use_the_envelope(http: Api) -> None:
    assert_error(
        http.call("GET", "/nothing", http.operator), 404, "not_found_error", "no such endpoint"
    )
    assert_error(
        http.call("PATCH", "/routines", http.operator),
        405,
        "invalid_request_error",
        "PATCH is not allowed",
    )


def test_the_openapi_document_describes_every_route_with_its_errors(http: Api) -> None:
    document = http.client.get("/openapi.json").json()
    paths = document["paths"]
    management = {path for path in paths if path.startswith("/api/v1/")}
    assert {
        "/api/v1/routines",
        "/api/v1/routines/{name}/runs",
        "/api/v1/keys",
        "/api/v1/runs/{run}/events",
    } <= management
    for path in management:
        for method, operation in paths[path].items():
            assert {"401", "403", "404"} <= set(operation["responses"]), (method, path)


# Inputs past what the store or the clock can hold: refused or not found, never a 500.
# (Each of these answered 500 when written: see the report of the management API tests.)


@pytest.mark.parametrize("after", [2**31, 2**63])
def test_a_seq_past_any_stored_one_is_not_a_server_error(api: Api, after: int) -> None:
    api.apply(api.operator, api.routine("nightly"))
    run = api.ok("POST", "/routines/nightly/runs", api.operator)
    response = api.call(
        "GET", f"/runs/{run['run_id']}/events", api.operator, params={"after": after}
    )
    if response.status_code == 200:
        assert response.json()["events"] == []
    else:
        assert_error(response, 400, "invalid_request_error", "after")


@pytest.mark.parametrize(
    ("field", "value"),
    [("stagger", "99999999999999999999d"), ("catch_up_window", 2**70), ("stagger", "1000000000d")],
)
def test_durations_too_long_for_the_clock_are_400(http: Api, field: str, value: Any) -> None:
    response = http.call(
        "PUT",
        "/routines",
        http.operator,
        body={"routines": [http.routine("nightly", **{field: value})]},
    )
    assert_error(response, 400, "invalid_request_error", f"routines[0] (nightly).{field}")
    assert http.ok("GET", "/routines", http.operator) == []


NUL = "a\x00b"


def test_a_nul_character_in_a_name_or_id_is_refused(api: Api) -> None:
    # PostgreSQL text cannot hold U+0000; no name or id has one: bad input, not a 500.
    for method, path, params in [
        ("GET", "/routines/a%00b", None),
        ("POST", "/routines/a%00b/pause", None),
        ("GET", "/runs/a%00b", None),
        ("GET", "/triggers/a%00b", None),
        ("DELETE", "/keys/a%00b", None),
        ("GET", "/accounts/a%00b", None),
        ("GET", "/runs", {"routine": NUL}),
        ("GET", "/events", {"routine": NUL}),
        ("GET", "/triggers", {"routine": NUL}),
        ("GET", "/usage", {"account": NUL}),
        ("GET", "/keys", {"account": NUL}),
    ]:
        response = api.call(method, path, api.operator, params=params)
        assert_error(
            response, 400, "invalid_request_error", "NUL", case=f"{method} {path} {params}"
        )


def test_a_nul_character_in_stored_text_is_refused_or_kept(api: Api) -> None:
    """Either a 400 naming the field, or the value stored as sent: never a 500."""
    api.apply(api.operator, api.routine("nightly"))
    for method, path, body, field in [
        ("POST", "/keys", {"name": NUL, "scope": "read"}, "name"),
        ("POST", "/routines/nightly/runs", {"text": NUL}, "text"),
        ("PUT", "/routines", {"routines": [api.routine("other", prompt=NUL)]}, "prompt"),
        ("PUT", "/routines", {"routines": [api.routine("other", model=NUL)]}, "model"),
    ]:
        response = api.call(method, path, api.operator, body=body)
        case = f"{method} {path} {body}"
        if response.status_code >= 400:
            assert_error(response, 400, "invalid_request_error", field, case=case)
        else:
            assert response.is_success, case
    stored = [k["name"] for k in api.ok("GET", "/keys", api.operator)]
    assert stored in (["operator"], ["operator", NUL]), stored


def test_an_accounts_key_names_only_https_repositories_on_public_hosts(api: Api) -> None:
    api.account("acme")
    key = api.key("acme", "write")
    for url in [
        str(api.origin),
        f"file://{api.origin}",
        "git@github.com:acme/app.git",
        "http://git.example.com/acme/app.git",
        "https://127.0.0.1/acme/app.git",
        "https://10.0.0.7/acme/app.git",
        "https://localhost/acme/app.git",
    ]:
        refused = api.call(
            "PUT",
            "/routines",
            key,
            body={"routines": [api.routine("x", repositories=[{"url": url}])]},
        )
        assert_error(
            refused, 400, "invalid_request_error", "https repositories on public hosts", case=url
        )
    github = {"type": "github", "repository": "acme/app", "events": ["issues"]}
    refused = api.call(
        "PUT", "/routines", key, body={"routines": [api.routine("x", triggers=[github])]}
    )
    assert_error(
        refused, 400, "invalid_request_error", "GitHub triggers are applied by the operator"
    )
    # The operator may do both.
    api.apply(
        api.operator, api.routine("y", repositories=[{"url": str(api.origin)}], triggers=[github])
    )


def test_credentials_in_a_repository_url_are_never_shown(api: Api) -> None:
    secret_url = "https://x-access-token:ghp_SECRET@git.example.com/acme/app.git"
    changes = api.apply(api.operator, api.routine("nightly", repositories=[{"url": secret_url}]))
    assert "ghp_SECRET" not in json.dumps(changes)
    reader = api.key("default", "read")
    assert "ghp_SECRET" not in json.dumps(api.ok("GET", "/routines", reader))
    assert "ghp_SECRET" not in json.dumps(api.ok("GET", "/routines/nightly", reader))
