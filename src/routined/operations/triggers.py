"""Triggers and their tokens: listed and shown with their next instants, and an API
trigger's token issued (shown once) or revoked."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from routined import trigger_tokens
from routined.api_keys import Principal, Scope
from routined.config import Settings
from routined.errors import BadInput
from routined.operations.access import find_routine, find_trigger, require, routines_of
from routined.views import routine_view


def list_triggers(
    session: Session, principal: Principal, *, routine: str | None = None
) -> list[dict[str, Any]]:
    found = (
        [find_routine(session, principal, routine)]
        if routine is not None
        else routines_of(session, principal)
    )
    return [
        trigger for r in found for trigger in routine_view(session, r, next_count=1)["triggers"]
    ]


def get_trigger(session: Session, principal: Principal, trigger_id: str) -> dict[str, Any]:
    trigger = find_trigger(session, principal, trigger_id)
    routine = trigger.routine
    return next(
        t for t in routine_view(session, routine, next_count=5)["triggers"] if t["id"] == trigger.id
    )


def issue_token(
    session: Session, principal: Principal, trigger_id: str, *, settings: Settings, now: datetime
) -> dict[str, Any]:
    """A new token for an API trigger (the one before stops working), shown only now."""
    require(principal, Scope.WRITE)
    trigger = find_trigger(session, principal, trigger_id)
    if trigger.type != "api":
        raise BadInput(
            f"trigger {trigger_id} is a {trigger.type} trigger; only API triggers have tokens"
        )
    secret = trigger_tokens.issue(session, trigger.id, now=now)
    return {
        "trigger_id": trigger.id,
        "routine": trigger.routine.name,
        "token": secret,
        "url": f"{settings.public_url}/v1/claude_code/routines/{trigger.id}/fire",
    }


def revoke_token(
    session: Session, principal: Principal, trigger_id: str, *, now: datetime
) -> dict[str, Any]:
    require(principal, Scope.WRITE)
    trigger = find_trigger(session, principal, trigger_id)
    return {
        "trigger_id": trigger.id,
        "revoked": trigger_tokens.revoke(session, trigger.id, now=now) > 0,
    }
