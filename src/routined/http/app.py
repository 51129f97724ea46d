"""HTTP surface: the Anthropic-compatible fire endpoint and the session pages.

Handlers check what they can without the store, then record rows in one short
transaction and answer; workers do the slow work. Everything under `/v1/`
answers errors in Anthropic's envelope:
`{"type": "error", "error": {"type": "…", "message": "…"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Select, bindparam, insert, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from routined import __version__, admission, fires, jsonbody, runs, tokens
from routined import limits as limits_
from routined.config import Settings
from routined.db import GroupCommit, Store, rows_at_most, table_of
from routined.errors import Refused, RoutinedError
from routined.github import webhooks
from routined.http import management
from routined.http.problem import ANSWERED, Problem, problem_of
from routined.ids import new_id
from routined.keys import Principal
from routined.limits import Limits
from routined.models import Account, IdempotencyKey, Routine, Run, Trigger
from routined.views import run_view

log = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"
MAX_IDEMPOTENCY_KEY = 255
IDEMPOTENCY_WINDOW = timedelta(hours=24)
OVERLOADED_RETRY_AFTER = 5  # seconds; workers take queued runs in about that
# Room for the longest text with every character escaped, and then some; a
# bigger body is refused before it is read.
MAX_BODY = 1_048_576
# Bytes of request bodies held at once, all requests together (see `BodyBudget`):
# five of GitHub's largest deliveries, or a hundred of the largest other bodies.
BODIES_IN_FLIGHT = 128 * 1024 * 1024
BODY_WAIT = 5.0  # seconds a body waits for room before it is refused with 503
BODY_RETRY_AFTER = 5  # seconds; a stalled body is dropped in about 10 (http.server._BoundedHttp)
# What routined.ids makes for a trigger: `trig_` and 26 characters of Crockford's
# base 32. Anything else is no trigger, and is answered so before a query.
_TRIGGER_ID = re.compile(r"trig_[0-9A-HJKMNP-TV-Z]{26}")

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

    # Fires that arrive while others are being recorded are recorded together, in
    # one transaction: see `_record_fires`.
    recorder = GroupCommit(
        functools.partial(
            _record_fires,
            store,
            limits=Limits.of(settings),
            max_queued=settings.max_queued_runs,
            on_run_created=on_run_created,
        )
    )

    @app.post(
        "/v1/claude_code/routines/{trigger_id}/fire",
        response_model=FireOut,
        responses=management.error_responses(400, 401, 403, 404, 413, 429, 503),
        openapi_extra=_FIRE_OPENAPI,
        tags=["fire"],
        summary="Fire a routine's API trigger (the hosted product's call)",
    )
    async def fire(trigger_id: str, request: Request) -> JSONResponse:
        _check_versions(request, settings.accepted_betas)
        fired = FireRequest(
            trigger_id=trigger_id,
            token=_bearer_token(request),
            idempotency_key=_idempotency_key(request),
            text=_fire_text(await request.body()),
            now=clock(),
        )
        if not _TRIGGER_ID.fullmatch(trigger_id):
            raise _no_trigger(trigger_id)  # as an unknown one is, without asking the store
        session_id = await recorder.submit(fired)
        # A response as is: FastAPI would check it against FireOut again, on every fire.
        return JSONResponse(
            {
                "type": "routine_fire",
                "claude_code_session_id": session_id,
                "claude_code_session_url": runs.session_url(settings.public_url, session_id),
            }
        )

    @app.get("/sessions/{session_id}", responses={404: {"description": "No such session."}})
    async def session(session_id: str) -> dict[str, Any]:
        found = await anyio.to_thread.run_sync(_session, store, session_id, settings.public_url)
        if found is None:
            raise StarletteHTTPException(404, f"no session {session_id}")
        return found

    # Before the management API's many routes: GitHub's deliveries find theirs first.
    app.include_router(webhooks.router(store, settings, clock=clock, on_delivery=on_delivery))
    app.include_router(
        management.router(
            store, settings, clock=clock, principal=principal, on_run_created=on_run_created
        )
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


class FireOut(BaseModel):
    type: Literal["routine_fire"]
    claude_code_session_id: str
    claude_code_session_url: str


def _header(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": {"type": "string"},
        "description": description,
    }


# The fire endpoint reads its headers and body itself (to answer exactly as the
# hosted product does); this tells OpenAPI readers what it reads.
_FIRE_OPENAPI: dict[str, Any] = {
    "parameters": [
        _header("anthropic-version", f"Must be {ANTHROPIC_VERSION}.", required=True),
        _header("anthropic-beta", "One of the accepted dated versions.", required=True),
        _header("Idempotency-Key", "A retry with the same key within 24 h replays the first."),
    ],
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"text": {"type": "string", "maxLength": runs.MAX_TEXT}},
                }
            }
        },
    },
    "security": [{"TriggerToken": []}],
}


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


def _check_versions(request: Request, accepted_betas: tuple[str, ...]) -> None:
    version = request.headers.get("anthropic-version")
    if version != ANTHROPIC_VERSION:
        shown = "missing" if version is None else f"{version!r}"
        raise Problem(
            400, f"anthropic-version: {shown}; send anthropic-version: {ANTHROPIC_VERSION}"
        )
    betas = [b.strip() for b in request.headers.get("anthropic-beta", "").split(",") if b.strip()]
    if not any(beta in accepted_betas for beta in betas):
        shown = "missing" if not betas else ", ".join(repr(b) for b in betas)
        accepted = ", ".join(accepted_betas)
        raise Problem(400, f"anthropic-beta: {shown}; send anthropic-beta with one of: {accepted}")


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable() or not key.isascii():
        raise Problem(
            400,
            f"Idempotency-Key: give 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, "
            "such as a UUID",
        )
    return key


def _bearer_token(request: Request) -> str:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Problem(401, "send the trigger's token as Authorization: Bearer <token>")
    token = credentials.strip()
    if tokens.lookup_part(token) is None:
        raise Problem(401, "invalid token for this trigger")
    return token


def _fire_text(body: bytes) -> str | None:
    if not body.strip():
        return None
    try:
        payload = jsonbody.parse_json(body)
    except jsonbody.UnfitJson as error:
        raise Problem(400, str(error)) from None
    except ValueError:  # not JSON, not UTF-8, or a number of thousands of digits
        raise Problem(400, 'the body is not valid JSON; send {"text": "…"} or no body') from None
    if not isinstance(payload, dict):
        raise Problem(400, 'the body must be a JSON object such as {"text": "…"}')
    text = payload.get("text")
    if text is None:
        return None
    if not isinstance(text, str):
        raise Problem(400, f"text: must be a string, got {type(text).__name__}")
    if "\x00" in text:
        raise Problem(400, "text: contains a NUL character; remove it")
    if len(text) > runs.MAX_TEXT:
        raise Problem(400, f"text: {len(text)} characters is over the limit of {runs.MAX_TEXT}")
    return text


@dataclass(frozen=True)
class FireRequest:
    trigger_id: str
    token: str
    text: str | None
    idempotency_key: str | None
    now: datetime  # when it arrived


def _record_fires(
    store: Store,
    requests: list[FireRequest],
    *,
    limits: Limits,
    max_queued: int,
    on_run_created: Callable[[], None],
) -> list[str | Exception]:
    """Record fires, in the order they came: for each, the session it started (or
    started before, for a retry), or the error to answer with.

    A refusal is recorded too, with its reason: it answers "why did my call not
    start a run?" in `routined events`. The fires share one transaction; should it
    fail (a key another server took meanwhile, a routine removed meanwhile, a value
    the database refuses), each is recorded again on its own, so that only the fire
    concerned fails, as it would have alone: with a 500 and one line in the log.
    A store failing as a whole (unreachable, or locked past its timeout) fails them
    all at once instead: one by one, each would wait for it as long again.
    """
    try:
        answers, started = _record_batch(store, requests, limits=limits, max_queued=max_queued)
    except (OperationalError, InterfaceError) as error:
        log.error("%d fires were not recorded: %s", len(requests), _described(error))
        return [_not_recorded() for _ in requests]
    except Exception as failure:  # noqa: BLE001 - whose it is, the fires alone tell
        if len(requests) == 1:
            return [_failed_alone(requests[0], failure)]
        answers, started = [], 0
        for request in requests:
            try:
                alone, count = _record_batch(store, [request], limits=limits, max_queued=max_queued)
            except Exception as error:  # noqa: BLE001 - answered to this fire's caller alone
                alone, count = [_failed_alone(request, error)], 0
            answers += alone
            started += count
    if started:
        on_run_created()
    return answers


def _failed_alone(request: FireRequest, error: Exception) -> Problem:
    """The answer to a fire that cannot be recorded even on its own, logged once: a
    value the database (or its driver) refuses says why in a line; anything else is a
    bug, worth its traceback."""
    refused = isinstance(error, DBAPIError | UnicodeError)
    log.error(
        "a fire through trigger %r was not recorded: %s",
        request.trigger_id[:64],
        _described(error),
        exc_info=None if refused else error,
    )
    return _not_recorded()


def _described(error: Exception) -> str:
    """An error in a line: for a database's, the driver's own message, without the
    statement and its parameters (which hold token lookups) that SQLAlchemy adds."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _not_recorded() -> Problem:
    return Problem(500, "internal error; the server log has the details")


