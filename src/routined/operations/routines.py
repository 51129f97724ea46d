"""Routines: listed, shown, deleted, paused and resumed, and their cached setup results
cleared. Applying a routines document is `operations.apply`'s.

The listings (`routined list`, `GET /routines`) import this module: what only one
operation needs is imported in it.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from routined import runs
from routined.api_keys import Principal, Scope
from routined.config import Settings
from routined.errors import Conflict
from routined.models import Routine, Run
from routined.operations.access import find_routine, require, routines_of
from routined.schedules import scheduler
from routined.views import routine_view
from routined.workspace import remove_now


def list_routines(session: Session, principal: Principal) -> list[dict[str, Any]]:
    return [routine_view(session, r, next_count=1) for r in routines_of(session, principal)]


def get_routine(session: Session, principal: Principal, name: str) -> dict[str, Any]:
    return routine_view(session, find_routine(session, principal, name), next_count=5)


def delete_routine(session: Session, principal: Principal, name: str) -> None:
    """Delete a routine with its history; refused while a run of it is active, whose
    worker would otherwise lose it mid-flight."""
    require(principal, Scope.WRITE)
    routine = find_routine(session, principal, name)
    # Held against workers' claims (they hold the routine too), so no run of it can
    # become active between the look below and the delete.
    session.execute(select(Routine.id).where(Routine.id == routine.id).with_for_update())
    active = session.scalar(
        select(Run.id).where(Run.routine_id == routine.id, Run.status.in_(runs.ACTIVE))
    )
    if active is not None:
        raise Conflict(
            f"run {active} of {name} is active; cancel it (routined cancel {active}) first"
        )
    session.delete(routine)


def set_paused(
    session: Session,
    principal: Principal,
    name: str,
    *,
    paused: bool,
    settings: Settings,
    now: datetime,
) -> dict[str, Any]:
    require(principal, Scope.WRITE)
    routine = find_routine(session, principal, name)
    changed = (routine.paused_at is None) == paused
    if changed and paused:
        routine.paused_at = now
    elif changed:
        scheduler.resume(session, routine, now=now, settings=settings)
    return {"name": routine.name, "paused": paused, "changed": changed}


def setup_cache_folder(
    session: Session, principal: Principal, name: str, *, settings: Settings
) -> Path:
    """Where the routine's cached setup results are, for `clear_setup_cache`."""
    require(principal, Scope.WRITE)
    from routined.environment import cache_folder  # the run's environment: egress and all

    return cache_folder(settings.home, find_routine(session, principal, name).id)


def clear_setup_cache(folder: Path) -> int:
    """Remove a routine's cached setup results; how many there were (one subfolder
    each; a `.partial-` one is a result still being written, not counted).

    Outside any transaction: it is file work. The folder is first renamed aside, which
    is atomic, so a run storing a result meanwhile starts a new folder rather than
    writing into one being removed.
    """
    aside = folder.with_name(f".{folder.name}.clearing-{secrets.token_hex(6)}")
    try:
        folder.rename(aside)
    except FileNotFoundError:
        return 0  # nothing cached, or another clear took it
    with os.scandir(aside) as entries:
        count = sum(
            1
            for entry in entries
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
        )
    remove_now(aside)  # cached homes keep the modes their scripts gave them
    return count
