"""Commands about runs: fire ("run now"), runs, logs, cancel."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from routined import runs
from routined.cli.common import Client, JsonFlag, app, connect, fail, out, print_json, segment
from routined.logview import describe_event
from routined.worker import Worker

_FOLLOW_POLL = 0.3


@app.command()
def fire(
    routine: str,
    text: Annotated[str | None, typer.Option(help="Text passed to the run as its payload.")] = None,
    wait: Annotated[bool, typer.Option(help="Run it now and wait until it ends.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start a run now ("run now"); a schedule is not disturbed."""
    if text is not None and len(text) > runs.MAX_TEXT:
        fail(f"--text: {len(text)} characters is over the limit of {runs.MAX_TEXT}")
    with connect() as client:
        started = client.call("POST", f"/routines/{segment(routine)}/runs", body={"text": text})
        run_id, session_id = started["run_id"], started["session_id"]
        if not wait:
            if as_json:
                print_json(started)
            else:
                out.print(f"Queued run {run_id} (session {session_id}).")
                out.print("A running `routined serve` starts it; `routined logs` follows it.")
            return
        if not as_json:
            out.print(f"Run {run_id} (session {session_id}):")
        final = client.run(_run_and_follow(client, run_id, quiet=as_json))
    if as_json:
        print_json(final)
    raise typer.Exit(0 if final["status"] == runs.RunStatus.SUCCEEDED else 1)


async def _run_and_follow(client: Client, run_id: str, *, quiet: bool) -> dict[str, Any]:
    """Run it here unless a server took it first (or is the one asked); either way, show
    its events to the end."""
    following = asyncio.create_task(_follow(client, run_id, quiet=quiet))
    if client.local is not None:
        config, store = client.local
        await Worker(store, config).run_claimed(run_id)
    await following
    summary: dict[str, Any] = await client.acall("GET", f"/runs/{run_id}")
    return summary


@app.command("runs")
def runs_(
    routine: Annotated[str | None, typer.Argument(help="Only this routine's runs.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List runs, newest first."""
    with connect() as client:
        rows = client.call("GET", "/runs", params={"routine": routine, "limit": limit})
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
    with connect() as client:
        if follow:
            client.run(_follow(client, run, quiet=False, as_json=as_json))
            return
        for event in client.call("GET", f"/runs/{segment(run)}/events")["events"]:
            _print_event(event, as_json=as_json)


@app.command()
def cancel(run: Annotated[str, typer.Argument(help="Run id or session id.")]) -> None:
    """Cancel a run: a queued one at once, an active one within seconds (its worker stops it)."""
    with connect() as client:
        answer = client.call("POST", f"/runs/{segment(run)}/cancel")
    if answer["cancel"] == "cancelled":
        out.print(f"run {answer['run_id']} cancelled")
    else:
        out.print(f"run {answer['run_id']}: asked its worker to stop it")


async def _follow(client: Client, run: str, *, quiet: bool, as_json: bool = False) -> None:
    """Print events as they are recorded, until the run has ended."""
    seen = 0
    while True:
        answer = await client.acall("GET", f"/runs/{segment(run)}/events", params={"after": seen})
        for event in answer["events"]:
            seen = event["seq"]
            if not quiet:
                _print_event(event, as_json=as_json)
        if answer["status"] in runs.TERMINAL:
            return
        if not answer["events"]:
            # Another process may be writing them: the store (or server) is the only channel.
            await asyncio.sleep(_FOLLOW_POLL)


def _print_event(event: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    out.print(f"[dim]{event['at'][11:19]}[/] {escape(describe_event(event))}")
