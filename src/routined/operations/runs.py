"""Runs: started by hand ("run now", through `admission` like every other fire),
listed, shown, cancelled and followed by their events; and the fire decisions that
say why each trigger did or did not start one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from routined import admission, fires, runs
from routined.api_keys import Principal, Scope
from routined.config import Settings
from routined.errors import BadInput, Conflict, Refused
from routined.models import Fire, Routine, Run, RunEvent
from routined.operations.access import find_routine, find_run, require
from routined.views import fire_view, run_event_view, run_view


def fire_by_hand(
    session: Session,
    principal: Principal,
    name: str,
    *,
    text: str | None,
    by: str,
    settings: Settings,
    now: datetime,
) -> dict[str, Any]:
    """Start a run now ("run now"); refused, with its reason recorded (`Refused`, which
    keeps the record), past a limit or for a disabled account (`admission`)."""
    require(principal, Scope.WRITE)
    if text is not None and len(text) > runs.MAX_TEXT:
        raise BadInput(f"text: {len(text)} characters is over the limit of {runs.MAX_TEXT}")
    routine = find_routine(session, principal, name)
    admitted = admission.admit_now(
        session, admission.Kind.MANUAL, routine, settings=settings, now=now
    )
    if not admitted.admitted:
        fires.record(
            session,
            routine_id=routine.id,
            trigger_id=None,
            trigger_type="manual",
            outcome=fires.Outcome.REFUSED,
            reason=f"a fire by hand ({by}) was refused: {admitted.reason}",
            now=now,
        )
        raise Refused(
            f"not started: {admitted.reason}",
            code=admitted.code,
            retry_after=admitted.retry_after,
        )
    reason = f"fired by hand ({by}); schedules are not affected"
    if admitted.reason:
        reason += f"; {admitted.reason}"
    run = runs.create(
        session,
        routine,
        trigger_type="manual",
        trigger_id=None,
        text=text,
        now=now,
        reason=reason,
    )
    session.flush()  # the decision row refers to it
    fires.record(
        session,
        routine_id=routine.id,
        trigger_id=None,
        trigger_type="manual",
        outcome=fires.Outcome.FIRED,
        reason=reason,
        now=now,
        run_id=run.id,
    )
    return {
        "run_id": run.id,
        "session_id": run.session_id,
        "session_url": runs.session_url(settings.public_url, run.session_id),
    }


def list_runs(
    session: Session,
    principal: Principal,
    *,
    routine: str | None = None,
    limit: int = 20,
    settings: Settings,
) -> list[dict[str, Any]]:
    statement = runs.with_routine_name().order_by(Run.created_at.desc(), Run.id.desc())
    if routine is not None:
        statement = statement.where(Run.routine_id == find_routine(session, principal, routine).id)
    elif principal.account_id is not None:
        statement = statement.where(Routine.account_id == principal.account_id)
    return [
        run_view(run, name, public_url=settings.public_url)
        for run, name in session.execute(statement.limit(limit))
    ]


def get_run(
    session: Session, principal: Principal, run: str, *, settings: Settings
) -> dict[str, Any]:
    found, name = find_run(session, principal, run)
    return run_view(found, name, public_url=settings.public_url)


def cancel_run(
    session: Session, principal: Principal, run: str, *, now: datetime, by: str
) -> dict[str, Any]:
    require(principal, Scope.WRITE)
    found, _name = find_run(session, principal, run)
    result = runs.cancel(session, found.id, now=now, reason=f"cancelled by {by}")
    if result is None:
        raise Conflict(f"run {found.id} is {found.status}; it is past cancelling")
    return {"run_id": found.id, "cancel": result}


def run_events(
    session: Session, principal: Principal, run: str, *, after: int = 0, limit: int = 1000
) -> dict[str, Any]:
    """A run's events after `after` (their `seq`), and its status now, for following it."""
    found, _name = find_run(session, principal, run)
    events = session.scalars(
        select(RunEvent)
        .where(RunEvent.run_id == found.id, RunEvent.seq > after)
        .order_by(RunEvent.seq)
        .limit(limit)
    )
    return {
        "run_id": found.id,
        "status": found.status,
        "events": [run_event_view(event) for event in events],
    }


def fire_decisions(
    session: Session, principal: Principal, *, routine: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    statement = (
        select(Fire, Routine.name)
        .join(Routine)
        .order_by(Fire.decided_at.desc(), Fire.id.desc())
        .limit(limit)
    )
    if routine is not None:
        statement = statement.where(Fire.routine_id == find_routine(session, principal, routine).id)
    elif principal.account_id is not None:
        statement = statement.where(Routine.account_id == principal.account_id)
    return [fire_view(fire, name) for fire, name in session.execute(statement)]
