"""Commands about runs: fire ("run now"), runs, logs."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table
from sqlalchemy import select

from routined import api, fires, limits, runs
from routined.cli.common import JsonFlag, app, fail, find_routine, opened, out, print_json
from routined.config import Settings
from routined.db import Store
from routined.logview import describe_event
from routined.models import Routine, Run, RunEvent
from routined.worker import Worker, utcnow

_FOLLOW_POLL = 0.3


@app.command()
def fire(
    routine: str,
    text: Annotated[str | None, typer.Option(help="Text passed to the run as its payload.")] = None,
    wait: Annotated[bool, typer.Option(help="Run it now and wait until it ends.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start a run now ("run now"); a schedule is not disturbed."""
    if text is not None and len(text) > api.MAX_TEXT:
        fail(f"--text: {len(text)} characters is over the limit of {api.MAX_TEXT}")
    with opened() as (config, store):
        found = find_routine(store, routine)
        with store.transaction() as session:
            now = utcnow()
            chosen = session.get_one(Routine, found.id)
            account = limits.hold_account(session, chosen)
            verdict = limits.check(
                session, chosen, account, "manual", limits=limits.Limits.of(config), now=now
            )
            if verdict.allowed:
                reason = "fired by hand (routined fire); schedules are not affected"
                if chosen.paused_at is not None:
                    reason += "; the routine is paused, which stops only its triggers"
                if verdict.reason:
                    reason += f"; {verdict.reason}"
            else:
                reason = f"a fire by hand (routined fire) was refused: {verdict.reason}"
            run = None
            if verdict.allowed:
                run = runs.create(
                    session,
                    chosen,
                    trigger_type="manual",
                    trigger_id=None,
                    text=text,
                    now=now,
                    reason=reason,
                )
                session.flush()  # the decision row refers to it
            fires.record(
                session,
                routine_id=chosen.id,
                trigger_id=None,
                trigger_type="manual",
                outcome=fires.Outcome.FIRED if run else fires.Outcome.REFUSED,
                reason=reason,
                now=now,
                run_id=run.id if run else None,
            )
        if run is None:
            fail(f"not started: {verdict.reason}")
        url = runs.session_url(config.public_url, run.session_id)
        if not wait:
            if as_json:
                print_json({"run_id": run.id, "session_id": run.session_id, "session_url": url})
            else:
                out.print(f"Queued run {run.id} (session {run.session_id}).")
                out.print("A running `routined serve` starts it; `routined logs` follows it.")
            return
        if not as_json:
            out.print(f"Run {run.id} (session {run.session_id}):")
        final = asyncio.run(_run_and_follow(store, config, run.id, quiet=as_json))
        if as_json:
            print_json(final)
        raise typer.Exit(0 if final["status"] == runs.RunStatus.SUCCEEDED else 1)


async def _run_and_follow(
    store: Store, config: Settings, run_id: str, *, quiet: bool
) -> dict[str, Any]:
    """Run it here unless a server took it first; either way, show its events to the end."""
    following = asyncio.create_task(_follow(store, run_id, quiet=quiet))
    await Worker(store, config).run_claimed(run_id)
    await following
    return await asyncio.to_thread(_run_summary, store, config, run_id)


@app.command("runs")
def runs_(
    routine: Annotated[str | None, typer.Argument(help="Only this routine's runs.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List runs, newest first."""
    with opened() as (config, store):
        statement = runs.with_routine_name().order_by(Run.created_at.desc())
        if routine is not None:
            find_routine(store, routine)
            statement = statement.where(Routine.name == routine)
        with store.transaction(readonly=True) as session:
            rows = [
                runs.summary(run, name, public_url=config.public_url)
                for run, name in session.execute(statement.limit(limit)).all()
            ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("No runs yet.")
        return
    # Ids stay whole (people copy them into `routined logs`); the rest wraps.
    table = Table(
        Column("Run", no_wrap=True),
        Column("Routine", overflow="fold"),
        Column("Status", no_wrap=True),
        Column("Created (UTC)", no_wrap=True),
        Column("Result", overflow="fold"),
    )
    for row in rows:
        outcome = "\n".join(b["branch"] for b in row["branches"])
        if row["error"]:
            outcome = "\n".join(filter(None, [outcome, escape(row["error"])]))
        table.add_row(
            row["id"],
            row["routine"],
            row["status"],
            row["created_at"][5:16].replace("T", " "),
            outcome,
        )
    out.print(table)


@app.command()
def logs(
    run: Annotated[str, typer.Argument(help="Run id or session id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for new events.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show a run's events: state changes, git work and every agent message."""
    with opened() as (_config, store):
        with store.transaction(readonly=True) as session:
            run_id = session.scalar(select(Run.id).where((Run.id == run) | (Run.session_id == run)))
        if run_id is None:
            fail(f"no run or session {run!r}; `routined runs` lists them")
        if follow:
            asyncio.run(_follow(store, run_id, quiet=False, as_json=as_json))
            return
        for event in _events_after(store, run_id, 0)[0]:
            _print_event(event, as_json=as_json)


async def _follow(store: Store, run_id: str, *, quiet: bool, as_json: bool = False) -> None:
    """Print events as they are recorded, until the run has ended."""
    seen = 0
    while True:
        events, status = await asyncio.to_thread(_events_after, store, run_id, seen)
        for event in events:
            seen = event.seq
            if not quiet:
                _print_event(event, as_json=as_json)
        if status in runs.TERMINAL:
            return
        if not events:
            # Another process may be writing them: the store is the only channel.
            await asyncio.sleep(_FOLLOW_POLL)


def _events_after(store: Store, run_id: str, seq: int) -> tuple[list[RunEvent], str | None]:
    with store.transaction(readonly=True) as session:
        events = session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.seq > seq)
            .order_by(RunEvent.seq)
        ).all()
        status = session.scalar(select(Run.status).where(Run.id == run_id))
    return list(events), status


def _run_summary(store: Store, config: Settings, run_id: str) -> dict[str, Any]:
    with store.transaction(readonly=True) as session:
        run, name = session.execute(runs.with_routine_name().where(Run.id == run_id)).one()
        return runs.summary(run, name, public_url=config.public_url)


def _print_event(event: RunEvent, *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "seq": event.seq,
                    "at": event.at.isoformat().replace("+00:00", "Z"),
                    "kind": event.kind,
                    "from_status": event.from_status,
                    "to_status": event.to_status,
                    "reason": event.reason,
                    "data": event.data,
                },
                ensure_ascii=False,
            )
            + "\n"
        )
        sys.stdout.flush()
        return
    out.print(f"[dim]{event.at:%H:%M:%S}[/] {escape(describe_event(event))}")
