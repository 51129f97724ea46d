"""Commands that manage routines: serve, apply, list, show, token, pause, resume."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from routined import api, routines, scheduler, tokens
from routined.cli.common import JsonFlag, app, fail, find_routine, opened, out, print_json, settings
from routined.fires import STARTS_RUN
from routined.models import Fire, Routine, Run, Token, Trigger
from routined.schedule import format_duration, iso, zone
from routined.scheduler import next_instants
from routined.worker import utcnow


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (0: any free one).")] = None,
) -> None:
    """Serve the fire API and run queued runs."""
    from routined.server import serve as run_server

    config = settings()
    run_server(
        config,
        host=host if host is not None else config.host,
        port=port if port is not None else config.port,
        console=out,
    )


@app.command("apply")
def apply_(
    file: Annotated[Path, typer.Option("--file", "-f", help="Routines YAML file.")],
) -> None:
    """Create or update routines from a YAML file, by name."""
    config = settings()
    now = utcnow()
    try:
        spec = routines.load(
            file,
            now=now,
            timezone=config.timezone,
            min_interval=timedelta(seconds=config.min_schedule_interval),
        )
        with opened() as (_config, store), store.transaction() as session:
            changes = routines.apply(session, spec, now=now)
    except routines.SpecError as error:
        fail(str(error) if str(error).startswith(str(file)) else f"{file}: {error}")
    for change in changes:
        colour = {"created": "green", "updated": "yellow", "unchanged": "dim"}[change.action]
        out.print(f"[{colour}]{escape(change.describe())}[/]")


@app.command("list")
def list_(as_json: JsonFlag = False) -> None:
    """List routines with their triggers, next scheduled run (in its zone) and latest run."""
    with opened() as (_config, store), store.transaction(readonly=True) as session:
        rows = [view(session, routine, next_count=1) for routine in _routines(session)]
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("No routines yet. Write a YAML file and `routined apply -f FILE`.")
        return
    table = Table("Routine", "Triggers", "Next run", "Last run")
    for row in rows:
        table.add_row(
            row["name"] + (" [yellow](paused)[/]" if row["paused"] else ""),
            "\n".join(_trigger_line(t) for t in row["triggers"]) or "-",
            escape(row["next_run"]["local"]) if row["next_run"] else "-",
            row["last_run"]["status"] if row["last_run"] else "-",
        )
    out.print(table)


@app.command()
def show(routine: str, as_json: JsonFlag = False) -> None:
    """Show one routine: policies, triggers with their next five runs, latest run."""
    with opened() as (_config, store):
        found = find_routine(store, routine)
        with store.transaction(readonly=True) as session:
            row = view(session, session.merge(found, load=False), next_count=5)
    if as_json:
        print_json(row)
        return
    out.print(
        f"[bold]{escape(row['name'])}[/] {row['id']}"
        + (" [yellow]paused[/]" if row["paused"] else "")
    )
    out.print(f"  repositories: {escape(', '.join(row['repositories']))}")
    out.print(
        f"  catch_up: {row['catch_up']} (window {row['catch_up_window']}), "
        f"overlap: {row['overlap']}, stagger: {row['stagger']}"
    )
    for trigger in row["triggers"]:
        out.print(f"  {escape(_trigger_line(trigger))}")
        for moment in trigger.get("next_runs_local", []):
            out.print(f"      next: {escape(moment)}")
    if row["last_run"]:
        out.print(f"  last run: {row['last_run']['id']} {row['last_run']['status']}")


@app.command()
def pause(routine: str) -> None:
    """Pause a routine: its schedules skip their slots, API fires are refused."""
    _set_paused(routine, paused=True)


@app.command()
def resume(routine: str) -> None:
    """Resume a paused routine; slots skipped while paused are not fired."""
    _set_paused(routine, paused=False)


def _set_paused(name: str, *, paused: bool) -> None:
    with opened() as (config, store):
        found = find_routine(store, name)
        with store.transaction() as session:
            routine = session.get_one(Routine, found.id)
            changed = (routine.paused_at is None) == paused
            if changed and paused:
                routine.paused_at = utcnow()
            elif changed:
                scheduler.resume(session, routine, now=utcnow(), settings=config)
    state = "paused" if paused else "resumed"
    out.print(f"{escape(name)} {state}" if changed else f"{escape(name)} was already {state}")


def _routines(session: Session) -> list[Routine]:
    return list(
        session.scalars(
            select(Routine)
            .order_by(Routine.name)
            .options(selectinload(Routine.triggers), selectinload(Routine.repositories))
        )
    )


def view(session: Session, routine: Routine, *, next_count: int) -> dict[str, Any]:
    """A routine as `list --json` and `show --json` print it."""
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
        item: dict[str, Any] = {"id": trigger.id, "type": trigger.type}
        if trigger.type == "api":
            item["has_token"] = trigger.id in live_tokens
        if trigger.type == "schedule":
            item.update(_schedule_view(session, trigger, routine, next_count))
        triggers.append(item)
    upcoming = [t for t in triggers if t.get("next_runs")]
    first = min(upcoming, key=lambda t: t["next_runs"][0], default=None)
    return {
        "id": routine.id,
        "name": routine.name,
        "model": routine.model,
        "paused": routine.paused_at is not None,
        "paused_at": iso(routine.paused_at) if routine.paused_at else None,
        "repositories": [repo.url for repo in routine.repositories],
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


def _trigger_line(trigger: dict[str, Any]) -> str:
    if trigger["type"] == "schedule":
        spec, where, state = trigger["schedule"], trigger["timezone"], trigger["state"]
        return f"schedule {trigger['id']} {spec} ({where}) {state}"
    return f"{trigger['type']} {trigger['id']}"


@app.command()
def token(routine: str, as_json: JsonFlag = False) -> None:
    """Generate the routine's API token (shown once; the old one stops working)."""
    with opened() as (config, store):
        found = find_routine(store, routine)
        trigger = next((t for t in found.triggers if t.type == "api"), None)
        if trigger is None:
            fail(f"routine {routine!r} has no API trigger; add `- type: api` under triggers")
        with store.transaction() as session:
            secret = tokens.issue(session, trigger.id, now=utcnow())
    url = f"{config.public_url}/v1/claude_code/routines/{trigger.id}/fire"
    if as_json:
        print_json({"trigger_id": trigger.id, "token": secret, "url": url})
        return
    out.print(f"Token for routine [bold]{escape(routine)}[/] (trigger {trigger.id}).")
    out.print("It is shown only now; any earlier token of this trigger no longer works.\n")
    out.print(f"  {secret}\n")
    out.print("Fire it:")
    out.print(
        f"  curl -X POST {url} \\\n"
        f'    -H "Authorization: Bearer {secret}" \\\n'
        f'    -H "anthropic-beta: {config.accepted_betas[-1]}" \\\n'
        f'    -H "anthropic-version: {api.ANTHROPIC_VERSION}" \\\n'
        '    -H "Content-Type: application/json" \\\n'
        '    -d \'{"text": "optional context for this run"}\''
    )
