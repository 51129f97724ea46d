"""The fire endpoint: the hosted product's contract, answers and error envelope."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from routined import trigger_tokens
from routined.config import Settings
from routined.db import Store
from routined.http.app import create_app
from routined.models import Run, RunEvent
from routined.routines.apply import apply
from routined.routines.load import load
from tests.conftest import T0

HEADERS = {
    "anthropic-beta": "experimental-cc-routine-2026-04-01",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}


@dataclass
class Fixture:
    client: TestClient
    store: Store
    trigger_id: str
    token: str
    other_token: str
    woken: list[int]

    def fire(
        self,
        body: Any = None,
        *,
        token: str | None = None,
        trigger_id: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Any:
        sent = {**HEADERS, "authorization": f"Bearer {token or self.token}", **(headers or {})}
        content = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        return self.client.post(
            f"/v1/claude_code/routines/{trigger_id or self.trigger_id}/fire",
            content=content,
            headers={k: v for k, v in sent.items() if v},
        )

    def runs(self) -> list[Run]:
        with self.store.transaction() as session:
            return list(session.scalars(select(Run)))


@pytest.fixture
def api(store: Store, tmp_path: Path, origin: Path) -> Iterator[Fixture]:
    path = tmp_path / "routines.yaml"
    path.write_text(
        f"routines:\n"
        f"  - {{name: first, prompt: Go., repositories: [{{url: {origin}}}], triggers: [{{type: api}}]}}\n"
        f"  - {{name: second, prompt: Go., repositories: [{{url: {origin}}}], triggers: [{{type: api}}]}}\n"
    )
    with store.transaction() as session:
        apply(session, load(path, now=T0), now=T0)
    with store.transaction() as session:
        from routined.models import Trigger

        first, second = session.scalars(select(Trigger).order_by(Trigger.created_at, Trigger.id))
        token = trigger_tokens.issue(session, first.id, now=T0)
        other_token = trigger_tokens.issue(session, second.id, now=T0)
        trigger_id = first.id
    woken: list[int] = []
    settings = Settings.from_env({"ROUTINED_PUBLIC_URL": "https://routined.example.com"})
    app = create_app(store, settings, clock=lambda: T0, on_run_created=lambda: woken.append(1))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Fixture(client, store, trigger_id, token, other_token, woken)


def assert_error(response: Any, status: int, kind: str, says: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    assert says in body["error"]["message"]
    assert response.headers["request-id"].startswith("req_")


def test_a_fire_records_a_queued_run_and_answers_with_the_session(api: Fixture) -> None:
    response = api.fire({"text": "Sentry alert SEN-4521", "unknown": ["ignored"]})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"type", "claude_code_session_id", "claude_code_session_url"}
    assert body["type"] == "routine_fire"
    session_id = body["claude_code_session_id"]
    assert session_id.startswith("session_")
    assert body["claude_code_session_url"] == f"https://routined.example.com/sessions/{session_id}"
    [run] = api.runs()
    assert (run.session_id, run.status, run.trigger_type, run.trigger_id) == (
        session_id, "queued", "api", api.trigger_id,
    )  # fmt: skip
    assert run.text == "Sentry alert SEN-4521"
    assert api.woken == [1]
    with api.store.transaction() as session:
        event = session.scalar(select(RunEvent).where(RunEvent.run_id == run.id))
        assert event is not None and api.trigger_id in (event.reason or "")
    page = api.client.get(f"/sessions/{session_id}")
    assert page.status_code == 200 and page.json()["status"] == "queued"
    # The run's results, once it has them (see `views.run_view`).
    assert {"summary", "diff_stat", "usage", "cost_usd"} <= page.json().keys()


@pytest.mark.parametrize("body", [None, {}, {"text": None}])
def test_the_body_is_optional(api: Fixture, body: Any) -> None:
    assert api.fire(body).status_code == 200
    assert [run.text for run in api.runs()] == [None]


def test_json_inside_text_stays_a_literal_string(api: Fixture) -> None:
    text = '{"text": "nested", "model": "other"}'
    assert api.fire({"text": text}).status_code == 200
    assert api.runs()[0].text == text


@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        ("", "Authorization: Bearer <token>"),
        ("Bearer ", "Authorization: Bearer <token>"),
        ("Basic abc", "Authorization: Bearer <token>"),
        ("Bearer rtd_short", "invalid token"),
        ("Bearer " + trigger_tokens.PREFIX + "x" * (trigger_tokens.LENGTH - 4), "invalid token"),
    ],
)
def test_missing_malformed_or_wrong_tokens_are_401(
    api: Fixture, authorization: str, says: str
) -> None:
    response = api.fire(headers={"authorization": authorization})
    assert_error(response, 401, "authentication_error", says)
    assert api.runs() == []


def test_another_triggers_token_is_401(api: Fixture) -> None:
    assert_error(api.fire(token=api.other_token), 401, "authentication_error", "invalid token")
    assert api.runs() == []


def test_a_regenerated_token_revokes_the_old_one(api: Fixture) -> None:
    with api.store.transaction() as session:
        fresh = trigger_tokens.issue(session, api.trigger_id, now=T0)
    assert_error(api.fire(), 401, "authentication_error", "invalid token")
    assert api.fire(token=fresh).status_code == 200


def test_an_unknown_trigger_is_404(api: Fixture) -> None:
    response = api.fire(trigger_id="trig_01NOSUCHTRIGGER0000000000000")
    assert_error(response, 404, "not_found_error", "no API trigger trig_01NOSUCH")


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"anthropic-version": ""}, "anthropic-version: missing; send anthropic-version: 2023-06-01"),
        ({"anthropic-version": "2024-01-01"}, "anthropic-version: '2024-01-01'"),
        ({"anthropic-beta": ""}, "anthropic-beta: missing; send anthropic-beta with one of: experimental-cc-routine-2026-04-01"),
        ({"anthropic-beta": "experimental-cc-routine-2099-01-01"}, "'experimental-cc-routine-2099-01-01'"),
    ],
)  # fmt: skip
def test_version_headers_are_checked(api: Fixture, headers: dict[str, str], says: str) -> None:
    assert_error(api.fire(headers=headers), 400, "invalid_request_error", says)


def test_a_beta_list_with_the_accepted_version_is_fine(api: Fixture) -> None:
    headers = {"anthropic-beta": "some-other-beta, experimental-cc-routine-2026-04-01"}
    assert api.fire(headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"not json", "the body is not valid JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b'{"text": 42}', "text: must be a string, got int"),
        (json.dumps({"text": "x" * 65_537}).encode(), "text: 65537 characters is over the limit of 65536"),
    ],
)  # fmt: skip
def test_bad_bodies_are_400_and_record_nothing(api: Fixture, raw: bytes, says: str) -> None:
    assert_error(api.fire(raw=raw), 400, "invalid_request_error", says)
    assert api.runs() == []


def test_text_at_the_limit_is_accepted(api: Fixture) -> None:
    assert api.fire({"text": "é" * 65_536}).status_code == 200


def test_unknown_v1_paths_and_methods_use_the_envelope(api: Fixture) -> None:
    assert_error(api.client.get("/v1/nothing"), 404, "not_found_error", "no such endpoint")
    response = api.client.get(f"/v1/claude_code/routines/{api.trigger_id}/fire")
    assert_error(response, 405, "invalid_request_error", "GET is not allowed")


def test_unknown_sessions_are_404(api: Fixture) -> None:
    assert api.client.get("/sessions/session_nope").status_code == 404


def test_an_oversized_body_is_413_and_records_nothing(api: Fixture) -> None:
    from routined.http.app import MAX_BODY

    response = api.fire(raw=b'{"text": "' + b"x" * MAX_BODY + b'"}')
    assert_error(response, 413, "request_too_large", f"over {MAX_BODY} bytes")
    assert api.runs() == []


def test_a_paused_routine_refuses_fires_and_records_why(api: Fixture) -> None:
    from routined.models import Fire, Routine, Trigger

    with api.store.transaction() as session:
        routine = session.get_one(Trigger, api.trigger_id).routine
        routine.paused_at = T0
        name = routine.name
    assert_error(
        api.fire({"text": "hi"}), 400, "invalid_request_error", f"routine {name} is paused"
    )
    assert api.runs() == [] and api.woken == []
    with api.store.transaction() as session:
        [fire] = session.scalars(select(Fire))
        assert (fire.trigger_id, fire.outcome, fire.run_id) == (api.trigger_id, "refused", None)
        assert f"routined resume {name}" in fire.reason
        session.get_one(Routine, fire.routine_id).paused_at = None
    assert api.fire().status_code == 200
    with api.store.transaction() as session:
        assert [f.outcome for f in session.scalars(select(Fire).order_by(Fire.id))] == [
            "refused", "fired",
        ]  # fmt: skip


def with_settings(api: Fixture, clock: Any = None, **env: str) -> Fixture:
    """The same store and triggers behind an app with other settings (and clock)."""
    settings = Settings.from_env({"ROUTINED_PUBLIC_URL": "https://routined.example.com", **env})
    app = create_app(api.store, settings, clock=clock or (lambda: T0), on_run_created=lambda: None)
    client = TestClient(app, raise_server_exceptions=False)
    return Fixture(client, api.store, api.trigger_id, api.token, api.other_token, [])


def over_plan(api: Fixture) -> None:
    set_account(api, plan="pro")
    queue_runs(api, 5)


def set_account(api: Fixture, **values: Any) -> str:
    from routined.models import Account, Trigger

    with api.store.transaction() as session:
        account = session.get_one(Trigger, api.trigger_id).routine
        row = session.get_one(Account, account.account_id)
        for name, value in values.items():
            setattr(row, name, value)
        return row.name


def pause(api: Fixture) -> None:
    from routined.models import Trigger

    with api.store.transaction() as session:
        session.get_one(Trigger, api.trigger_id).routine.paused_at = T0


def queue_runs(api: Fixture, count: int) -> None:
    for _ in range(count):
        assert api.fire(token=api.other_token, trigger_id=other_trigger(api)).status_code == 200


def other_trigger(api: Fixture) -> str:
    from routined.models import Token

    with api.store.transaction() as session:
        return next(
            t.trigger_id
            for t in session.scalars(select(Token))
            if trigger_tokens.verify(session, t.trigger_id, api.other_token)
        )


def revoke(api: Fixture) -> None:
    with api.store.transaction() as session:
        trigger_tokens.issue(session, api.trigger_id, now=T0)


# Every row of the fire endpoint's error matrix: (setup, request changes, status, type, says).
ERROR_MATRIX: list[tuple[str, Any, dict[str, Any], int, str, str]] = [
    ("version missing", None, {"headers": {"anthropic-version": ""}}, 400, "invalid_request_error", "anthropic-version: missing"),
    ("version unknown", None, {"headers": {"anthropic-version": "2024-01-01"}}, 400, "invalid_request_error", "send anthropic-version: 2023-06-01"),
    ("beta missing", None, {"headers": {"anthropic-beta": ""}}, 400, "invalid_request_error", "experimental-cc-routine-2026-04-01"),
    ("beta unknown", None, {"headers": {"anthropic-beta": "experimental-cc-routine-2099-01-01"}}, 400, "invalid_request_error", "one of: experimental-cc-routine-2026-04-01"),
    ("body not JSON", None, {"raw": b"{nope"}, 400, "invalid_request_error", "not valid JSON"),
    ("body not an object", None, {"raw": b"[1]"}, 400, "invalid_request_error", "must be a JSON object"),
    ("text not a string", None, {"body": {"text": 5}}, 400, "invalid_request_error", "text: must be a string"),
    ("text too long", None, {"body": {"text": "x" * 65_537}}, 400, "invalid_request_error", "65537 characters is over the limit"),
    ("bad idempotency key", None, {"headers": {"idempotency-key": "x" * 256}}, 400, "invalid_request_error", "Idempotency-Key"),
    ("routine paused", pause, {}, 400, "invalid_request_error", "is paused"),
    ("no token", None, {"headers": {"authorization": ""}}, 401, "authentication_error", "Authorization: Bearer"),
    ("malformed token", None, {"token": "rtd_short"}, 401, "authentication_error", "invalid token"),
    ("revoked token", revoke, {}, 401, "authentication_error", "invalid token"),
    ("another trigger's token", None, {"token": "OTHER"}, 401, "authentication_error", "invalid token"),
    ("account disabled", lambda api: set_account(api, disabled_at=T0), {}, 403, "permission_error", "is disabled"),
    ("unknown trigger", None, {"trigger_id": "trig_doesnotexist"}, 404, "not_found_error", "no API trigger"),
    ("daily limit", over_plan, {}, 429, "rate_limit_error", "plan pro's limit of 5 a day"),
    ("queue full", lambda api: queue_runs(api, 3), {"env": {"ROUTINED_MAX_QUEUED_RUNS": "3"}}, 503, "overloaded_error", "ROUTINED_MAX_QUEUED_RUNS"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "changes", "status", "kind", "says"),
    [pytest.param(*row[1:], id=row[0]) for row in ERROR_MATRIX],
)
def test_the_error_matrix(
    api: Fixture, setup: Any, changes: dict[str, Any], status: int, kind: str, says: str
) -> None:
    if setup is not None:
        setup(api)
    changes = dict(changes)
    client = with_settings(api, **changes.pop("env", {}))
    if changes.get("token") == "OTHER":
        changes["token"] = api.other_token
    before = len(client.runs())
    response = client.fire(**changes)
    assert_error(response, status, kind, says)
    assert len(client.runs()) == before  # nothing started
    if status in (429, 503):
        assert int(response.headers["retry-after"]) > 0
    else:
        assert "retry-after" not in response.headers


def test_a_plan_of_two_a_day_refuses_the_third_until_the_day_resets(api: Fixture) -> None:
    from routined.models import Fire

    now = datetime(2026, 11, 28, 22, 15, 30, tzinfo=UTC)
    client = with_settings(api, lambda: now, ROUTINED_PLANS="small:2,unlimited:none")
    name = set_account(api, plan="small")
    assert [client.fire().status_code for _ in range(2)] == [200, 200]
    refused = client.fire()
    assert_error(refused, 429, "rate_limit_error", f"account {name} has started 2 runs today")
    # The day (UTC by default) ends at midnight: 1 h 44 min 30 s from now.
    assert refused.headers["retry-after"] == str(6270)
    assert "resets at 2026-11-29T00:00:00Z" in refused.json()["error"]["message"]
    # Days begin in ROUTINED_TIMEZONE: at 23:15Z a new day has begun in Berlin (00:15),
    # not in UTC.
    later = datetime(2026, 11, 28, 23, 15, tzinfo=UTC)
    plans = "small:2,unlimited:none"
    assert with_settings(api, lambda: later, ROUTINED_PLANS=plans).fire().status_code == 429
    berlin = with_settings(
        api, lambda: later, ROUTINED_PLANS=plans, ROUTINED_TIMEZONE="Europe/Berlin"
    )
    assert berlin.fire().status_code == 200
    set_account(api, extra_usage=True)
    allowed = client.fire()
    assert allowed.status_code == 200
    with api.store.transaction() as session:
        outcomes = [(f.outcome, f.reason) for f in session.scalars(select(Fire).order_by(Fire.id))]
    assert [o for o, _ in outcomes] == ["fired", "fired", "refused", "refused", "fired", "fired"]
    assert "extra usage is on" in outcomes[-1][1]


def test_the_hourly_caps_refuse_with_the_time_to_the_next_hour(api: Fixture) -> None:
    now = datetime(2026, 11, 28, 22, 59, 0, tzinfo=UTC)
    client = with_settings(api, lambda: now, ROUTINED_ROUTINE_HOURLY_CAP="1")
    assert client.fire().status_code == 200
    refused = client.fire()
    assert_error(refused, 429, "rate_limit_error", "ROUTINED_ROUTINE_HOURLY_CAP")
    assert refused.headers["retry-after"] == "60"
    per_account = with_settings(api, lambda: now, ROUTINED_ACCOUNT_API_HOURLY_CAP="1")
    assert_error(
        per_account.fire(token=api.other_token, trigger_id=other_trigger(api)),
        429,
        "rate_limit_error",
        "ROUTINED_ACCOUNT_API_HOURLY_CAP",
    )


def test_an_idempotency_key_returns_the_first_session_for_a_day(api: Fixture) -> None:
    clock = [T0]
    client = with_settings(api, lambda: clock[0])
    first = client.fire({"text": "a"}, headers={"idempotency-key": "k-1"})
    again = client.fire({"text": "b"}, headers={"idempotency-key": "k-1"})
    other = client.fire({"text": "c"}, headers={"idempotency-key": "k-2"})
    assert first.status_code == again.status_code == other.status_code == 200
    assert again.json() == first.json()
    assert other.json()["claude_code_session_id"] != first.json()["claude_code_session_id"]
    assert sorted(run.text or "" for run in client.runs()) == ["a", "c"]
    clock[0] = T0 + timedelta(hours=24)
    later = client.fire({"text": "d"}, headers={"idempotency-key": "k-1"})
    assert later.json()["claude_code_session_id"] != first.json()["claude_code_session_id"]


def test_the_newest_three_dated_betas_are_accepted(api: Fixture) -> None:
    betas = "experimental-cc-routine-2026-04-01,experimental-cc-routine-2026-09-01,experimental-cc-routine-2027-01-01,experimental-cc-routine-2026-11-01"
    client = with_settings(api, ROUTINED_ACCEPTED_BETAS=betas)
    for beta, status in [
        ("experimental-cc-routine-2027-01-01", 200),
        ("experimental-cc-routine-2026-11-01", 200),
        ("experimental-cc-routine-2026-09-01", 200),
        ("experimental-cc-routine-2026-04-01", 400),
    ]:
        assert client.fire(headers={"anthropic-beta": beta}).status_code == status, beta


def test_a_retry_with_its_key_gets_its_session_even_when_the_queue_is_full(api: Fixture) -> None:
    client = with_settings(api, ROUTINED_MAX_QUEUED_RUNS="1")
    first = client.fire(headers={"idempotency-key": "retry-1"})
    assert first.status_code == 200
    assert_error(client.fire(), 503, "overloaded_error", "ROUTINED_MAX_QUEUED_RUNS")
    again = client.fire(headers={"idempotency-key": "retry-1"})
    assert again.status_code == 200 and again.json() == first.json()


def record_together(api: Fixture, fired: list[dict[str, Any]], **env: str) -> list[Any]:
    """Fires recorded in one batch, as the endpoint does with those that arrive while
    another batch is being written: each dict holds FireRequest fields to change."""
    from routined.api_fires import FireRequest
    from routined.http.fire import _record_fires
    from routined.limits import Limits

    settings = Settings.from_env(env)
    woken: list[int] = []
    answers = _record_fires(
        api.store,
        [
            FireRequest(
                **{"trigger_id": api.trigger_id, "token": api.token, "text": None,
                   "idempotency_key": None, "now": T0, **changes}
            )
            for changes in fired
        ],
        limits=Limits.of(settings),
        max_queued=settings.max_queued_runs,
        on_run_created=lambda: woken.append(1),
    )  # fmt: skip
    api.woken.extend(woken)
    return answers


def test_fires_recorded_together_are_decided_in_order_each_after_the_one_before(
    api: Fixture,
) -> None:
    from routined.http.problem import Problem
    from routined.models import Fire

    answers = record_together(
        api,
        [
            {"idempotency_key": "k-1", "text": "first"},
            {"idempotency_key": "k-1", "text": "its retry"},
            {"token": api.other_token},
            {"text": "second"},
            {"text": "third"},
        ],
        ROUTINED_ROUTINE_HOURLY_CAP="2",
    )
    first, retry, wrong_token, second, third = answers
    assert isinstance(first, str) and retry == first
    assert isinstance(wrong_token, Problem) and wrong_token.status == 401
    assert isinstance(second, str) and second != first
    # The cap is reached by the two runs started before it in the same batch.
    assert isinstance(third, Problem) and third.status == 429
    assert "ROUTINED_ROUTINE_HOURLY_CAP" in third.message
    assert third.headers["retry-after"] == "3600"
    assert sorted((run.session_id, run.text) for run in api.runs()) == sorted(
        [(first, "first"), (second, "second")]
    )
    with api.store.transaction() as session:
        decided = [(f.outcome, f.run_id) for f in session.scalars(select(Fire).order_by(Fire.id))]
        started = {run.session_id: run.id for run in session.scalars(select(Run))}
    assert decided == [("fired", started[first]), ("fired", started[second]), ("refused", None)]
    assert api.woken == [1]  # the worker is woken once for the batch


def test_a_fire_that_breaks_its_batch_fails_alone(
    api: Fixture, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from routined import runs
    from routined.http.problem import Problem

    [taken] = record_together(api, [{"text": "before"}])
    create = runs.new

    def clashing(*args: Any, **kwargs: Any) -> runs.NewRun:
        created = create(*args, **kwargs)
        if kwargs["text"] == "clash":
            created.row["session_id"] = taken  # unique: the insert fails
        return created

    monkeypatch.setattr(runs, "new", clashing)
    ok, clash, also_ok = record_together(api, [{"text": "one"}, {"text": "clash"}, {"text": "two"}])
    assert isinstance(ok, str) and isinstance(also_ok, str)
    # A 500 in the envelope for it alone, and one line in the log saying why.
    assert isinstance(clash, Problem) and clash.status == 500
    [logged] = [r for r in caplog.records if r.name == "routined.api_fires"]
    assert "session_id" in logged.getMessage() and logged.exc_info is None
    assert sorted(run.text or "" for run in api.runs()) == ["before", "one", "two"]
