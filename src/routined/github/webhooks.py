"""`POST /webhooks/github`: verify, record, answer; deciding comes after the answer.

GitHub gives a receiver 10 seconds. This one checks the signature as the body
arrives, before it parses a byte (a delivery without one is refused before its body
is read), then parses and records the delivery in one short transaction (a
redelivery finds its first row and only counts), and answers 202; `routined.github.matcher`
decides what the delivery starts, in the background. A delivery with a bad or missing
signature leaves nothing behind but a counter; nor does a signed body that is not
JSON the matcher can walk and the store can hold (too deep, or with a lone surrogate:
see `jsonbody.parse_json`). The bytes of bodies being received count against
the server's budget of bodies in flight (`http.app.BodyBudget`): a forger cannot make it
hold more than that, however many bodies it leaves unfinished.
"""

from __future__ import annotations

import hashlib
import hmac
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert, ReturningInsert

from routined import jsonbody
from routined.config import Settings
from routined.db import GroupCommit, Store, table_of
from routined.http import management
from routined.http.problem import Problem
from routined.models import Counter, WebhookDelivery

MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB and does not send larger ones
BAD_SIGNATURES = "github.bad_signatures"
# What is kept of a delivery's headers: enough to tell where it came from and why.
HEADERS_OF_RECORD = (
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-github-hook-installation-target-id",
    "x-github-hook-installation-target-type",
    "user-agent",
    "content-type",
)


def claimed_digest(signature: str | None) -> str | None:
    """The HMAC-SHA256 that X-Hub-Signature-256 claims, as 64 lower-case hex digits,
    or None when the header is missing or not of that form (a SHA-1 one, say)."""
    if not signature or not signature.startswith("sha256="):
        return None
    digest = signature.removeprefix("sha256=").strip().lower()
    # ASCII hex only: compare_digest refuses (raises on) text that is not ASCII.
    if len(digest) != 64 or not all(c in string.hexdigits for c in digest):
        return None
    return digest


