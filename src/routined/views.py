"""Rows as the CLI prints them with `--json` and the management API answers them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from routined import runs
from routined.fires import STARTS_RUN
from routined.github import installations
from routined.models import Fire, Routine, Run, RunEvent, Token, Trigger
from routined.schedules.scheduler import next_instants
from routined.schedules.timing import zone
from routined.timeutil import format_duration, iso
from routined.workspace import display_url


def routine_view(session: Session, routine: Routine, *, next_count: int) -> dict[str, Any]:
    """A routine as `routined list --json` and `show --json` print it, and the API answers."""
    trigger_ids = [t.id for t in routine.triggers]
    live_tokens = set(
        session.scalars(
            select(Token.trigger_id).where(
                Token.revoked_at.is_(None), Token.trigger_id.in_(trigger_ids)
            )
        )
    )
    last_run = session.scalar(
        select(Run).where(Run.routine_id == routine.id).order_by(Run.created_at.desc()).limit(1)
    )
    triggers = []
    for trigger in routine.triggers:
        # Named here as `GET /triggers` names it: one trigger shape (`TriggerOut`)
        # wherever a trigger is shown.
        item: dict[str, Any] = {"id": trigger.id, "type": trigger.type, "routine": routine.name}
        if trigger.type == "api":
            item["has_token"] = trigger.id in live_tokens
        if trigger.type == "schedule":
            item.update(_schedule_view(session, trigger, routine, next_count))
        if trigger.type == "github":
            item.update(_github_view(session, trigger))
        triggers.append(item)
    upcoming = [t for t in triggers if t.get("next_runs")]
    first = min(upcoming, key=lambda t: t["next_runs"][0], default=None)
    return {
        "id": routine.id,
        "name": routine.name,
        "model": routine.model,
        "paused": routine.paused_at is not None,
        "paused_at": iso(routine.paused_at) if routine.paused_at else None,
        "repositories": [display_url(repo.url) for repo in routine.repositories],
        # Applied with an account's key: its runs reach public addresses only.
        "reach": "public" if routine.public_only else "any",
        "catch_up": routine.catch_up,
        "catch_up_window": format_duration(timedelta(seconds=routine.catch_up_window)),
        "overlap": routine.overlap,
        "stagger": format_duration(timedelta(seconds=routine.stagger)),
        "triggers": triggers,
        "next_run": (
            {
                "at": first["next_runs"][0],
                "local": first["next_runs_local"][0],
                "trigger": first["id"],
            }
            if first
            else None
        ),
        "last_run": {"id": last_run.id, "status": last_run.status} if last_run else None,
    }


def _schedule_view(
    session: Session, trigger: Trigger, routine: Routine, count: int
) -> dict[str, Any]:
    where = zone(trigger.config["timezone"])
    upcoming = next_instants(trigger, count=count)
    if routine.paused_at is not None:
        state = "paused"
    elif upcoming:
        state = "scheduled"
    else:
        last = session.scalar(
            select(Fire.outcome)
            .where(Fire.trigger_id == trigger.id)
            .order_by(Fire.decided_at.desc(), Fire.id.desc())
            .limit(1)
        )
        state = "ran" if last in STARTS_RUN else f"ended ({last or 'never fired'})"
    return {
        "schedule": trigger.config["spec"],
        "timezone": where.key,
        "state": state,
        "next_runs": [iso(moment) for moment in upcoming],
        "next_runs_local": [_local(moment, where) for moment in upcoming],
    }


def _local(moment: datetime, where: ZoneInfo) -> str:
    local = moment.astimezone(where)
    name = local.tzname()
    return f"{local:%Y-%m-%d %H:%M} {name}" + ("" if name == where.key else f" ({where.key})")


def _github_view(session: Session, trigger: Trigger) -> dict[str, Any]:
    repository = trigger.config["repository"]
    installed = installations.installed_on(session, repository)
    return {
        "repository": repository,
        "events": trigger.config["events"],
        "filters": trigger.config.get("filters", []),
        "concurrency": trigger.config.get("concurrency"),
        "installed": installed,
        "state": "listening" if installed else f"app not installed on {repository}",
    }


def fire_view(fire: Fire, routine_name: str) -> dict[str, Any]:
    return {
        "routine": routine_name,
        "trigger_id": fire.trigger_id,
        "trigger_type": fire.trigger_type,
        "scheduled_at": iso(fire.scheduled_at) if fire.scheduled_at else None,
        "decided_at": iso(fire.decided_at),
        "outcome": fire.outcome,
        "reason": fire.reason,
        "run_id": fire.run_id,
        "delivery_id": fire.delivery_id,
    }


def run_view(run: Run, routine_name: str, *, public_url: str) -> dict[str, Any]:
    """A run as `routined runs --json` and `show-run --json` print it, and the API answers:
    its state and, once it has them, its results (branches keep every key they have)."""
    return {
        **runs.summary(run, routine_name, public_url=public_url),
        "summary": run.summary,
        "diff_stat": run.diff_stat,
        "usage": run.usage,
        "cost_usd": run.cost_usd,
    }


def run_event_view(event: RunEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": iso(event.at),
        "kind": event.kind,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "reason": event.reason,
        "data": event.data,
    }
