"""Unauthenticated clients cannot exhaust the HTTP server, nor fail each other's fires.

Two findings of an attack on issue 14's walls, made as they were: raw sockets against
a real `routined serve` (or routined's app behind a real uvicorn), no credentials but
where a legitimate caller's show that it still gets in.

- A fire to `/v1/claude_code/routines/trg_%00/fire` made the group-commit batch it
  shared with legitimate fires fail on PostgreSQL (`text fields cannot contain NUL`):
  every fire of the batch got a 500.
- Partial request heads, a byte now and then, were held for ever: at the descriptor
  limit the server could open nothing of its own.
- Webhook bodies stalled one byte short of 25 MB were buffered before the signature
  was checked: 150 of them took the server from 171 MiB to 3.8 GB.
- (Found while fixing those.) A client that reads nothing of a large answer held its
  connection for as long as it liked.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import func
from sqlalchemy import select as query
from starlette.types import Receive, Scope, Send

from routined import trigger_tokens
from routined.api_fires import FireRequest
from routined.config import Settings
from routined.db import Store
from routined.github.webhooks import MAX_BODY as WEBHOOK_MAX_BODY
from routined.github.webhooks import sign
from routined.http.app import BODIES_IN_FLIGHT, BODY_WAIT, create_app
from routined.http.fire import ANTHROPIC_VERSION, _record_fires
from routined.http.problem import Problem
from routined.http.server import BODY_WINDOW, HEAD_TIMEOUT, _BoundedHttp, bind, connection_cap
from routined.limits import Limits
from routined.models import Run, Trigger
from routined.routines.apply import apply
from routined.routines.load import load
from routined.testing.fake_anthropic import FakeAnthropic
from tests.conftest import T0, api_trigger, make_origin, poll_until
from tests.github_support import SECRET, raw

BETA = "experimental-cc-routine-2026-04-01"
MiB = 1024 * 1024


def fire_request(path: str, token: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: routined\r\nAuthorization: Bearer {token}\r\n"
        f"anthropic-version: {ANTHROPIC_VERSION}\r\nanthropic-beta: {BETA}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode()


def answer_of(connection: socket.socket) -> tuple[int, Any]:
    """Status and JSON body of the one response a `Connection: close` request gets."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def closed_by_server(connection: socket.socket) -> bool:
    """Whether the server has ended this connection (EOF, after its answer if it gave
    one, or a reset); reads what has come, never waits."""
    readable = select.poll()  # not select(): the test holds descriptors past 1,024
    readable.register(connection, select.POLLIN)
    try:
        while readable.poll(0):
            if not connection.recv(65536):
                return True
    except OSError:  # reset: the server closed with what we sent still unread
        return True
    return False


def trickle(connections: list[socket.socket], line: bytes) -> None:
    """One more header line (or body byte) on each connection still open."""
    for connection in connections:
        with contextlib.suppress(OSError):
            connection.send(line)


# ---------------------------------------------------------------------------------
# Finding 9: one hostile fire fails the batch it shares with legitimate ones.


@dataclass
class App:
    """routined's app behind a real uvicorn on loopback, with one live trigger token."""

    port: int
    store: Store
    trigger_id: str
    token: str


@pytest.fixture
def errors_logged(
    uvicorn_errors_logged: pytest.LogCaptureFixture,
) -> pytest.LogCaptureFixture:
    """What the server logs at ERROR, uvicorn's error log included."""
    uvicorn_errors_logged.set_level(logging.ERROR)
    return uvicorn_errors_logged


@pytest.fixture
def app(store: Store, tmp_path: Path) -> Iterator[App]:
    """On SQLite and on PostgreSQL."""
    trigger_id, token = api_trigger(store, tmp_path)
    settings = Settings.from_env(
        {
            "ROUTINED_HOME": str(tmp_path / "home"),
            "ROUTINED_PUBLIC_URL": "https://routined.example.com",
            "ROUTINED_ROUTINE_HOURLY_CAP": "100000",
        }
    )
    listener = bind("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(store, settings, clock=lambda: T0),
            log_level="warning",
            access_log=False,
            log_config=None,
        )
    )
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[listener])), daemon=True
    )
    thread.start()
    poll_until("uvicorn starts", lambda: server.started, 10)
    try:
        yield App(listener.getsockname()[1], store, trigger_id, token)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# Trigger ids no trigger has: the attack's, and others PostgreSQL cannot hold.
