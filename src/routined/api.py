"""HTTP surface: the Anthropic-compatible fire endpoint and the session pages.

Handlers check what they can without the store, then record rows in one short
transaction and answer; workers do the slow work. Everything under `/v1/`
answers errors in Anthropic's envelope:
`{"type": "error", "error": {"type": "…", "message": "…"}}`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from routined import __version__, fires, management, runs, tokens
from routined import limits as limits_
from routined.config import Settings
from routined.db import Store, count_up_to
from routined.ids import new_id
from routined.keys import Principal
from routined.limits import Limits
from routined.manage import Problem
from routined.models import Account, IdempotencyKey, Routine, Run, Trigger

ANTHROPIC_VERSION = "2023-06-01"
MAX_IDEMPOTENCY_KEY = 255
IDEMPOTENCY_WINDOW = timedelta(hours=24)
OVERLOADED_RETRY_AFTER = 5  # seconds; workers take queued runs in about that
MAX_TEXT = 65_536
# Room for the longest text with every character escaped, and then some; a
# bigger body is refused before it is read.
MAX_BODY = 1_048_576

# Paths whose answers carry a request-id and whose errors come in the envelope.
_ENVELOPED = ("/v1/", "/api/")

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def envelope(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {
            "type": "error",
            "error": {"type": _STATUS_TYPES.get(status, "api_error"), "message": message},
        },
        status_code=status,
        headers=headers,
    )


def create_app(
    store: Store,
    settings: Settings,
    *,
    clock: Callable[[], datetime],
    on_run_created: Callable[[], None] = lambda: None,
    principal: Callable[..., Principal] | None = None,
) -> FastAPI:
    """The server's routes; `principal`, when given, answers the management API for
    whoever asks without an API key (the CLI working on the store in-process)."""
    app = FastAPI(title="routined", version=__version__, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        if request.url.path.startswith(_ENVELOPED):
            response.headers["request-id"] = new_id("req")
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return envelope(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if request.url.path.startswith(_ENVELOPED):
            message = {404: "no such endpoint", 405: f"{request.method} is not allowed here"}
            return envelope(error.status_code, message.get(error.status_code, str(error.detail)))
        return JSONResponse({"detail": error.detail}, status_code=error.status_code)

    @app.exception_handler(Problem)
    async def problem(request: Request, error: Problem) -> JSONResponse:
        return envelope(error.status, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return envelope(400, _invalid(error))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return envelope(500, "internal error; the server log has the details")

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    limits = Limits.of(settings)

    @app.post("/v1/claude_code/routines/{trigger_id}/fire")
    async def fire(trigger_id: str, request: Request) -> dict[str, str]:
        _check_versions(request, settings.accepted_betas)
        fired = FireRequest(
            trigger_id=trigger_id,
            token=_bearer_token(request),
            idempotency_key=_idempotency_key(request),
            text=_fire_text(await _body(request)),
        )
        record = functools.partial(
            _record_fire,
            store,
            fired,
            now=clock(),
            limits=limits,
            max_queued=settings.max_queued_runs,
        )
        session_id, created = await anyio.to_thread.run_sync(record)
        if created:
            on_run_created()
        return {
            "type": "routine_fire",
            "claude_code_session_id": session_id,
            "claude_code_session_url": runs.session_url(settings.public_url, session_id),
        }

    @app.get("/sessions/{session_id}")
    async def session(session_id: str) -> dict[str, Any]:
        found = await anyio.to_thread.run_sync(_session, store, session_id, settings.public_url)
        if found is None:
            raise StarletteHTTPException(404, f"no session {session_id}")
        return found

    app.include_router(
        management.router(
            store, settings, clock=clock, principal=principal, on_run_created=on_run_created
        )
    )
    return app


def _invalid(error: RequestValidationError) -> str:
    """The first problem FastAPI found, naming its field: `body.scope: Input should be…`."""
    problems = error.errors()
    if not problems:
        return "invalid request"
    first = problems[0]
    field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{field}: {first.get('msg', 'is invalid')}{more}"


def _check_versions(request: Request, accepted_betas: tuple[str, ...]) -> None:
    version = request.headers.get("anthropic-version")
    if version != ANTHROPIC_VERSION:
        shown = "missing" if version is None else f"{version!r}"
        raise ApiError(
            400, f"anthropic-version: {shown}; send anthropic-version: {ANTHROPIC_VERSION}"
        )
    betas = [b.strip() for b in request.headers.get("anthropic-beta", "").split(",") if b.strip()]
    if not any(beta in accepted_betas for beta in betas):
        shown = "missing" if not betas else ", ".join(repr(b) for b in betas)
        accepted = ", ".join(accepted_betas)
        raise ApiError(400, f"anthropic-beta: {shown}; send anthropic-beta with one of: {accepted}")


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable() or not key.isascii():
        raise ApiError(
            400,
            f"Idempotency-Key: give 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, "
            "such as a UUID",
        )
    return key


def _bearer_token(request: Request) -> str:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise ApiError(401, "send the trigger's token as Authorization: Bearer <token>")
    token = credentials.strip()
    if tokens.lookup_part(token) is None:
        raise ApiError(401, "invalid token for this trigger")
    return token


async def _body(request: Request) -> bytes:
    """The body, refused as soon as it is known to be too big (declared or sent)."""
    too_big = ApiError(413, f"the body is over {MAX_BODY} bytes; text may have 65,536 characters")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_big
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > MAX_BODY:
            raise too_big
    return bytes(received)


def _fire_text(body: bytes) -> str | None:
    if not body.strip():
        return None
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, 'the body is not valid JSON; send {"text": "…"} or no body') from None
    if not isinstance(payload, dict):
        raise ApiError(400, 'the body must be a JSON object such as {"text": "…"}')
    text = payload.get("text")
    if text is None:
        return None
    if not isinstance(text, str):
        raise ApiError(400, f"text: must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise ApiError(400, f"text: {len(text)} characters is over the limit of {MAX_TEXT}")
    return text


@dataclass(frozen=True)
class FireRequest:
    trigger_id: str
    token: str
    text: str | None
    idempotency_key: str | None


def _record_fire(
    store: Store, request: FireRequest, *, now: datetime, limits: Limits, max_queued: int
) -> tuple[str, bool]:
    """Record the fire: the session it started (or started before), and whether it is new.

    A refusal is recorded too, with its reason, and then raised: it answers
    "why did my call not start a run?" in `routined events`.
    """
    with store.transaction() as session:
        trigger = session.get(Trigger, request.trigger_id)
        if trigger is None or trigger.type != "api":
            raise ApiError(404, f"no API trigger {request.trigger_id}")
        if not tokens.verify(session, trigger.id, request.token):
            raise ApiError(401, "invalid token for this trigger")
        routine = session.get_one(Routine, trigger.routine_id)
        account = limits_.hold_account(session, routine)
        if request.idempotency_key is not None:
            # A retry is answered with its first session, whatever would refuse a
            # new fire now: its run exists, and the caller must learn that.
            earlier = _earlier_fire(session, trigger.id, request.idempotency_key, now)
            if earlier is not None:
                return earlier, False
        refusal = _refusal(routine, account) or _overloaded(session, max_queued)
        if refusal is None:
            verdict = limits_.check(session, routine, account, "api", limits=limits, now=now)
            if not verdict.allowed:
                headers = {"retry-after": str(verdict.retry_after)}
                refusal = ApiError(429, verdict.reason, headers=headers)
        run = None
        if refusal is not None:
            reason = f"{refusal.status}: {refusal.message}"
        else:
            reason = f"fired over the API through trigger {trigger.id}"
            if verdict.reason:
                reason += f"; {verdict.reason}"
            run = runs.create(
                session,
                routine,
                trigger_type="api",
                trigger_id=trigger.id,
                text=request.text,
                now=now,
                reason=reason,
            )
            session.flush()  # the decision row refers to it
        fires.record(
            session,
            routine_id=routine.id,
            trigger_id=trigger.id,
            trigger_type="api",
            outcome=fires.Outcome.REFUSED if run is None else fires.Outcome.FIRED,
            reason=reason,
            now=now,
            run_id=None if run is None else run.id,
        )
        if run is not None:
            if request.idempotency_key is not None:
                session.add(
                    IdempotencyKey(
                        trigger_id=trigger.id,
                        key=request.idempotency_key,
                        run_id=run.id,
                        created_at=now,
                    )
                )
            return run.session_id, True
    assert refusal is not None  # no run: something refused it
    raise refusal


def _refusal(routine: Routine, account: Account) -> ApiError | None:
    if account.disabled_at is not None:
        return ApiError(403, f"account {account.name} is disabled; its routines cannot be fired")
    if routine.paused_at is not None:
        return ApiError(
            400,
            f"routine {routine.name} is paused; resume it (routined resume {routine.name}) "
            "to fire it",
        )
    return None


def _overloaded(session: Session, max_queued: int) -> ApiError | None:
    queued = select(Run.id).where(Run.status == runs.RunStatus.QUEUED)
    if count_up_to(session, queued, max_queued) >= max_queued:
        return ApiError(
            503,
            "the server's run queue is full (ROUTINED_MAX_QUEUED_RUNS); try again shortly",
            headers={"retry-after": str(OVERLOADED_RETRY_AFTER)},
        )
    return None


def _earlier_fire(session: Session, trigger_id: str, key: str, now: datetime) -> str | None:
    """The session an earlier fire with this key started, if it is less than a day old."""
    earlier = session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.trigger_id == trigger_id, IdempotencyKey.key == key
        )
    )
    if earlier is None:
        return None
    if now - earlier.created_at >= IDEMPOTENCY_WINDOW:
        session.delete(earlier)
        session.flush()  # the key is free for this fire
        return None
    return session.scalar(select(Run.session_id).where(Run.id == earlier.run_id))


def _session(store: Store, session_id: str, public_url: str) -> dict[str, Any] | None:
    with store.transaction(readonly=True) as session:
        row = session.execute(runs.with_routine_name().where(Run.session_id == session_id)).first()
        if row is None:
            return None
        return runs.summary(row[0], row[1], public_url=public_url)
