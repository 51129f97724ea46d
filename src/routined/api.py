"""HTTP surface: the Anthropic-compatible fire endpoint and the session pages.

Handlers check what they can without the store, then record rows in one short
transaction and answer; workers do the slow work. Everything under `/v1/`
answers errors in Anthropic's envelope:
`{"type": "error", "error": {"type": "…", "message": "…"}}`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from routined import fires, runs, tokens
from routined.config import Settings
from routined.db import Store
from routined.ids import new_id
from routined.models import Routine, Run, Trigger

ANTHROPIC_VERSION = "2023-06-01"
ACCEPTED_BETAS = ("experimental-cc-routine-2026-04-01",)
MAX_TEXT = 65_536
# Room for the longest text with every character escaped, and then some; a
# bigger body is refused before it is read.
MAX_BODY = 1_048_576

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
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
) -> FastAPI:
    app = FastAPI(title="routined", version="0.1.0", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        if request.url.path.startswith("/v1/"):
            response.headers["request-id"] = new_id("req")
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return envelope(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if request.url.path.startswith("/v1/"):
            message = {404: "no such endpoint", 405: f"{request.method} is not allowed here"}
            return envelope(error.status_code, message.get(error.status_code, str(error.detail)))
        return JSONResponse({"detail": error.detail}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return envelope(400, "invalid request")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return envelope(500, "internal error; the server log has the details")

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/claude_code/routines/{trigger_id}/fire")
    async def fire(trigger_id: str, request: Request) -> dict[str, str]:
        _check_versions(request)
        token = _bearer_token(request)
        text = _fire_text(await _body(request))
        session_id = await anyio.to_thread.run_sync(
            _record_fire, store, trigger_id, token, text, clock()
        )
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

    return app


def _check_versions(request: Request) -> None:
    version = request.headers.get("anthropic-version")
    if version != ANTHROPIC_VERSION:
        shown = "missing" if version is None else f"{version!r}"
        raise ApiError(
            400, f"anthropic-version: {shown}; send anthropic-version: {ANTHROPIC_VERSION}"
        )
    betas = [b.strip() for b in request.headers.get("anthropic-beta", "").split(",") if b.strip()]
    if not any(beta in ACCEPTED_BETAS for beta in betas):
        shown = "missing" if not betas else ", ".join(repr(b) for b in betas)
        accepted = ", ".join(ACCEPTED_BETAS)
        raise ApiError(400, f"anthropic-beta: {shown}; send anthropic-beta with one of: {accepted}")


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


def _record_fire(store: Store, trigger_id: str, token: str, text: str | None, now: datetime) -> str:
    with store.transaction() as session:
        trigger = session.get(Trigger, trigger_id)
        if trigger is None or trigger.type != "api":
            raise ApiError(404, f"no API trigger {trigger_id}")
        if not tokens.verify(session, trigger_id, token):
            raise ApiError(401, "invalid token for this trigger")
        routine = session.get(Routine, trigger.routine_id)
        assert routine is not None
        if routine.paused_at is None:
            reason = f"fired over the API through trigger {trigger.id}"
            run = runs.create(
                session,
                routine,
                trigger_type="api",
                trigger_id=trigger.id,
                text=text,
                now=now,
                reason=reason,
            )
            outcome, run_id, session_id = fires.Outcome.FIRED, run.id, run.session_id
        else:
            reason = (
                f"routine {routine.name} is paused; resume it (routined resume "
                f"{routine.name}) to fire it"
            )
            outcome, run_id, session_id = fires.Outcome.REFUSED, None, None
        # The refusal is recorded too: it answers "why did my call not run?".
        fires.record(
            session,
            routine_id=routine.id,
            trigger_id=trigger.id,
            trigger_type="api",
            outcome=outcome,
            reason=reason,
            now=now,
            run_id=run_id,
        )
    if session_id is None:
        raise ApiError(400, reason)
    return session_id


def _session(store: Store, session_id: str, public_url: str) -> dict[str, Any] | None:
    with store.transaction(readonly=True) as session:
        row = session.execute(runs.with_routine_name().where(Run.session_id == session_id)).first()
        if row is None:
            return None
        return runs.summary(row[0], row[1], public_url=public_url)
