"""The HTTP app: its routes (the fire endpoint, the session pages, GitHub's webhooks, the
management API), the one error envelope, and the bounds on request bodies.

Handlers check what they can without the store, then record rows in one short
transaction and answer; workers do the slow work. Everything under `/v1/`
answers errors in Anthropic's envelope:
`{"type": "error", "error": {"type": "…", "message": "…"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from routined import __version__, jsonbody, runs
from routined.api_keys import Principal
from routined.config import Settings
from routined.db import Store
from routined.errors import RoutinedError
from routined.github import webhooks
from routined.http import fire, management
from routined.http.problem import ANSWERED, Problem, problem_of
from routined.ids import new_id
from routined.models import Run
from routined.views import run_view

log = logging.getLogger(__name__)

# Room for the longest text with every character escaped, and then some; a
# bigger body is refused before it is read.
MAX_BODY = 1_048_576
# Bytes of request bodies held at once, all requests together (see `BodyBudget`):
# five of GitHub's largest deliveries, or a hundred of the largest other bodies.
BODIES_IN_FLIGHT = 128 * 1024 * 1024
BODY_WAIT = 5.0  # seconds a body waits for room before it is refused with 503
BODY_RETRY_AFTER = 5  # seconds; a stalled body is dropped in about 10 (http.server._BoundedHttp)

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


def envelope(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
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
    on_delivery: Callable[[], None] = lambda: None,
    principal: Callable[..., Principal] | None = None,
) -> FastAPI:
    """The server's routes; `principal`, when given, answers the management API for
    whoever asks without an API key (the CLI working on the store in-process)."""
    app = FastAPI(title="routined", version=__version__, docs_url=None, redoc_url=None)

    app.add_middleware(_Guard, budget=BodyBudget(BODIES_IN_FLIGHT))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if request.url.path.startswith((*_ENVELOPED, "/webhooks/")):
            message = {404: "no such endpoint", 405: f"{request.method} is not allowed here"}
            return envelope(
                error.status_code,
                message.get(error.status_code, str(error.detail)),
                error.headers,
            )
        return JSONResponse(
            {"detail": error.detail}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(ClientDisconnect)
    async def hung_up(request: Request, error: ClientDisconnect) -> Response:
        # The caller left (or was dropped for sending too slowly) before its body
        # ended: nobody reads an answer, and nothing went wrong here worth a traceback.
        return Response(status_code=400)

    @app.exception_handler(Problem)
    async def problem(request: Request, error: Problem) -> JSONResponse:
        return envelope(error.status, error.message, error.headers)

    async def routined_error(request: Request, error: RoutinedError) -> JSONResponse:
        return await problem(request, problem_of(error))

    for kind in ANSWERED:  # each kind as `problem_of` answers it; any other, as a bug
        app.exception_handler(kind)(routined_error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return envelope(400, _invalid(error))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return envelope(500, "internal error; the server log has the details")

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/sessions/{session_id}", responses={404: {"description": "No such session."}})
    async def session(session_id: str) -> dict[str, Any]:
        found = await anyio.to_thread.run_sync(_session, store, session_id, settings.public_url)
        if found is None:
            raise StarletteHTTPException(404, f"no session {session_id}")
        return found

    app.include_router(fire.router(store, settings, clock=clock, on_run_created=on_run_created))
    # Before the management API's many routes: GitHub's deliveries find theirs first.
    app.include_router(webhooks.router(store, settings, clock=clock, on_delivery=on_delivery))
    app.include_router(
        management.router(
            store, settings, clock=clock, principal=principal, on_run_created=on_run_created
        )
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The description, as the server answers: bad input is 400 in the envelope (not
    FastAPI's 422), and trigger tokens are a security scheme of their own."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path in schema["paths"].values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.setdefault("components", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(unused, None)
        components.setdefault("securitySchemes", {})["TriggerToken"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "The trigger's token, `rtd_…` (routined token ROUTINE).",
        }
        app.openapi_schema = schema
    return app.openapi_schema


# The most a request body may have, by path: a fire's text (65,536 characters, each
# possibly escaped) and management bodies fit in 1 MB; GitHub sends up to 25 MB.
_BODY_LIMITS = (("/v1/", MAX_BODY), ("/api/", MAX_BODY), ("/webhooks/", webhooks.MAX_BODY))


class _Guard:
    """Plain ASGI (starlette's BaseHTTPMiddleware costs a task group on every body
    read): a body over its path's limit is refused with 413 as soon as that is known,
    declared or sent, before a handler reads it; a body is read only once the budget of
    bodies in flight has room for it (503 when it has none for BODY_WAIT), and held
    against that budget until its request is answered; answers on /v1/ and /api/ carry
    a `request-id`."""

    def __init__(self, app: ASGIApp, budget: BodyBudget) -> None:
        self.app = app
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(_ENVELOPED):
            send = _with_request_id(send)
        limit = next((most for prefix, most in _BODY_LIMITS if path.startswith(prefix)), None)
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await envelope(413, f"the body is over {limit} bytes")(scope, receive, send)
            return
        body = _Body(receive, limit, int(declared) if declared.isdigit() else None, self.budget)
        try:
            await self.app(scope, body.receive, send)
        finally:
            self.budget.give(body.held)


class BodyBudget:
    """Bytes of request bodies the server holds at once, all requests together: a
    body stalled one byte short of its end costs what it has sent, and many of them
    would otherwise hold as much memory as they like. Whoever finds room goes first:
    a small body need not wait behind a large one."""

    def __init__(self, total: int) -> None:
        self.free = total
        self._waiting: list[asyncio.Future[None]] = []

    async def take(self, size: int, *, within: float) -> bool:
        """Take `size` bytes, waiting up to `within` seconds for them; whether taken."""
        try:
            async with asyncio.timeout(within):
                while size > self.free:
                    room = asyncio.get_running_loop().create_future()
                    self._waiting.append(room)
                    try:
                        await room
                    finally:
                        with contextlib.suppress(ValueError):  # gone, if `give` woke it
                            self._waiting.remove(room)
        except TimeoutError:
            return False
        self.free -= size
        return True

    def give(self, size: int) -> None:
        if not size:
            return
        self.free += size
        waiting, self._waiting = self._waiting, []
        for room in waiting:
            if not room.done():
                room.set_result(None)


class _Body:
    """A request's `receive` as its handler sees it: 413 past `limit` bytes, and the
    bytes taken from the budget before they are read (all that is declared at the
    first read; for a body without Content-Length, each part as it comes)."""

    def __init__(self, receive: Receive, limit: int, declared: int | None, budget: BodyBudget):
        self._receive = receive
        self._limit = limit
        self._declared = declared
        self._budget = budget
        self.received = 0
        self.held = 0  # taken from the budget; given back when the request is answered

    async def receive(self) -> Message:
        if self._declared and not self.held:
            await self._take(self._declared)
        message = await self._receive()
        self.received += len(message.get("body", b""))
        if self.received > self._limit:
            # An HTTPException: FastAPI turns others raised while it reads a body into 400.
            raise StarletteHTTPException(413, f"the body is over {self._limit} bytes")
        if self.received > self.held:
            await self._take(self.received - self.held)
        return message

    async def _take(self, size: int) -> None:
        if not await self._budget.take(size, within=BODY_WAIT):
            raise StarletteHTTPException(
                503,
                "the server holds as many request bodies as it may; try again shortly",
                # Closed: the rest of a body nobody will read is not worth receiving.
                headers={"retry-after": str(BODY_RETRY_AFTER), "connection": "close"},
            )
        self.held += size


def _with_request_id(send: Send) -> Send:
    request_id = new_id("req").encode()

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"request-id", request_id)]
        await send(message)

    return sending


def _invalid(error: RequestValidationError) -> str:
    """The first problem FastAPI found, naming its field: `body.scope: Input should be…`."""
    problems = error.errors()
    if not problems:
        return "invalid request"
    first = problems[0]
    if first.get("type") == "json_invalid":
        return jsonbody.NOT_JSON
    field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{field}: {first.get('msg', 'is invalid')}{more}"


def _session(store: Store, session_id: str, public_url: str) -> dict[str, Any] | None:
    with store.transaction(readonly=True) as session:
        row = session.execute(runs.with_routine_name().where(Run.session_id == session_id)).first()
        if row is None:
            return None
        return run_view(row[0], row[1], public_url=public_url)