async def signed_body(request: Request, secret: bytes, digest: str) -> bytes | None:
    """The body, if its HMAC-SHA256 under `secret` is `digest`; computed as the body
    arrives, so that a forged one is dropped the moment it ends."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    parts: list[bytes] = []
    async for part in request.stream():  # at most MAX_BODY, within the budget: http.app._Guard
        mac.update(part)
        parts.append(part)
    if not hmac.compare_digest(mac.hexdigest(), digest):
        return None
    return b"".join(parts)


def sign(secret: bytes, body: bytes) -> str:
    """The X-Hub-Signature-256 GitHub would send with `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Received:
    """A verified delivery, parsed only as far as recording it needs."""

    id: str
    event: str
    action: str | None
    repository: str | None
    installation_id: int | None
    headers: dict[str, str]
    body: str
    at: datetime

    def row(self) -> dict[str, Any]:
        """The `deliveries` row it is recorded as, on its first arrival."""
        return {
            "id": self.id,
            "event": self.event,
            "action": self.action,
            "repository": self.repository,
            "installation_id": self.installation_id,
            "headers": self.headers,
            "body": self.body,
            "received_at": self.at,
            "attempts": 1,
            "last_received_at": self.at,
        }

    @classmethod
    def parse(cls, headers: dict[str, str], body: bytes, *, at: datetime) -> Received:
        event = headers.get("x-github-event", "").strip()
        delivery = headers.get("x-github-delivery", "").strip()
        if not event or not delivery or len(delivery) > 64 or len(event) > 60:
            raise Problem(400, "send X-GitHub-Event and X-GitHub-Delivery (at most 64 characters)")
        try:
            text = body.decode()
            # A body the matcher could not walk, or a string no store or model request
            # can encode, is refused here: it never reaches the store.
            payload = jsonbody.parse_json(text)
        except jsonbody.UnfitJson as error:
            raise Problem(400, str(error)) from None
        except ValueError:
            raise Problem(
                400, "the body is not JSON; set the webhook's content type to application/json"
            ) from None
        if not isinstance(payload, dict):
            raise Problem(400, "the body is not a JSON object")
        if "\x00" in event or "\x00" in delivery:
            raise Problem(400, "X-GitHub-Event and X-GitHub-Delivery cannot hold NUL")
        action = payload.get("action")
        repository = payload.get("repository")
        installation = payload.get("installation")
        full_name = repository.get("full_name") if isinstance(repository, dict) else None
        installation_id = installation.get("id") if isinstance(installation, dict) else None
        return cls(
            id=delivery,
            event=event,
            action=_text(action, 60),
            repository=_text(full_name, 200),
            installation_id=installation_id if isinstance(installation_id, int) else None,
            headers={name: headers[name] for name in HEADERS_OF_RECORD if name in headers},
            body=text,
            at=at,
        )


@dataclass(frozen=True)
class Verified:
    """A delivery whose signature matched, not yet parsed."""

    headers: dict[str, str]
    body: bytes
    at: datetime


def record(store: Store, batch: list[Verified]) -> list[tuple[str, bool] | Exception]:
    """Parse verified deliveries (here, in the writer's thread, not on the event loop:
    a body may have 25 MB) and record them in one transaction. For each: its id and
    whether it is new (a redelivery only counts), or the problem that refuses it."""
    parsed: list[Received | Exception] = []
    for verified in batch:
        try:
            parsed.append(Received.parse(verified.headers, verified.body, at=verified.at))
        except Problem as problem:
            parsed.append(problem)
    statement = _record_statement(store.engine.dialect.name)
    with store.transaction() as session:
        return [
            received
            if isinstance(received, Exception)
            else (received.id, session.scalar(statement, received.row()) == 1)
            for received in parsed
        ]


@cache
def _record_statement(dialect_name: str) -> ReturningInsert[int]:
    insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    table = table_of(WebhookDelivery)
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=[table.c.id],
        set_={
            "attempts": table.c.attempts + 1,
            "last_received_at": statement.excluded.last_received_at,
        },
    ).returning(table.c.attempts)


def count_bad_signature(store: Store) -> None:
    """One more refused signature, counted by an upsert: refusals arriving together
    each count, and none fails on the counter's first row."""
    with store.transaction() as session:
        session.execute(_count_statement(store.engine.dialect.name), {"name": BAD_SIGNATURES})


@cache
def _count_statement(dialect_name: str) -> Insert:
    insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    table = table_of(Counter)
    statement = insert(table).values(name=bindparam("name"), value=1)
    return statement.on_conflict_do_update(
        index_elements=[table.c.name], set_={"value": table.c.value + 1}
    )


def router(
    store: Store,
    settings: Settings,
    *,
    clock: Callable[[], datetime],
    on_delivery: Callable[[], None] = lambda: None,
) -> APIRouter:
    webhooks = APIRouter()
    # Deliveries arriving together are recorded in one transaction (see GroupCommit).
    recorder: GroupCommit[Verified, tuple[str, bool]] = GroupCommit(
        lambda batch: record(store, batch)
    )

    @webhooks.post(
        "/webhooks/github",
        status_code=202,
        tags=["webhooks"],
        summary="Receive a GitHub App webhook delivery",
        responses=management.error_responses(400, 401, 413, 503),
    )
    async def github(request: Request) -> Any:
        secret = settings.github_webhook_secret.reveal().encode()
        if not secret:
            raise Problem(
                503, "GitHub webhooks are off: set ROUTINED_GITHUB_WEBHOOK_SECRET to the app's"
            )
        digest = claimed_digest(request.headers.get("x-hub-signature-256"))
        body = None if digest is None else await signed_body(request, secret, digest)
        if body is None:
            await anyio.to_thread.run_sync(count_bad_signature, store)
            raise Problem(
                401,
                "X-Hub-Signature-256 does not match the body and the secret",
                # Unsigned, its body is not read: the connection goes with it.
                headers={"connection": "close"} if digest is None else None,
            )
        delivery, first = await recorder.submit(Verified(dict(request.headers), body, clock()))
        if first:
            on_delivery()
        return JSONResponse(
            {"delivery": delivery, "status": "received" if first else "duplicate"},
            status_code=202,
        )

    return webhooks


def _text(value: Any, longest: int) -> str | None:
    """A payload string fit for a column: cut to size, without NULs (PostgreSQL's text
    cannot hold them; GitHub's names never have them)."""
    return value.replace("\x00", "")[:longest] if isinstance(value, str) else None