HOSTILE_IDS = ["trg_%00", "trig_%00", "trig_01ABCDEFGHJKMNPQRSTVWXY%00", "%00%00", "trig_%C3%A9"]


def test_fires_racing_hostile_trigger_ids_all_succeed(
    app: App, errors_logged: pytest.LogCaptureFixture
) -> None:
    fake_token = trigger_tokens.PREFIX + "a" * (len(app.token) - len(trigger_tokens.PREFIX))
    good = fire_request(f"/v1/claude_code/routines/{app.trigger_id}/fire", app.token)
    statuses: dict[str, list[int]] = {"legitimate": [], "hostile": []}
    hostile_answers: list[Any] = []
    for _round in range(10):
        # Interleaved, every request but its last byte sent first, then all the last
        # bytes at once: the fires reach the recorder together, in one batch.
        sent: list[tuple[str, socket.socket, bytes]] = []
        for i in range(20):
            kind = "legitimate" if i % 2 else "hostile"
            data = (
                good
                if kind == "legitimate"
                else fire_request(
                    f"/v1/claude_code/routines/{HOSTILE_IDS[i // 2 % len(HOSTILE_IDS)]}/fire",
                    fake_token,
                )
            )
            connection = socket.create_connection(("127.0.0.1", app.port), timeout=30)
            connection.sendall(data[:-1])
            sent.append((kind, connection, data[-1:]))
        for _, connection, last in sent:
            connection.sendall(last)
        for kind, connection, _ in sent:
            with connection:
                status, body = answer_of(connection)
            statuses[kind].append(status)
            if kind == "hostile":
                hostile_answers.append(body)
    assert statuses["legitimate"] == [200] * 100
    assert statuses["hostile"] == [404] * 100
    # The answer a trigger that does not exist gets, in the envelope.
    with socket.create_connection(("127.0.0.1", app.port), timeout=30) as connection:
        unknown = "trig_" + "0" * 26
        connection.sendall(fire_request(f"/v1/claude_code/routines/{unknown}/fire", fake_token))
        assert answer_of(connection) == (
            404,
            {
                "type": "error",
                "error": {"type": "not_found_error", "message": f"no API trigger {unknown}"},
            },
        )
    assert all(
        set(answer) == {"type", "error"}
        and answer["error"]["type"] == "not_found_error"
        and answer["error"]["message"].startswith("no API trigger ")
        for answer in hostile_answers
    ), hostile_answers[:3]
    with app.store.transaction() as session:
        assert session.scalar(query(func.count()).select_from(Run)) == 100
    assert not [r.getMessage() for r in errors_logged.records], "the server logged errors"
    assert "Traceback" not in errors_logged.text


