"""The fire endpoint, `POST /v1/claude_code/routines/{trigger}/fire`, as the hosted
product answers it: the headers it checks, the body it reads, the answer it gives.
Deciding and recording the fire is `routined.api_fires`'."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from routined import admission, api_fires, jsonbody, runs, trigger_tokens
from routined.api_fires import FireRequest
from routined.config import Settings
from routined.db import GroupCommit, Store
from routined.errors import Refused, RoutinedError
from routined.http import management
from routined.http.problem import Problem, problem_of
from routined.limits import Limits

ANTHROPIC_VERSION = "2023-06-01"
MAX_IDEMPOTENCY_KEY = 255
# What routined.ids makes for a trigger: `trig_` and 26 characters of Crockford's
# base 32. Anything else is no trigger, and is answered so before a query.
_TRIGGER_ID = re.compile(r"trig_[0-9A-HJKMNP-TV-Z]{26}")


def router(
    store: Store,
    settings: Settings,
    *,
    clock: Callable[[], datetime],
    on_run_created: Callable[[], None],
) -> APIRouter:
    router = APIRouter()
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

    @router.post(
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
            raise api_fires.no_trigger(trigger_id)  # as an unknown one is, without asking the store
        session_id = await recorder.submit(fired)
        # A response as is: FastAPI would check it against FireOut again, on every fire.
        return JSONResponse(
            {
                "type": "routine_fire",
                "claude_code_session_id": session_id,
                "claude_code_session_url": runs.session_url(settings.public_url, session_id),
            }
        )

    return router


def _record_fires(
    store: Store,
    requests: list[FireRequest],
    *,
    limits: Limits,
    max_queued: int,
    on_run_created: Callable[[], None],
) -> list[str | Exception]:
    """`api_fires.record`, each refusal or failure as the caller is answered."""
    answers = api_fires.record(
        store,
        requests,
        bounds=admission.Bounds(limits=limits, max_queued=max_queued),
        on_run_created=on_run_created,
        refusal_reason=_refusal_reason,
    )
    return [problem_of(a) if isinstance(a, RoutinedError) else a for a in answers]


def _refusal_reason(refused: Refused) -> str:
    """A refused fire's recorded reason: what its caller was answered, status first."""
    problem = problem_of(refused)
    return f"{problem.status}: {problem.message}"


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
    if trigger_tokens.lookup_part(token) is None:
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
