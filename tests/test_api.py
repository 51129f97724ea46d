"""The fire endpoint: the hosted product's contract, answers and error envelope."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from routined import routines, tokens
from routined.api import create_app
from routined.config import Settings
from routined.db import Store
from routined.models import Run, RunEvent
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
        routines.apply(session, routines.load(path, now=T0), now=T0)
    with store.transaction() as session:
        from routined.models import Trigger

        first, second = session.scalars(select(Trigger).order_by(Trigger.created_at, Trigger.id))
        token = tokens.issue(session, first.id, now=T0)
        other_token = tokens.issue(session, second.id, now=T0)
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
        ("Bearer " + tokens.PREFIX + "x" * (tokens.LENGTH - 4), "invalid token"),
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
        fresh = tokens.issue(session, api.trigger_id, now=T0)
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
    from routined.api import MAX_BODY

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
