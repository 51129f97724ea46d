"""What the GitHub trigger tests share: the real payloads, signing, a receiver with its
matcher in process, and routines files with GitHub triggers.

The payloads in tests/fixtures/github-webhooks are sent byte for byte; variants are
built here from a parsed copy and never written back.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from routined.api_keys import Principal
from routined.config import Settings
from routined.db import Store
from routined.github.matcher import Matcher
from routined.github.webhooks import sign
from routined.http.app import create_app
from routined.models import Base, Fire, Run
from routined.routines.apply import Change
from routined.routines.apply import apply as apply_routines
from routined.routines.load import load
from tests.conftest import T0, git

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "github-webhooks"
SECRET = "It's a Secret to Everybody"
REPOSITORY = "Codertocat/Hello-World"
# Every payload file and the event it is delivered as (its folder's name).
PAYLOADS = sorted(
    (path.parent.name, str(path.relative_to(FIXTURES))) for path in FIXTURES.glob("*/*.json")
)

PR_TRIGGER = """\
      - type: github
        repository: Codertocat/Hello-World
        events: [pull_request.opened, pull_request.synchronize]
        filters:
          - {field: base_branch, op: equals, value: master}
          - {field: labels, op: one_of, value: [bug, security]}
          - {field: is_draft, op: equals, value: false}
"""


def raw(name: str) -> bytes:
    """A payload file's bytes, exactly as stored."""
    return (FIXTURES / name).read_bytes()


def payload(name: str) -> dict[str, Any]:
    """A parsed copy of a payload file, to build variants from."""
    parsed: dict[str, Any] = json.loads(raw(name))
    return copy.deepcopy(parsed)


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=2).encode()


def write_routines(
    tmp_path: Path,
    origin: Path | str,
    triggers: str = PR_TRIGGER,
    *,
    name: str = "pr-review",
    prompt: str = "Review the pull request in the github-event block.",
    extra: str = "",
    more: str = "",
    file_name: str = "routines.yaml",
) -> Path:
    """A routines file: one routine on `origin` (a path or URL) with `triggers` (YAML list items,
    indented six spaces); `extra` adds routine keys, `more` further routines."""
    path = tmp_path / file_name
    path.write_text(
        "routines:\n"
        f"  - name: {name}\n"
        f"    prompt: {prompt}\n"
        "    repositories:\n"
        f"      - url: {origin}\n"
        f"{extra}"
        "    triggers:\n"
        f"{triggers}"
        f"{more}"
    )
    return path


def apply(store: Store, path: Path, *, now: datetime = T0) -> list[Change]:
    spec = load(path, now=now)
    with store.transaction() as session:
        return apply_routines(session, spec, now=now)