def test_a_fire_the_database_refuses_fails_alone_and_is_logged_once(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """The recorder itself, given what the format check keeps from it: a NUL (which
    PostgreSQL refuses) and a lone surrogate (which neither store can encode) in a
    trigger id, in a batch with legitimate fires. Each legitimate one is recorded;
    each hostile one is refused alone, in at most one line of the log."""
    settings = Settings.from_env({"ROUTINED_ROUTINE_HOURLY_CAP": "100000"})
    hostile = ["trig_\x00", "trig_\ud800"]
    batch = [
        FireRequest(
            trigger_id=hostile[i % 2] if i % 5 == 2 else app.trigger_id,
            token=app.token,
            text=f"fire {i}",
            idempotency_key=None,
            now=T0,
        )
        for i in range(40)
    ]
    woken: list[int] = []
    caplog.set_level(logging.ERROR, logger="routined.api_fires")
    answers = _record_fires(
        app.store,
        batch,
        limits=Limits.of(settings),
        max_queued=settings.max_queued_runs,
        on_run_created=lambda: woken.append(1),
    )
    legitimate = [a for r, a in zip(batch, answers, strict=True) if r.trigger_id == app.trigger_id]
    refused = [a for r, a in zip(batch, answers, strict=True) if r.trigger_id != app.trigger_id]
    assert len(legitimate) == 32 and all(isinstance(a, str) for a in legitimate), legitimate
    assert len(refused) == 8
    assert all(isinstance(a, Problem) and a.status in (404, 500) for a in refused), refused
    failed = [a for a in refused if isinstance(a, Problem) and a.status == 500]
    logged = [r for r in caplog.records if r.name == "routined.api_fires"]
    assert len(logged) == len(failed)  # one line each, none for the others
    assert all(r.exc_info is None for r in logged)  # and not a traceback
    with app.store.transaction() as session:
        assert session.scalar(query(func.count()).select_from(Run)) == 32
    assert woken == [1]


# ---------------------------------------------------------------------------------
# Finding 10: slow clients hold the server's connections and memory.


@dataclass
class Serving:
    process: subprocess.Popen[str]
    url: str
    port: int
    log: list[str]
    fire_url: str
    token: str

    def fire(self) -> httpx.Response:
        return httpx.post(
            self.fire_url,
            headers={
                "authorization": f"Bearer {self.token}",
                "anthropic-version": ANTHROPIC_VERSION,
                "anthropic-beta": BETA,
            },
            timeout=10,
        )

    def status(self, field: str) -> int:
        """A `VmRSS`-like line of /proc/<pid>/status, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def sockets(self) -> int:
        """How many sockets the server process holds open."""
        folder = Path(f"/proc/{self.process.pid}/fd")
        held = 0
        for entry in folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                held += str(entry.readlink()).startswith("socket:")
        return held


@pytest.fixture
def serve(tmp_path: Path, fake_api: FakeAnthropic) -> Iterator[Callable[..., Serving]]:
    """Starts `routined serve` (its soft open files limit `soft_files`, if given) on a
    home with one routine, whose API trigger's token it hands out; stopped at the end."""
    env = {
        **os.environ,
        "ROUTINED_HOME": str(tmp_path / "home"),
        "ANTHROPIC_BASE_URL": fake_api.base_url,
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ROUTINED_WORKERS": "1",
        "ROUTINED_POLL_INTERVAL": "0.2",
        "ROUTINED_GITHUB_WEBHOOK_SECRET": SECRET,
    }
    for name in ("ROUTINED_PUBLIC_URL", "ROUTINED_DATABASE_URL", "ROUTINED_URL"):
        env.pop(name, None)
    # The routine and its token, written as `routined apply` and `routined token`
    # would (in this process: each command would take seconds to start).
    origin = make_origin(tmp_path / "origin")
    (tmp_path / "routines.yaml").write_text(
        "routines:\n  - name: target\n    prompt: Go.\n"
        f"    repositories: [{{url: {origin}}}]\n"
        "    agent: {command: ['/bin/true']}\n"
        "    triggers: [{type: api}]\n"
    )
    now = datetime.now(UTC)
    store = Store(Settings.from_env(env).database_url.reveal())
    try:
        store.migrate()
        with store.transaction() as session:
            apply(session, load(tmp_path / "routines.yaml", now=now), now=now)
        with store.transaction() as session:
            [trigger_id] = session.scalars(query(Trigger.id)).all()
            token = trigger_tokens.issue(session, trigger_id, now=now)
    finally:
        store.dispose()
    # `python -m`: the routined on PYTHONPATH, also when that is another checkout's.
    routined = [sys.executable, "-m", "routined"]
    started: list[subprocess.Popen[str]] = []

    def start(soft_files: int | None = None) -> Serving:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        process = subprocess.Popen(
            [*routined, "serve", "--port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=None
            if soft_files is None
            else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft_files, hard)),
        )
        started.append(process)
        assert process.stdout is not None
        log = [process.stdout.readline()]
        found = re.search(r"serving at (http://\S+)", log[0])
        assert found, f"serve printed {log!r}"

        def drain() -> None:  # so that what it prints never fills the pipe
            assert process.stdout is not None
            log.extend(process.stdout)

        threading.Thread(target=drain, daemon=True).start()
        url = found.group(1)
        return Serving(
            process,
            url,
            int(url.rsplit(":", 1)[1]),
            log,
            f"{url}/v1/claude_code/routines/{trigger_id}/fire",
            token,
        )

    try:
        yield start
    finally:
        for process in started:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: routined\r\n"


