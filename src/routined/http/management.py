"""The management API under `/api/v1`: `routined.operations` over HTTP, at /openapi.json.

Callers authenticate with an account's API key (`Authorization: Bearer rtdk_…`
or `x-api-key`); errors answer in the same envelope as the fire endpoint. Every
JSON body here, and the fire endpoint's and GitHub's, is read by `jsonbody.parse_json`,
which refuses what would parse but break something later. The handlers are plain
functions: FastAPI runs them on its thread pool, each in one
short transaction. (No `from __future__ import annotations` here: FastAPI reads
the handlers' annotations, and `Who` is local to `router`.)
"""

import json
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from routined import api_keys
from routined.api_keys import Principal
from routined.config import Settings
from routined.db import Store
from routined.http.problem import Problem
from routined.jsonbody import NOT_JSON, UnfitJson, parse_json
from routined.operations import (
    access,
    accounts,
    apply,
    deliveries,
    keys,
    routines,
    runs,
    secrets,
    triggers,
)
from routined.schemas import (
    AccountIn,
    AccountOut,
    AccountPatch,
    CacheClearedOut,
    CancelOut,
    ChangeOut,
    DecisionOut,
    DeliveryOut,
    ErrorOut,
    FiredOut,
    FireIn,
    KeyIn,
    KeyOut,
    NewKeyOut,
    PausedOut,
    ReplayOut,
    RevokedOut,
    RotationOut,
    RoutineOut,
    RunEventsOut,
    RunOut,
    SecretIn,
    SecretOut,
    SecretSetOut,
    TokenOut,
    TriggerOut,
    UsageOut,
)

T = TypeVar("T")


class _JsonRequest(Request):
    async def json(self) -> Any:
        try:
            return parse_json(await self.body())
        except UnfitJson as error:
            raise StarletteHTTPException(400, str(error)) from None
        except json.JSONDecodeError:
            raise  # FastAPI answers it, in `http.app._invalid`'s words
        except ValueError:
            raise StarletteHTTPException(400, NOT_JSON) from None


class _JsonRoute(APIRoute):
    """A route whose JSON body FastAPI reads through `parse_json`: what that refuses is
    a 400 in the envelope, before any handler or dependency runs (FastAPI turns any
    other error of its body parsing into a vague 400, and a lone surrogate it lets
    through to the store)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_checked(request: Request) -> Response:
            return await handle(_JsonRequest(request.scope, request.receive))

        return handle_checked


_MEANINGS = {
    400: "Bad input; the message names the field.",
    401: "No valid credentials.",
    403: "Not allowed: the key's scope, or a disabled account.",
    404: "No such object (for this key's account).",
    409: "The object is not in a state that allows this.",
    413: "The body is too big.",
    429: "A limit is reached; Retry-After says when it resets.",
    503: "The server cannot take it now; Retry-After says when to try again.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, all in the envelope."""
    return {status: {"model": ErrorOut, "description": _MEANINGS[status]} for status in statuses}


_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 429)


_BEARER = HTTPBearer(auto_error=False, description="An API key: `Bearer rtdk_…`.")
_HEADER = APIKeyHeader(name="x-api-key", auto_error=False, description="An API key, `rtdk_…`.")


def _no_nul_in_url(request: Request) -> None:
    """Names and ids never hold a NUL; one in the path or query is bad input, refused
    before a store that cannot hold it (PostgreSQL) is asked."""
    if "\x00" in request.url.path or any("\x00" in v for v in request.query_params.values()):
        raise Problem(400, "the path or query contains a NUL character (%00)")