def add_pull_head(origin: Path, tmp_path: Path, number: int = 2) -> str:
    """Give a bare origin GitHub's `refs/pull/N/head`: a commit on top of main that no
    branch holds, as a pull request's head; its sha."""
    work = tmp_path / f"pull-{number}"
    git("clone", "--quiet", str(origin), str(work))
    (work / "README.md").write_text("# app\n\nUpdated by pull request.\n")
    git("commit", "--quiet", "-am", f"Update the README (pull request {number})", cwd=work)
    git("push", "--quiet", "origin", f"HEAD:refs/pull/{number}/head", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Hub:
    """The server's app (webhook receiver and management API) and the matcher, in
    process, on one store."""

    store: Store
    settings: Settings
    client: TestClient
    matcher: Matcher
    clock: Clock
    woken: list[int] = field(default_factory=list)

    def deliver(
        self,
        event: str,
        body: bytes,
        *,
        delivery: str | None = None,
        signature: str | None = "sign",
        headers: dict[str, str] | None = None,
    ) -> Any:
        """POST a delivery as GitHub does; `signature` "sign" signs it with SECRET,
        None leaves the header out, anything else is sent as it is."""
        sent = delivery_headers(event, body, delivery=delivery, secret=None)
        if signature == "sign":
            sent["x-hub-signature-256"] = sign(SECRET.encode(), body)
        elif signature is not None:
            sent["x-hub-signature-256"] = signature
        sent.update(headers or {})
        response = self.client.post(
            "/webhooks/github", content=body, headers={k: v for k, v in sent.items() if v}
        )
        # Deliveries are decided in the order they arrived: no two arrive at once.
        self.clock.advance(milliseconds=1)
        return response

    def accepted(self, event: str, body: bytes, *, delivery: str | None = None) -> str:
        """Deliver and expect 202 `received`; the delivery id."""
        response = self.deliver(event, body, delivery=delivery)
        assert response.status_code == 202, response.text
        answer = response.json()
        assert answer["status"] == "received", answer
        return str(answer["delivery"])

    def decide(self) -> int:
        return self.matcher.run_pending()

    def api(self, path: str) -> Any:
        response = self.client.get(f"/api/v1{path}")
        assert response.status_code == 200, response.text
        return response.json()

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.api(f"/deliveries/{delivery_id}")
        return found

    def decision(self, delivery_id: str, routine: str = "pr-review") -> dict[str, Any]:
        """The one decision a routine made about a delivery."""
        [found] = [d for d in self.delivery(delivery_id)["decisions"] if d["routine"] == routine]
        return dict(found)

    def runs(self) -> list[Run]:
        with self.store.transaction() as session:
            return list(session.scalars(select(Run).order_by(Run.created_at, Run.id)))

    def run(self, run_id: str) -> Run:
        with self.store.transaction() as session:
            found = session.get(Run, run_id)
            assert found is not None
            return found

    def fires(self) -> list[Fire]:
        with self.store.transaction() as session:
            return list(session.scalars(select(Fire).order_by(Fire.id)))


def row_counts(store: Store) -> dict[str, int]:
    """Rows in every table of the schema."""
    with store.transaction() as session:
        return {
            table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in Base.metadata.sorted_tables
        }


def github_env(tmp_path: Path, **env: str) -> dict[str, str]:
    return {
        "ROUTINED_HOME": str(tmp_path / "home"),
        "ROUTINED_PUBLIC_URL": "https://routined.example.com",
        "ROUTINED_GITHUB_WEBHOOK_SECRET": SECRET,
        **env,
    }


@dataclass
class HubFactory:
    store: Store
    tmp_path: Path
    opened: list[TestClient] = field(default_factory=list)

    def __call__(self, clock: Clock | None = None, **env: str) -> Hub:
        clock = clock or Clock()
        settings = Settings.from_env(github_env(self.tmp_path, **env))
        woken: list[int] = []
        matcher = Matcher(self.store, settings, clock=clock)
        app = create_app(
            self.store,
            settings,
            clock=clock,
            on_delivery=lambda: woken.append(1),
            principal=Principal.local,
        )
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        self.opened.append(client)
        return Hub(self.store, settings, client, matcher, clock, woken)

    def close(self) -> None:
        for client in self.opened:
            client.__exit__(None, None, None)


def hubs(store: Store, tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    """For a fixture: makes hubs on `store`, closes them afterwards."""
    factory = HubFactory(store, tmp_path)
    try:
        yield factory
    finally:
        factory.close()


ROUTINED = str(Path(sys.executable).with_name("routined"))


def delivery_headers(
    event: str, body: bytes, *, delivery: str | None = None, secret: str | None = SECRET
) -> dict[str, str]:
    """The headers GitHub sends with a webhook delivery (see
    fixtures/github-rest/webhook-delivery.md), signed with `secret` unless it is None."""
    headers = {
        "x-github-event": event,
        "x-github-delivery": delivery or str(uuid.uuid4()),
        "x-github-hook-id": "292430182",
        "x-github-hook-installation-target-id": "79929171",
        "x-github-hook-installation-target-type": "integration",
        "user-agent": "GitHub-Hookshot/044aadd",
        "content-type": "application/json",
    }
    if secret is not None:
        headers["x-hub-signature-256"] = sign(secret.encode(), body)
    return headers


def start_serve(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], str | None]:
    """`routined serve` on a free port (with `args`), and the URL it says it serves at
    (None, when the first line it printed says something else)."""
    process = subprocess.Popen(
        [ROUTINED, "serve", "--port", "0", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    found = re.search(r"serving at (http://\S+)", process.stdout.readline())
    return process, found.group(1) if found else None


@contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[str]:
    """`routined serve` on a free port (with `args`); its URL once it listens."""
    process, url = start_serve(env, *args)
    try:
        assert url, "serve did not say where it serves"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
