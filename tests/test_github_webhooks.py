"""`POST /webhooks/github`: real payloads in, signatures checked before anything is
stored, redeliveries counted and never started twice, the size cap, no secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select, text
from starlette.types import ASGIApp

from routined.db import Store
from routined.github.webhooks import BAD_SIGNATURES, MAX_BODY, sign
from routined.http.server import bind
from routined.models import Counter, WebhookDelivery
from tests.github_support import (
    PAYLOADS,
    REPOSITORY,
    SECRET,
    Hub,
    HubFactory,
    apply,
    hubs,
    payload,
    raw,
    row_counts,
    write_routines,
)


@pytest.fixture
def make_hub(sqlite_store: Store, tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    yield from hubs(sqlite_store, tmp_path)


@pytest.fixture
def make_hub_on(store: Store, tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    """On SQLite and on PostgreSQL."""
    yield from hubs(store, tmp_path)


def bad_signatures(store: Store) -> int:
    with store.transaction() as session:
        counted = session.scalar(select(Counter.value).where(Counter.name == BAD_SIGNATURES))
    return int(counted or 0)


def assert_error(response: Any, status: int, says: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and says in body["error"]["message"], body


def test_the_signature_is_githubs_own_test_vector() -> None:
    # From GitHub's "Validating webhook deliveries" (webhook-delivery.md, [S2]).
    assert sign(b"It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


@pytest.mark.parametrize(
    ("name", "signature"),
    [
        # Computed for the fixture bytes in webhook-delivery.md, not here.
        (
            "ping/with-app_id.payload.json",
            "sha256=1164c298af8dd23383e8b64457292606ca70b51e9273776762d1385e443dc148",
        ),
        (
            "pull_request/opened.payload.json",
            "sha256=9dc478d9f168340c18752a2c72bfbec57a9230b5a8af4e1b5cd19e4469a0e55a",
        ),
    ],
)
def test_a_signature_written_down_elsewhere_is_accepted(
    make_hub: Callable[..., Hub], name: str, signature: str
) -> None:
    hub = make_hub()
    event = name.split("/")[0]
    response = hub.deliver(event, raw(name), signature=signature)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(("event", "name"), PAYLOADS, ids=[name for _, name in PAYLOADS])
def test_every_payload_is_accepted_and_recorded_as_sent(
    make_hub: Callable[..., Hub], event: str, name: str
) -> None:
    hub = make_hub()
    body = raw(name)
    sent = payload(name)
    delivery_id = hub.accepted(event, body)
    assert hub.woken == [1]
    with hub.store.transaction() as session:
        stored = session.get(WebhookDelivery, delivery_id)
        assert stored is not None
        assert stored.body.encode() == body  # byte for byte, not re-serialised
    shown = hub.delivery(delivery_id)
    repository = sent.get("repository") or {}
    installation = sent.get("installation") or {}
    assert (shown["event"], shown["action"], shown["repository"], shown["installation_id"]) == (
        event,
        sent.get("action"),
        repository.get("full_name"),
        installation.get("id"),
    )
    assert shown["attempts"] == 1 and shown["processed_at"] is None
    assert shown["headers"]["x-github-event"] == event
    assert shown["headers"]["x-github-delivery"] == delivery_id
    assert shown["headers"]["user-agent"].startswith("GitHub-Hookshot/")
    assert "x-hub-signature-256" not in shown["headers"]
    # Deciding it later works for every kind of event, routine or not.
    hub.decide()
    decided = hub.delivery(delivery_id)
    assert decided["processed_at"] is not None and decided["outcome"]


def tampered(body: bytes) -> list[tuple[str, bytes, dict[str, str]]]:
    """What a forger (or a misconfigured proxy) sends: (label, body, signature headers)."""
    good = sign(SECRET.encode(), body)
    at = len(body) // 2
    changed = body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]
    sha1 = "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    return [
        ("a byte changed", changed, {"x-hub-signature-256": good}),
        ("wrong secret", body, {"x-hub-signature-256": sign(b"not the secret", body)}),
        ("no signature", body, {}),
        ("sha1 only", body, {"x-hub-signature": sha1}),
        ("sha1 in the sha256 header", body, {"x-hub-signature-256": sha1}),
        ("signature of nothing", body, {"x-hub-signature-256": sign(SECRET.encode(), b"")}),
    ]


def test_every_tampered_delivery_is_refused_and_leaves_only_a_count(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub()
    # A routine that would fire on the pull request payloads, had they been signed.
    apply(hub.store, write_routines(tmp_path, origin))
    before = row_counts(hub.store)
    refused = 0
    for event, name in PAYLOADS:
        for label, body, signature in tampered(raw(name)):
            response = hub.deliver(event, body, signature=None, headers=signature)
            assert response.status_code == 401, (name, label, response.text)
            assert_error(response, 401, "X-Hub-Signature-256")
            refused += 1
    assert hub.decide() == 0
    after = row_counts(hub.store)
    assert {t: n - before[t] for t, n in after.items() if n != before[t]} == {"counters": 1}
    assert bad_signatures(hub.store) == refused == 6 * len(PAYLOADS)
    assert hub.woken == []
    assert hub.api("/deliveries") == []


def test_a_redelivery_is_counted_and_starts_nothing_twice(
    make_hub_on: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub_on()
    apply(hub.store, write_routines(tmp_path, origin))
    body = raw("pull_request/opened.payload.json")
    delivery_id = hub.accepted(
        "pull_request", body, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958"
    )
    # GitHub redelivers with the same id: before it is decided, and after.
    again = hub.deliver("pull_request", body, delivery=delivery_id)
    assert again.status_code == 202
    assert again.json() == {"delivery": delivery_id, "status": "duplicate"}
    assert hub.decide() == 1
    later = hub.deliver("pull_request", body, delivery=delivery_id)
    assert later.json() == {"delivery": delivery_id, "status": "duplicate"}
    assert hub.decide() == 0
    [run] = hub.runs()
    [decision] = hub.delivery(delivery_id)["decisions"]
    assert (decision["outcome"], decision["run_id"]) == ("fired", run.id)
    assert hub.delivery(delivery_id)["attempts"] == 3
    assert len(hub.fires()) == 1
    assert hub.woken == [1]  # the matcher is woken for the first only
    # Another delivery of the same event is a new one, and decided on its own.
    other = hub.accepted("pull_request", body)
    assert hub.decide() == 1
    assert hub.decision(other)["outcome"] == "fired"
    assert len(hub.runs()) == 2


def test_without_a_secret_deliveries_are_503_and_nothing_is_kept(
    make_hub: Callable[..., Hub],
) -> None:
    hub = make_hub(ROUTINED_GITHUB_WEBHOOK_SECRET="")
    before = row_counts(hub.store)
    response = hub.deliver("ping", raw("ping/with-app_id.payload.json"))
    assert_error(response, 503, "ROUTINED_GITHUB_WEBHOOK_SECRET")
    unsigned = hub.deliver("ping", raw("ping/with-app_id.payload.json"), signature=None)
    assert_error(unsigned, 503, "ROUTINED_GITHUB_WEBHOOK_SECRET")
    assert row_counts(hub.store) == before


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        (b"payload=%7B%7D", {"content-type": "application/x-www-form-urlencoded"}, 400, "JSON"),
        (b"[1, 2]", {}, 400, "not a JSON object"),
        (b"{}", {"x-github-delivery": ""}, 400, "X-GitHub-Delivery"),
        (b"{}", {"x-github-event": ""}, 400, "X-GitHub-Event"),
        (b"{}", {"x-github-delivery": "d" * 65}, 400, "64 characters"),
    ],
)
def test_a_signed_delivery_that_cannot_be_read_is_400_and_kept_nowhere(
    make_hub: Callable[..., Hub], body: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    hub = make_hub()
    before = row_counts(hub.store)
    response = hub.deliver("push", body, headers=headers)
    assert_error(response, status, says)
    assert row_counts(hub.store) == before


@contextmanager
def serving(app: ASGIApp) -> Iterator[tuple[str, int]]:
    """The app behind a real uvicorn on loopback, in a thread; (host, port)."""
    listener = bind("127.0.0.1", 0)
    host, port = listener.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[listener])), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield host, port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_body_declared_over_25_mb_is_413_before_it_is_sent(
    make_hub: Callable[..., Hub],
) -> None:
    hub = make_hub()
    before = row_counts(hub.store)
    head = raw("ping/with-app_id.payload.json")
    with (
        serving(hub.client.app) as (host, port),
        socket.create_connection((host, port), timeout=10) as connection,
    ):
        connection.sendall(
            (
                "POST /webhooks/github HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\n"
                "Content-Type: application/json\r\n"
                "X-GitHub-Event: ping\r\n"
                "X-GitHub-Delivery: big-1\r\n"
                f"X-Hub-Signature-256: {sign(SECRET.encode(), head)}\r\n"
                f"Content-Length: {MAX_BODY + 1}\r\n\r\n"
            ).encode()
            + head
        )
        # Only a few kilobytes of the 25 MB were ever sent: the answer cannot wait
        # for the rest.
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(65536)
            assert chunk, f"the server closed the connection after {answer!r}"
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:200]
    assert row_counts(hub.store) == before


def test_a_streamed_body_past_25_mb_is_413(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub()
    before = row_counts(hub.store)
    piece = b" " * (1024 * 1024)
    sent = [0]

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"zen": "'
        while sent[0] <= MAX_BODY + len(piece):
            sent[0] += len(piece)
            yield piece
        yield b'"}'

    with serving(hub.client.app) as (host, port):
        response = httpx.post(
            f"http://{host}:{port}/webhooks/github",
            content=chunks(),
            headers={
                "x-github-event": "ping",
                "x-github-delivery": "big-2",
                "x-hub-signature-256": "sha256=" + "0" * 64,
            },
            timeout=30,
        )
    assert response.status_code == 413, response.text
    assert str(MAX_BODY) in json.loads(response.text)["error"]["message"]
    assert row_counts(hub.store) == before


def test_the_stored_repository_is_the_payloads_whatever_its_case(
    make_hub_on: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    # GitHub's names ignore case: a trigger written in lower case hears the event.
    hub = make_hub_on()
    lower = write_routines(tmp_path, origin).read_text().replace(REPOSITORY, REPOSITORY.lower())
    (tmp_path / "lower.yaml").write_text(lower)
    apply(hub.store, tmp_path / "lower.yaml")
    delivery_id = hub.accepted("pull_request", raw("pull_request/opened.payload.json"))
    assert hub.decide() == 1
    assert hub.delivery(delivery_id)["repository"] == REPOSITORY
    assert hub.decision(delivery_id)["outcome"] == "fired"


def test_bad_signatures_that_arrive_together_are_each_refused_and_counted(
    postgres_url: str, tmp_path: Path
) -> None:
    # Regression: the counter was an update, then an insert when the update found no
    # row; two first refusals at once both inserted, and one got a 500.
    store = Store(postgres_url)
    store.migrate()
    factory = HubFactory(store, tmp_path)
    try:
        hub = factory()
        answers: list[int] = []
        with store.transaction() as other:
            # Another request is counting the first bad signature and has not committed.
            other.add(Counter(name=BAD_SIGNATURES, value=1))
            other.flush()
            sending = threading.Thread(
                target=lambda: answers.append(
                    hub.deliver(
                        "ping", raw("ping/with-app_id.payload.json"), signature=None
                    ).status_code
                )
            )
            sending.start()
            waiting_for_lock(store)
        sending.join(timeout=30)
        assert answers == [401]
        assert bad_signatures(store) == 2
    finally:
        factory.close()
        store.dispose()


def waiting_for_lock(store: Store) -> None:
    """Until a connection to the store's database waits for a lock (each look in a
    transaction of its own: PostgreSQL keeps one view of the activity per transaction)."""
    deadline = time.monotonic() + 10
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    while True:
        with store.transaction(readonly=True) as session:
            if session.scalar(query):
                return
        assert time.monotonic() < deadline, "the request never waited for the lock"
        time.sleep(0.01)


def test_a_signature_that_is_not_ascii_is_refused_not_a_500(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub()
    body = raw("ping/with-app_id.payload.json")
    # Latin-1 bytes in the header: starlette reads them as text hmac cannot compare.
    response = hub.client.post(
        "/webhooks/github",
        content=body,
        headers={
            b"x-github-event": b"ping",
            b"x-github-delivery": b"not-ascii",
            b"x-hub-signature-256": b"sha256=\xe9" + b"0" * 63,
        },
    )
    assert_error(response, 401, "X-Hub-Signature-256")