def test_slowloris_heads_are_dropped_in_time_and_fires_still_answer(
    serve: Callable[..., Serving],
) -> None:
    server = serve()
    opened = time.monotonic()
    held = []
    for _ in range(200):
        connection = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        connection.sendall(PARTIAL_HEAD)
        held.append(connection)
    try:
        # While 200 heads are held, a fire and a health check are answered at once.
        fired = server.fire()
        assert fired.status_code == 200, fired.text
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        # A header line now and then does not keep a head open past its bound.
        deadline = opened + HEAD_TIMEOUT + 5
        while not all(closed_by_server(c) for c in held):
            assert time.monotonic() < deadline, (
                f"{sum(not closed_by_server(c) for c in held)} of 200 partial heads are "
                f"still held {time.monotonic() - opened:.0f} s after they began"
            )
            trickle(held, b"X-Slow: y\r\n")
            time.sleep(0.5)
        assert time.monotonic() - opened >= HEAD_TIMEOUT - 1  # not sooner than promised
        assert server.fire().status_code == 200
    finally:
        for connection in held:
            connection.close()


def test_serve_raises_its_open_files_limit_from_a_services_1024(
    serve: Callable[..., Serving],
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # As systemd and many shells start a service: 1,024 open files at most, at first.
    server = serve(soft_files=1024)
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    [files] = [line.split()[3:5] for line in limits.splitlines() if "Max open files" in line]
    assert files == [str(min(hard, 65536)), str(hard)]


def test_connections_past_the_cap_are_refused_and_the_server_keeps_its_files(
    serve: Callable[..., Serving],
) -> None:
    server = serve()
    # As the attack: the limit lowered under the running server to 1,024 (soft and
    # hard), then 1,100 clients that send a partial head and stall.
    subprocess.run(["prlimit", f"--pid={server.process.pid}", "--nofile=1024:1024"], check=True)
    cap = 512  # half of 1,024: what connection_cap() answers under that limit
    held: list[socket.socket] = []
    try:
        for _ in range(1100):
            try:
                connection = socket.create_connection(("127.0.0.1", server.port), timeout=2)
            except OSError:
                break  # the server accepts no more: it is out of descriptors
            held.append(connection)
            with contextlib.suppress(OSError):
                connection.sendall(PARTIAL_HEAD)
        assert len(held) == 1100, f"only {len(held)} clients could connect"
        opened = time.monotonic()
        # Those past the cap are answered and closed at once; the server holds the cap.
        poll_until(
            "connections past the cap are closed",
            lambda: sum(closed_by_server(c) for c in held) >= len(held) - cap,
            HEAD_TIMEOUT / 2,
        )
        assert server.sockets() <= cap + 16, server.sockets()
        # A new client learns at once that the server is full, and when to come back.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as late:
            received = b""
            while chunk := late.recv(4096):
                received += chunk
        assert received.startswith(b"HTTP/1.1 503 "), received[:100]
        assert b"retry-after: 1" in received.lower()
        # Then the stalled heads are dropped, and all is served again.
        poll_until(
            "all stalled heads are dropped",
            lambda: all(closed_by_server(c) for c in held),
            opened + HEAD_TIMEOUT + 5 - time.monotonic(),
        )
        assert server.fire().status_code == 200
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        logged = "".join(server.log)
        assert "Too many open files" not in logged, logged[-2000:]
    finally:
        for connection in held:
            connection.close()


def test_stalled_webhook_bodies_hold_bounded_memory_and_signed_deliveries_get_in(
    serve: Callable[..., Serving],
) -> None:
    server = serve()
    httpx.get(f"{server.url}/healthz", timeout=5)
    before = server.status("VmRSS")
    size = WEBHOOK_MAX_BODY - 1024
    head = (
        "POST /webhooks/github HTTP/1.1\r\nHost: routined\r\nX-GitHub-Event: push\r\n"
        "X-GitHub-Delivery: forged\r\n"
        f"X-Hub-Signature-256: sha256={'0' * 64}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    chunk = b"x" * MiB
    attackers: list[tuple[socket.socket, list[int]]] = []  # (connection, [bytes sent])
    opened = time.monotonic()
    for _ in range(150):
        connection = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        connection.sendall(head)
        connection.setblocking(False)
        attackers.append((connection, [0]))
    try:
        # Every body up to 1 MiB short of its end, as fast as the server takes it.
        moving = time.monotonic()
        while time.monotonic() - moving < 1.0:
            for connection, sent in attackers:
                if sent[0] >= size - MiB:
                    continue
                try:
                    sent[0] += connection.send(chunk[: min(MiB, size - MiB - sent[0])])
                    moving = time.monotonic()
                except BlockingIOError:
                    pass
                except OSError as error:
                    assert error.errno in (errno.EPIPE, errno.ECONNRESET), error
                    sent[0] = size  # closed by the server
        # The bodies stall. A delivery GitHub signed still gets in, at once.
        body = raw("ping/with-app_id.payload.json")
        delivered = httpx.post(
            f"{server.url}/webhooks/github",
            content=body,
            headers={
                "content-type": "application/json",
                "x-github-event": "ping",
                "x-github-delivery": "genuine-1",
                "x-hub-signature-256": sign(SECRET.encode(), body),
            },
            timeout=BODY_WAIT + 5,
        )
        assert delivered.status_code == 202, delivered.text
        # The memory the bodies took is bounded by the budget of bodies in flight, and
        # some for the connections' own buffers; not by 150 times 25 MB.
        bound = BODIES_IN_FLIGHT + 128 * MiB
        peak = server.status("VmHWM")  # the most the server has held, ever
        assert peak - before <= bound, f"{before / MiB:.0f} MiB before, {peak / MiB:.0f} at most"
        # Each stalled body is dropped: after BODY_WAIT when there is no room for it,
        # or after a window that brought nothing.
        poll_until(
            "every stalled body is dropped",
            lambda: all(closed_by_server(c) for c, _ in attackers),
            opened + BODY_WAIT + 2 * BODY_WINDOW + 5 - time.monotonic(),
        )
        peak = server.status("VmHWM")
        assert peak - before <= bound, f"{before / MiB:.0f} MiB before, {peak / MiB:.0f} at most"
    finally:
        for connection, _ in attackers:
            connection.close()


@pytest.mark.parametrize(
    ("size", "part"),
    [(256 * MiB, MiB), (64 * MiB, 64 * MiB)],
    ids=["written as read", "handed over whole"],
)
def test_a_client_that_reads_nothing_of_its_answer_is_dropped(size: int, part: int) -> None:
    """The other way to hold a connection: ask for a large answer and read none of it.
    Written a part at a time, the app's writes wait on the client; handed over whole,
    the answer waits in the connection's buffer, which uvicorn's keep-alive timeout
    closes only once it is sent. Either way the connection is dropped within bounds."""
    answered: list[str] = []

    async def large(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(size).encode())],
            }
        )
        parts = size // part
        for number in range(parts):
            more = number < parts - 1
            await send({"type": "http.response.body", "body": b"x" * part, "more_body": more})
        answered.append("all of it")  # handed over, or the client hung up

    listener = bind("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(large, http=_BoundedHttp, lifespan="off", log_config=None)
    )
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[listener])), daemon=True
    )
    thread.start()
    poll_until("uvicorn starts", lambda: server.started, 10)
    try:
        with socket.create_connection(listener.getsockname()[:2], timeout=5) as reader:
            reader.sendall(b"GET /large HTTP/1.1\r\nHost: routined\r\n\r\n")
            asked = time.monotonic()
            poll_until("the app begins its answer", lambda: bool(server.server_state.tasks), 10)
            poll_until(
                "the connection of a client that reads nothing is dropped",
                lambda: not server.server_state.connections and answered == ["all of it"],
                asked + 2 * HEAD_TIMEOUT + 5 - time.monotonic(),
            )
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_cap_follows_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert connection_cap() == 512
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
