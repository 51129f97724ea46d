"""`routined serve` and its GitHub matcher process: serve starts exactly
one `routined matcher` child, which ends with serve whether serve stops
gracefully or is killed, and decides the deliveries serve records;
`--no-matcher` starts none.

The processes are real (serve as a subprocess, its child found through /proc);
every wait is on state, with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from routined.db import Store
from routined.models import WebhookDelivery
from tests.conftest import poll_until
from tests.github_support import FIXTURES, delivery_headers, start_serve

SECRET = "matcher-process-secret"

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds serve's children through /proc"
)


@dataclass(frozen=True)
class Process:
    pid: int
    # Clock ticks after boot when it started: tells it from a later process that
    # happens to be given the same pid once it has ended.
    started: int


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state first), if it exists."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces or parentheses itself.
    return text.rpartition(")")[2].split()


def children(parent: int) -> list[Process]:
    """The processes (not zombies) whose parent is `parent`."""
    found: list[Process] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[1]) == parent:
            found.append(Process(int(entry.name), int(fields[19])))
    return found


def running(process: Process) -> bool:
    # A zombie has ended: one orphaned into a container may never be reaped.
    fields = _stat(process.pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == process.started


def command(process: Process) -> list[str]:
    try:
        raw = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return raw.decode().split("\0")[:-1]


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    seen: list[Process] = field(default_factory=list)  # every matcher, for the cleanup

    def matchers(self) -> list[Process]:
        """Serve's children that run `routined matcher` (with whatever options serve
        gives it: they are serve's business, being its child is what counts)."""
        wanted = ["-m", "routined", "matcher"]
        found = [c for c in children(self.process.pid) if command(c)[1:4] == wanted]
        self.seen += [process for process in found if process not in self.seen]
        return found

    def answering(self) -> None:
        """Returns once serve has answered a request. Serve starts its matcher (the
        `Popen`, exec included) in the event loop's first turn after it starts
        listening, so by then the matcher exists if serve starts one at all."""
        assert httpx.get(f"{self.url}/healthz", timeout=10).json() == {"status": "ok"}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "ROUTINED_HOME": str(tmp_path / "home"),
        "ROUTINED_DATABASE_URL": f"sqlite:///{tmp_path / 'routined.db'}",
        "ROUTINED_GITHUB_WEBHOOK_SECRET": SECRET,
        "ROUTINED_POLL_INTERVAL": "0.1",
    }
    # Serve then prints the address it listens on; no remote server is meant.
    for name in ("ROUTINED_PUBLIC_URL", "ROUTINED_URL", "ROUTINED_API_KEY"):
        env.pop(name, None)
    return env


@pytest.fixture
def serve(env: dict[str, str]) -> Iterator[Callable[..., Server]]:
    """Starts `routined serve` on a free port; kills what is left of it afterwards,
    its matchers included (a failed test must not leave them behind)."""
    started: list[Server] = []

    def start(*args: str) -> Server:
        process, url = start_serve(env, *args)
        server = Server(process, url or "")
        started.append(server)
        assert url, "serve did not say where it serves"
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(timeout=30)
        assert server.process.stdout is not None
        server.process.stdout.close()
        for matcher in server.seen:
            if running(matcher):
                os.kill(matcher.pid, signal.SIGKILL)


def only_matcher(server: Server) -> Process:
    server.answering()
    found = server.matchers()
    assert len(found) == 1, (
        f"serve's matchers: {found}, its children: {children(server.process.pid)}"
    )
    return found[0]


def post_ping(server: Server) -> str:
    """Delivers GitHub's ping to serve, signed; the delivery's id."""
    body = (FIXTURES / "ping" / "with-app_id.payload.json").read_bytes()
    delivery = str(uuid.uuid4())
    answer = httpx.post(
        f"{server.url}/webhooks/github",
        content=body,
        headers=delivery_headers("ping", body, delivery=delivery, secret=SECRET),
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    return delivery


def decision(store: Store, delivery: str) -> str | None:
    with store.transaction(readonly=True) as session:
        found = session.get(WebhookDelivery, delivery)
        return found.outcome if found is not None and found.processed_at else None


# One serve per test, each doing what it can: on a slow machine starting serve
# (and its matcher) is most of a test's time.


def test_serve_runs_one_matcher_which_decides_deliveries_and_stops_with_serve(
    serve: Callable[..., Server], env: dict[str, str]
) -> None:
    server = serve()
    matcher = only_matcher(server)
    delivery = post_ping(server)
    # Serve has no matcher of its own: the decision is the child's.
    store = Store(env["ROUTINED_DATABASE_URL"])
    try:
        poll_until("the ping's decision", lambda: decision(store, delivery) is not None, 30)
        assert (decision(store, delivery) or "").startswith("ping from hook 109948940")
    finally:
        store.dispose()
    assert server.matchers() == [matcher]
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=30)
    # Serve waits for its matcher before it exits, so the matcher is gone already:
    # not later, by noticing on its own that its parent has ended.
    fields = _stat(matcher.pid)
    assert not running(matcher), (
        f"serve (exit code {code}) left its matcher running, now a child of "
        f"{fields[1] if fields else '?'}"
    )


def test_the_matcher_ends_on_its_own_when_serve_is_killed(serve: Callable[..., Server]) -> None:
    server = serve()
    matcher = only_matcher(server)
    server.process.kill()
    server.process.wait(timeout=30)
    poll_until("the orphaned matcher's end", lambda: not running(matcher), seconds=15)


def test_serve_without_matcher_starts_none(serve: Callable[..., Server]) -> None:
    server = serve("--no-matcher")
    server.answering()
    assert server.matchers() == []
