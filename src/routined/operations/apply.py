"""Applying a routines document (`routined apply`, `POST /routines`): each routine
created or updated by name, as far as the caller may; what an account's key may put
in its routines is `tenancy`'s to say."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from routined.api_keys import Principal, Scope
from routined.config import Settings
from routined.operations.access import require
from routined.operations.tenancy import for_principal
from routined.routines.apply import apply
from routined.routines.load import parse_document
from routined.sandbox import resources


def apply_routines(
    session: Session, principal: Principal, document: Any, *, settings: Settings, now: datetime
) -> list[dict[str, Any]]:
    """Create or update the document's routines by name, as `routined apply` does."""
    require(principal, Scope.WRITE)
    # What the document gets wrong is a `routines.spec.SpecError`: bad input, said as it is.
    spec = parse_document(
        document,
        source="request",
        base=None,
        now=now,
        timezone=settings.timezone,
        min_interval=timedelta(seconds=settings.min_schedule_interval),
    )
    spec = for_principal(
        session,
        principal,
        spec,
        allowed=settings.allow_private_networks,
        caps=resources.Caps.of(settings, {}),
    )
    changes = apply(session, spec, now=now, public_only=not principal.operator)
    return [
        {
            "name": c.name,
            "action": c.action,
            "details": c.details,
            "warnings": c.warnings,
            "description": c.describe(),
        }
        for c in changes
    ]