def router(
    store: Store,
    settings: Settings,
    *,
    clock: Callable[[], datetime],
    principal: Callable[..., Principal] | None = None,
    on_run_created: Callable[[], None] = lambda: None,
) -> APIRouter:
    """The routes; `principal` replaces key authentication (the CLI on the store itself)."""

    def authenticated(
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
        header: Annotated[str | None, Depends(_HEADER)],
    ) -> Principal:
        presented = bearer.credentials.strip() if bearer else (header or "").strip()
        if not presented:
            raise Problem(
                401, "send an API key as Authorization: Bearer rtdk_… (routined key create)"
            )
        with store.transaction(readonly=True) as session:
            found = api_keys.authenticate(session, presented)
        if found is None:
            raise Problem(401, "invalid or revoked API key")
        return found

    Who = Annotated[Principal, Depends(principal or authenticated)]
    api = APIRouter(
        prefix="/api/v1",
        responses=_ERRORS,
        dependencies=[Depends(_no_nul_in_url)],
        route_class=_JsonRoute,
    )

    def read(operation: Callable[[Session], T]) -> T:
        return access.perform(store, operation, readonly=True)

    def write(operation: Callable[[Session], T]) -> T:
        return access.perform(store, operation)

    def by(who: Principal) -> str:
        return "the CLI" if who.key_id is None else f"API key {who.key_id}"

    @api.get("/accounts", response_model=list[AccountOut], tags=["accounts"])
    def list_accounts(who: Who) -> Any:
        return read(lambda s: accounts.list_accounts(s, who))

    @api.post("/accounts", response_model=AccountOut, status_code=201, tags=["accounts"])
    def create_account(who: Who, body: AccountIn) -> Any:
        return write(
            lambda s: accounts.create_account(
                s, who, name=body.name, plan=body.plan, settings=settings, now=clock()
            )
        )

    @api.get("/accounts/{name}", response_model=AccountOut, tags=["accounts"])
    def get_account(who: Who, name: str) -> Any:
        return read(lambda s: accounts.get_account(s, who, name))

    @api.patch("/accounts/{name}", response_model=AccountOut, tags=["accounts"])
    def update_account(who: Who, name: str, body: AccountPatch) -> Any:
        return write(
            lambda s: accounts.update_account(
                s,
                who,
                name,
                plan=body.plan,
                extra_usage=body.extra_usage,
                disabled=body.disabled,
                settings=settings,
                now=clock(),
            )
        )

    @api.get("/accounts/{account}/secrets", response_model=list[SecretOut], tags=["secrets"])
    def list_secrets(who: Who, account: str) -> Any:
        return read(lambda s: secrets.list_secrets(s, who, account))

    @api.put(
        "/accounts/{account}/secrets/{name}",
        response_model=SecretSetOut,
        tags=["secrets"],
        summary="Store a secret, or replace its value (routined secret set)",
    )
    def set_secret(who: Who, account: str, name: str, body: SecretIn) -> Any:
        return write(
            lambda s: secrets.set_secret(
                s, who, account, name, value=body.value, settings=settings, now=clock()
            )
        )

    @api.post(
        "/secrets/rotate",
        response_model=RotationOut,
        tags=["secrets"],
        summary="Encrypt every secret again under the first key (routined secret rotate)",
    )
    def rotate_secrets(who: Who) -> Any:
        return write(lambda s: secrets.rotate_secrets(s, who, settings=settings))

    @api.delete("/accounts/{account}/secrets/{name}", status_code=204, tags=["secrets"])
    def delete_secret(who: Who, account: str, name: str) -> Response:
        write(lambda s: secrets.delete_secret(s, who, account, name))
        return Response(status_code=204)

    @api.get("/usage", response_model=list[UsageOut], tags=["accounts"])
    def usage(who: Who, account: str | None = None) -> Any:
        return read(
            lambda s: accounts.usage(s, who, account=account, settings=settings, now=clock())
        )

    @api.get("/keys", response_model=list[KeyOut], tags=["keys"])
    def list_keys(who: Who, account: str | None = None) -> Any:
        return read(lambda s: keys.list_keys(s, who, account=account))

    @api.post("/keys", response_model=NewKeyOut, status_code=201, tags=["keys"])
    def create_key(who: Who, body: KeyIn) -> Any:
        return write(
            lambda s: keys.create_key(
                s, who, name=body.name, scope=body.scope, account=body.account, now=clock()
            )
        )

    @api.delete("/keys/{key_id}", status_code=204, tags=["keys"])
    def revoke_key(who: Who, key_id: str) -> Response:
        write(lambda s: keys.revoke_key(s, who, key_id, now=clock()))
        return Response(status_code=204)

    @api.get("/routines", response_model=list[RoutineOut], tags=["routines"])
    def list_routines(who: Who) -> Any:
        return read(lambda s: routines.list_routines(s, who))

    @api.put(
        "/routines",
        response_model=list[ChangeOut],
        tags=["routines"],
        summary="Create or update routines by name (routined apply)",
    )
    def apply_routines(who: Who, body: dict[str, Any]) -> Any:
        return write(lambda s: apply.apply_routines(s, who, body, settings=settings, now=clock()))

    @api.get("/routines/{name}", response_model=RoutineOut, tags=["routines"])
    def get_routine(who: Who, name: str) -> Any:
        return read(lambda s: routines.get_routine(s, who, name))

    @api.delete("/routines/{name}", status_code=204, tags=["routines"])
    def delete_routine(who: Who, name: str) -> Response:
        write(lambda s: routines.delete_routine(s, who, name))
        return Response(status_code=204)

    @api.post("/routines/{name}/pause", response_model=PausedOut, tags=["routines"])
    def pause(who: Who, name: str) -> Any:
        return write(
            lambda s: routines.set_paused(s, who, name, paused=True, settings=settings, now=clock())
        )

    @api.post("/routines/{name}/resume", response_model=PausedOut, tags=["routines"])
    def resume(who: Who, name: str) -> Any:
        return write(
            lambda s: routines.set_paused(
                s, who, name, paused=False, settings=settings, now=clock()
            )
        )

    @api.delete(
        "/routines/{name}/setup-cache",
        response_model=CacheClearedOut,
        tags=["routines"],
        summary="Remove the routine's cached setup script results (routined cache clear)",
    )
    def clear_setup_cache(who: Who, name: str) -> Any:
        folder = read(lambda s: routines.setup_cache_folder(s, who, name, settings=settings))
        return {"routine": name, "cleared": routines.clear_setup_cache(folder)}

    @api.post(
        "/routines/{name}/runs",
        response_model=FiredOut,
        status_code=201,
        tags=["runs"],
        summary="Start a run now (routined fire)",
    )
    def fire(who: Who, name: str, body: FireIn | None = None) -> Any:
        text = body.text if body else None
        started = write(
            lambda s: runs.fire_by_hand(
                s, who, name, text=text, by=by(who), settings=settings, now=clock()
            )
        )
        on_run_created()
        return started

    @api.get("/triggers", response_model=list[TriggerOut], tags=["triggers"])
    def list_triggers(who: Who, routine: str | None = None) -> Any:
        return read(lambda s: triggers.list_triggers(s, who, routine=routine))

    @api.get("/triggers/{trigger_id}", response_model=TriggerOut, tags=["triggers"])
    def get_trigger(who: Who, trigger_id: str) -> Any:
        return read(lambda s: triggers.get_trigger(s, who, trigger_id))

    @api.post("/triggers/{trigger_id}/token", response_model=TokenOut, tags=["triggers"])
    def issue_token(who: Who, trigger_id: str) -> Any:
        return write(
            lambda s: triggers.issue_token(s, who, trigger_id, settings=settings, now=clock())
        )

    @api.delete("/triggers/{trigger_id}/token", response_model=RevokedOut, tags=["triggers"])
    def revoke_token(who: Who, trigger_id: str) -> Any:
        return write(lambda s: triggers.revoke_token(s, who, trigger_id, now=clock()))

    Limit = Annotated[int, Query(ge=1, le=1000, description="How many, newest first.")]

    @api.get("/runs", response_model=list[RunOut], tags=["runs"])
    def list_runs(who: Who, routine: str | None = None, limit: Limit = 20) -> Any:
        return read(
            lambda s: runs.list_runs(s, who, routine=routine, limit=limit, settings=settings)
        )

    @api.get("/runs/{run}", response_model=RunOut, tags=["runs"])
    def get_run(who: Who, run: str) -> Any:
        return read(lambda s: runs.get_run(s, who, run, settings=settings))

    @api.post("/runs/{run}/cancel", response_model=CancelOut, tags=["runs"])
    def cancel_run(who: Who, run: str) -> Any:
        return write(lambda s: runs.cancel_run(s, who, run, now=clock(), by=by(who)))

    @api.get("/runs/{run}/events", response_model=RunEventsOut, tags=["runs"])
    def run_events(
        who: Who,
        run: str,
        after: Annotated[
            int, Query(ge=0, le=2**31 - 1, description="Only events after this seq.")
        ] = 0,
    ) -> Any:
        return read(lambda s: runs.run_events(s, who, run, after=after))

    @api.get("/events", response_model=list[DecisionOut], tags=["events"])
    def fire_decisions(who: Who, routine: str | None = None, limit: Limit = 50) -> Any:
        return read(lambda s: runs.fire_decisions(s, who, routine=routine, limit=limit))

    @api.get("/deliveries", response_model=list[DeliveryOut], tags=["github"])
    def list_deliveries(who: Who, limit: Limit = 50) -> Any:
        return read(lambda s: deliveries.list_deliveries(s, who, limit=limit))

    @api.get("/deliveries/{delivery_id}", response_model=DeliveryOut, tags=["github"])
    def get_delivery(who: Who, delivery_id: str) -> Any:
        return read(lambda s: deliveries.get_delivery(s, who, delivery_id))

    @api.get(
        "/deliveries/{delivery_id}/replay",
        response_model=ReplayOut,
        tags=["github"],
        summary="What a stored delivery would do against today's routines",
    )
    def replay_delivery(who: Who, delivery_id: str) -> Any:
        return read(
            lambda s: deliveries.replay_delivery(
                s, who, delivery_id, settings=settings, now=clock()
            )
        )

    return api
