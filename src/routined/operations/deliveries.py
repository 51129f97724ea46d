"""GitHub's webhook deliveries as a principal may see them: listed and shown with the
decisions they led to, and replayed against today's routines. An account's key sees
the deliveries its routines decided, and only those decisions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from routined.api_keys import Principal
from routined.config import Settings
from routined.errors import NotFound
from routined.github import matcher
from routined.models import Fire, Routine, WebhookDelivery
from routined.timeutil import iso
from routined.views import fire_view


def delivery_view(delivery: WebhookDelivery, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event": delivery.event,
        "action": delivery.action,
        "repository": delivery.repository,
        "installation_id": delivery.installation_id,
        "headers": delivery.headers,
        "received_at": iso(delivery.received_at),
        "attempts": delivery.attempts,
        "processed_at": iso(delivery.processed_at) if delivery.processed_at else None,
        "outcome": delivery.outcome,
        "decisions": decisions,
    }


def list_deliveries(
    session: Session, principal: Principal, *, limit: int = 50
) -> list[dict[str, Any]]:
    """GitHub deliveries, newest first, each with the decisions it led to. An account's
    key sees the deliveries its routines decided, and only those decisions."""
    statement = (
        select(WebhookDelivery)
        .order_by(WebhookDelivery.received_at.desc(), WebhookDelivery.id)
        .limit(limit)
    )
    if not _sees_all(principal):
        statement = statement.where(
            WebhookDelivery.id.in_(
                select(Fire.delivery_id)
                .join(Routine)
                .where(Routine.account_id == principal.account_id)
            )
        )
    deliveries = list(session.scalars(statement))
    return [_visible_delivery(session, principal, d) for d in deliveries]


def get_delivery(session: Session, principal: Principal, delivery_id: str) -> dict[str, Any]:
    return _visible_delivery(session, principal, _delivery(session, principal, delivery_id))


def replay_delivery(
    session: Session, principal: Principal, delivery_id: str, *, settings: Settings, now: datetime
) -> dict[str, Any]:
    """The delivery against today's routines: what it would start, and why not."""
    delivery = _delivery(session, principal, delivery_id)
    would = [
        {key: value for key, value in row.items() if key != "account_id"}
        for row in matcher.replay(session, delivery, now=now, settings=settings)
        if _sees_all(principal) or row["account_id"] == principal.account_id
    ]
    shown = _visible_delivery(session, principal, delivery)
    return {**shown, "decisions": [], "replayed_at": iso(now), "would": would}


def _visible_delivery(
    session: Session, principal: Principal, delivery: WebhookDelivery
) -> dict[str, Any]:
    """The delivery with the decisions the principal may see; for an account's key, its
    one-line outcome is told again from those alone (it names every routine)."""
    decisions = _delivery_decisions(session, principal, delivery.id)
    shown = delivery_view(delivery, decisions)
    if not _sees_all(principal):
        told = "; ".join(f"{d['routine']}: {d['outcome']}" for d in decisions)
        shown["outcome"] = f"{delivery.event} on {delivery.repository}: {told}"
    return shown


def _delivery_decisions(
    session: Session, principal: Principal, delivery_id: str
) -> list[dict[str, Any]]:
    statement = (
        select(Fire, Routine.name)
        .join(Routine)
        .where(Fire.delivery_id == delivery_id)
        .order_by(Routine.name, Fire.id)
    )
    if not _sees_all(principal):
        statement = statement.where(Routine.account_id == principal.account_id)
    return [fire_view(fire, name) for fire, name in session.execute(statement)]


def _delivery(session: Session, principal: Principal, delivery_id: str) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or not (
        _sees_all(principal) or _delivery_decisions(session, principal, delivery_id)
    ):
        raise NotFound(f"no delivery {delivery_id}; `routined events deliveries` lists them")
    return delivery


def _sees_all(principal: Principal) -> bool:
    return principal.account_id is None or principal.operator
