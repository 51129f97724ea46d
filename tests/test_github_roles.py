"""The GitHub matcher in a process of its own: `routined serve --no-matcher` records
deliveries and `routined matcher` decides them, over one store."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import select

from routined.db import Store
from routined.github.webhooks import sign
from routined.models import WebhookDelivery
from tests.github_support import ROUTINED, SECRET, github_env, raw, serving

DEADLINE = 30.0


@contextmanager
def running(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [ROUTINED, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def decided(store: Store, delivery: str) -> str | None:
    """The delivery's outcome once decided (polled within a deadline), else None."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with store.transaction(readonly=True) as session:
            found = session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery))
        if found is not None and found.processed_at is not None:
            return found.outcome
        time.sleep(0.1)
    return None


def test_serve_without_its_matcher_records_and_routined_matcher_decides(tmp_path: Path) -> None:
    env = {**os.environ, **github_env(tmp_path), "ROUTINED_POLL_INTERVAL": "0.2"}
    del env["ROUTINED_PUBLIC_URL"]  # serve then prints the address it listens on
    body = raw("ping/with-app_id.payload.json")
    with serving(env, "--no-matcher") as url:
        answer = httpx.post(
            f"{url}/webhooks/github",
            content=body,
            headers={
                "x-github-event": "ping",
                "x-github-delivery": "roles-1",
                "x-hub-signature-256": sign(SECRET.encode(), body),
                "content-type": "application/json",
            },
        )
        assert answer.status_code == 202, answer.text
        store = Store(f"sqlite:///{tmp_path / 'home' / 'routined.db'}")
        try:
            with store.transaction(readonly=True) as session:
                recorded = session.get_one(WebhookDelivery, "roles-1")
                assert recorded.processed_at is None  # no matcher in the serving process
            with running(env, "matcher"):
                outcome = decided(store, "roles-1")
        finally:
            store.dispose()
    assert outcome is not None and outcome.startswith("ping from hook"), outcome
