"""The `routined` command. It works on $ROUTINED_HOME (or ROUTINED_DATABASE_URL)
directly, with or without a running server; a running server sees its changes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from routined import __version__, api, routines, runs, tokens
from routined.config import ConfigError, Settings
from routined.db import Store
from routined.logview import describe_event
from routined.models import Routine, Run, RunEvent, Token
from routined.worker import Worker, utcnow

app = typer.Typer(
    name="routined",
    help="Run coding agents on their own: routines, triggers, sandboxed sessions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
_FOLLOW_POLL = 0.3


def main() -> None:
    app()


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as error:
        fail(str(error))


@contextmanager
def opened() -> Iterator[tuple[Settings, Store]]:
    config = settings()
    store = Store(config.database_url.reveal())
    try:
        store.migrate()
        yield config, store
    finally:
        store.dispose()


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def find_routine(store: Store, name: str) -> Routine:
    with store.transaction() as session:
        routine = session.scalar(
            select(Routine)
            .where(Routine.name == name)
            .options(selectinload(Routine.triggers), selectinload(Routine.repositories))
        )
    if routine is None:
        fail(f"no routine named {name!r}; `routined list` shows the routines there are")
    return routine


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit()


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
    try:
        spec = routines.load(file)
    except routines.SpecError as error:
        fail(str(error))
    with opened() as (_config, store), store.transaction() as session:
        changes = routines.apply(session, spec, now=utcnow())
    for change in changes:
        colour = {"created": "green", "updated": "yellow", "unchanged": "dim"}[change.action]
        out.print(f"[{colour}]{escape(change.describe())}[/]")


@app.command("list")
def list_(as_json: JsonFlag = False) -> None:
    """List routines with their repositories, triggers and latest run."""
    with opened() as (_config, store), store.transaction() as session:
        found = session.scalars(
            select(Routine)
            .order_by(Routine.name)
            .options(selectinload(Routine.triggers), selectinload(Routine.repositories))
        ).all()
        live_tokens = set(
            session.scalars(select(Token.trigger_id).where(Token.revoked_at.is_(None))).all()
        )
        latest = {
            run.routine_id: run
            for run in session.scalars(
                select(Run).where(
                    Run.created_at
                    == select(func.max(Run.created_at))
                    .where(Run.routine_id == Routine.id)
                    .correlate(Routine)
                    .scalar_subquery()
                )
            )
        }
        rows: list[dict[str, Any]] = [
            {
                "name": r.name,
                "model": r.model,
                "repositories": [repo.url for repo in r.repositories],
                "triggers": [
                    {"id": t.id, "type": t.type, "has_token": t.id in live_tokens}
                    for t in r.triggers
                ],
                "last_run": (
                    {"id": latest[r.id].id, "status": latest[r.id].status}
                    if r.id in latest
                    else None
                ),
            }
            for r in found
        ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("No routines yet. Write a YAML file and `routined apply -f FILE`.")
        return
    table = Table("Routine", "Repositories", "Triggers", "Last run")
    for row in rows:
        table.add_row(
            row["name"],
            "\n".join(row["repositories"]),
            "\n".join(f"{t['type']} {t['id']}" for t in row["triggers"]) or "-",
            row["last_run"]["status"] if row["last_run"] else "-",
        )
    out.print(table)


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
        f'    -H "anthropic-beta: {api.ACCEPTED_BETAS[-1]}" \\\n'
        f'    -H "anthropic-version: {api.ANTHROPIC_VERSION}" \\\n'
        '    -H "Content-Type: application/json" \\\n'
        '    -d \'{"text": "optional context for this run"}\''
    )


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
            run = runs.create(
                session,
                session.merge(found, load=False),
                trigger_type="manual",
                trigger_id=None,
                text=text,
                now=utcnow(),
                reason="fired from the command line",
            )
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
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List runs, newest first."""
    with opened() as (config, store):
        statement = runs.with_routine_name().order_by(Run.created_at.desc())
        if routine is not None:
            find_routine(store, routine)
            statement = statement.where(Routine.name == routine)
        with store.transaction() as session:
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
        with store.transaction() as session:
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
    with store.transaction() as session:
        events = session.scalars(
            select(RunEvent)
            .where(RunEvent.run_id == run_id, RunEvent.seq > seq)
            .order_by(RunEvent.seq)
        ).all()
        status = session.scalar(select(Run.status).where(Run.id == run_id))
    return list(events), status


def _run_summary(store: Store, config: Settings, run_id: str) -> dict[str, Any]:
    with store.transaction() as session:
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