def _no_trigger(trigger_id: str) -> Problem:
    shown = trigger_id if len(trigger_id) <= 64 else trigger_id[:64] + "…"
    return Problem(404, f"no API trigger {shown}")


def _record_batch(
    store: Store, requests: list[FireRequest], *, limits: Limits, max_queued: int
) -> tuple[list[str | Exception], int]:
    """The answers, and how many runs were started."""
    with store.transaction() as session:
        batch = _FireBatch(session, requests, limits=limits, max_queued=max_queued)
        answers = [batch.decide(request) for request in requests]
        batch.write()
    return answers, len(batch.started)


class _FireBatch:
    """Fires decided in one transaction, in order, each seeing the ones before it.

    What they need is read once for all of them: the triggers with their
    routines and accounts in one statement, the accounts held until commit (fires
    racing for an account's last run take turns, also across servers sharing a
    PostgreSQL database); then whether each distinct token is live, at this
    moment: a revoked token stops working at once. Their rows are written
    together at the end, unless the store may hold enough runs to reach a cap:
    then each fire counts runs, and the rows before it are written first.
    """

    def __init__(
        self, session: Session, requests: list[FireRequest], *, limits: Limits, max_queued: int
    ) -> None:
        self.session = session
        self.bounds = admission.Bounds(limits=limits, max_queued=max_queued)
        wanted = sorted({request.trigger_id for request in requests})
        self.routines: dict[str, tuple[Trigger, Routine]] = {}
        self.accounts: dict[str, Account] = {}
        for trigger, routine, account in session.execute(_triggers_held(), {"ids": wanted}):
            self.routines[trigger.id] = (trigger, routine)
            self.accounts[account.id] = account
        self.live = {
            (trigger_id, token): tokens.verify(session, trigger_id, token)
            for trigger_id, token in {(r.trigger_id, r.token) for r in requests}
            if self._api_trigger(trigger_id) is not None
        }
        # Found once the accounts are held: no run of theirs can be added meanwhile.
        self.runs_at_most = rows_at_most(session, table_of(Run))
        self.started: list[runs.NewRun] = []  # by this batch, written or not
        self.keys: dict[tuple[str, str], str] = {}  # (trigger, key) → session, this batch's
        self.unwritten_runs: list[runs.NewRun] = []
        self.unwritten_fires: list[dict[str, Any]] = []
        self.unwritten_keys: list[dict[str, Any]] = []

    def _api_trigger(self, trigger_id: str) -> tuple[Trigger, Routine] | None:
        found = self.routines.get(trigger_id)
        return found if found is not None and found[0].type == "api" else None

    def decide(self, request: FireRequest) -> str | Exception:
        found = self._api_trigger(request.trigger_id)
        if found is None:
            return _no_trigger(request.trigger_id)
        trigger, routine = found
        if not self.live[(trigger.id, request.token)]:
            return Problem(401, "invalid token for this trigger")
        account = self.accounts[routine.account_id]
        key = request.idempotency_key
        if key is not None:
            # A retry is answered with its first session, whatever would refuse a
            # new fire now: its run exists, and the caller must learn that.
            earlier = self.keys.get((trigger.id, key)) or _earlier_fire(
                self.session, trigger.id, key, request.now
            )
            if earlier is not None:
                return earlier
        # Every run the store may hold now, this batch's included.
        at_most = self.runs_at_most + len(self.started)
        if at_most >= min(self.bounds.max_queued, self.bounds.limits.lowest_cap(account.plan)):
            self.write()  # a count may be made below: it must see this batch's runs
        admitted = admission.admit(
            self.session,
            admission.Kind.API,
            routine,
            account,
            bounds=self.bounds,
            now=request.now,
            runs_at_most=at_most,
        )
        if not admitted.admitted:
            refusal = _refused(admitted)
            self._decided(routine, trigger, request, f"{refusal.status}: {refusal.message}")
            return refusal
        reason = f"fired over the API through trigger {trigger.id}"
        if admitted.reason:
            reason += f"; {admitted.reason}"
        run = runs.new(
            routine,
            trigger_type="api",
            trigger_id=trigger.id,
            text=request.text,
            now=request.now,
            reason=reason,
        )
        self.started.append(run)
        self.unwritten_runs.append(run)
        self._decided(routine, trigger, request, reason, run)
        if key is not None:
            self.keys[(trigger.id, key)] = run.session_id
            self.unwritten_keys.append(
                {"trigger_id": trigger.id, "key": key, "run_id": run.id, "created_at": request.now}
            )
        return run.session_id

    def _decided(
        self,
        routine: Routine,
        trigger: Trigger,
        request: FireRequest,
        reason: str,
        run: runs.NewRun | None = None,
    ) -> None:
        self.unwritten_fires.append(
            fires.row(
                routine_id=routine.id,
                trigger_id=trigger.id,
                trigger_type="api",
                outcome=fires.Outcome.REFUSED if run is None else fires.Outcome.FIRED,
                reason=reason,
                now=request.now,
                run_id=None if run is None else run.id,
            )
        )

    def write(self) -> None:
        """Write the rows decided so far, runs first: the others refer to them."""
        runs.insert_all(self.session, self.unwritten_runs)
        fires.record_all(self.session, self.unwritten_fires)
        if self.unwritten_keys:
            self.session.execute(insert(table_of(IdempotencyKey)), self.unwritten_keys)
        self.unwritten_runs, self.unwritten_fires, self.unwritten_keys = [], [], []


@functools.cache
def _triggers_held() -> Select[Trigger, Routine, Account]:
    """Triggers with their routines and accounts, the accounts held until commit;
    built once: building a statement costs more than running it."""
    return limits_.holding(
        select(Trigger, Routine, Account)
        .join(Routine, Routine.id == Trigger.routine_id)
        .join(Account, Account.id == Routine.account_id)
        .where(Trigger.id.in_(bindparam("ids", expanding=True)))
    )


def _refused(admitted: admission.Admission) -> Problem:
    """How the fire endpoint answers a refusal (the decision is `admission.admit`'s,
    its status `http.problem`'s); a full queue is worth trying again shortly."""
    retry_after = (
        OVERLOADED_RETRY_AFTER
        if admitted.code is admission.Code.QUEUE_FULL
        else admitted.retry_after
    )
    return problem_of(Refused(admitted.reason, code=admitted.code, retry_after=retry_after))


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
        return run_view(row[0], row[1], public_url=public_url)
