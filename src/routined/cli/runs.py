"""Commands about runs: fire ("run now"), runs, show-run, logs, cancel, and cache clear."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Column, Table

from routined import runs
from routined.cli.common import (
    Client,
    JsonFlag,
    app,
    connect,
    fail,
    json_text,
    out,
    print_json,
    segment,
    shown,
)
from routined.logview import describe_event, event_details, setup_tail
from routined.timeutil import format_duration

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
        from routined.runs.worker import Worker

        await Worker(client.local.store, client.local.settings).run_claimed(run_id)
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
    with connect(creates=False) as client:
        rows = client.call("GET", "/runs", params={"routine": routine, "limit": limit})
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("No runs yet.")
        return
    # Ids stay whole (people copy them into `routined logs`); the rest wraps. Branch
    # names and errors are the agent's words, shown inert (see `shown`).
    table = Table(
        Column("Run", no_wrap=True),
        Column("Routine", overflow="fold"),
        Column("Status", no_wrap=True),
        Column("Created (UTC)", no_wrap=True),
        Column("Result", overflow="fold"),
    )
    for row in rows:
        outcome = "\n".join(shown(b["branch"]) for b in row["branches"])
        if row["error"]:
            outcome = "\n".join(filter(None, [outcome, shown(row["error"], lines=True)]))
        table.add_row(
            row["id"],
            shown(row["routine"]),
            row["status"],
            row["created_at"][5:16].replace("T", " "),
            outcome,
        )
    out.print(table)


@app.command("show-run")
def show_run(
    run: Annotated[str, typer.Argument(help="Run id or session id.")],
    as_json: JsonFlag = False,
) -> None:
    """One run: its state, times, error, the agent's summary, what it pushed and spent."""
    with connect(creates=False) as client:
        found = client.call("GET", f"/runs/{segment(run)}")
        setup = _failed_setup(client, found) if not as_json else None
    if as_json:
        print_json(found)
        return
    out.print(_run_panel(found, setup))


def _failed_setup(client: Client, run: dict[str, Any]) -> dict[str, Any] | None:
    """The `setup.output` event of a run its setup script ended (the output says why
    better than its error can), else None. Such a run has few events: the agent never
    started."""
    if not (run["error"] or "").split(": ", 1)[-1].startswith("the setup script "):
        return None
    events = client.call("GET", f"/runs/{segment(run['id'])}/events")["events"]
    said = [event for event in events if event["kind"] == "setup.output"]
    return said[-1]["data"] if said and said[-1]["data"] else None


_STATUS_COLOURS = {
    runs.RunStatus.SUCCEEDED: "green",
    runs.RunStatus.FAILED: "red",
    runs.RunStatus.TIMED_OUT: "yellow",
    runs.RunStatus.CANCELLED: "yellow",
}


def _run_panel(run: dict[str, Any], setup: dict[str, Any] | None = None) -> Panel:
    # What the agent said and named (its summary, error, branches) is shown inert.
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    colour = _STATUS_COLOURS.get(run["status"], "cyan")
    grid.add_row("Status", f"[{colour}]{run['status']}[/]")
    grid.add_row("Routine", shown(run["routine"]))
    trigger = run["trigger"] + (f" ({run['trigger_id']})" if run["trigger_id"] else "")
    grid.add_row("Trigger", shown(trigger))
    grid.add_row("Session", f"{run['session_id']}  {shown(run['session_url'])}")
    for label, key in (("Created", "created_at"), ("Started", "started_at")):
        grid.add_row(label, _moment(run[key]))
    grid.add_row("Finished", _moment(run["finished_at"]))
    duration = _duration(run["started_at"], run["finished_at"])
    if duration:
        grid.add_row("Duration", duration)
    if run["error"]:
        grid.add_row("Error", f"[red]{shown(run['error'], lines=True)}[/]")
    if setup is not None and setup.get("lines"):
        grid.add_row("Setup", shown("\n".join(setup_tail(setup)), lines=True))
    if run.get("summary"):
        grid.add_row("Summary", shown(run["summary"], lines=True))
    if run["branches"]:
        grid.add_row("Branches", _branches(run["branches"]))
    if run.get("diff_stat"):
        grid.add_row("Changes", _diff_stat(run["diff_stat"]))
    if run.get("usage"):
        grid.add_row("Tokens", _usage(run["usage"]))
    if run.get("cost_usd") is not None:
        grid.add_row("Cost", f"${run['cost_usd']:.4f}")
    return Panel(grid, title=f"Run {run['id']}", title_align="left", expand=False)


def _moment(value: str | None) -> str:
    return "—" if value is None else value[:19].replace("T", " ") + " UTC"


def _duration(started: str | None, finished: str | None) -> str | None:
    if started is None or finished is None:
        return None
    span = datetime.fromisoformat(finished) - datetime.fromisoformat(started)
    return format_duration(span)


def _branches(branches: list[dict[str, Any]]) -> Table:
    # Pushed branches always name repository and branch; older runs lack the counts.
    table = Table(
        Column("Repository", overflow="fold"),
        Column("Branch", overflow="fold"),
        Column("Commit", no_wrap=True),
        Column("Changes", no_wrap=True),
        box=None,
        pad_edge=False,
    )
    for branch in branches:
        table.add_row(
            shown(str(branch.get("repository", ""))),
            shown(str(branch.get("branch", ""))),
            shown(str(branch.get("sha", ""))[:12]),
            _diff_stat(branch) if "files" in branch else "",
        )
    return table


def _diff_stat(stat: dict[str, Any]) -> str:
    files = stat.get("files", 0)
    return (
        f"{files} file{'' if files == 1 else 's'}, "
        f"[green]+{stat.get('insertions', 0)}[/] [red]-{stat.get('deletions', 0)}[/]"
    )


_TOKEN_KINDS = (
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cache_read_input_tokens", "cache read"),
    ("cache_creation_input_tokens", "cache write"),
)


def _usage(usage: dict[str, Any]) -> str:
    parts = [
        f"{usage[key]:,} {label}" for key, label in _TOKEN_KINDS if isinstance(usage.get(key), int)
    ]
    return ", ".join(parts) or "—"


@app.command()
def logs(
    run: Annotated[str, typer.Argument(help="Run id or session id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for new events.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show a run's events: state changes, git work and every agent message."""
    with connect(creates=False) as client:
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


cache = typer.Typer(help="Cached setup script results, reused by a routine's runs.")
app.add_typer(cache, name="cache")


@cache.command("clear")
def clear_cache(routine: str) -> None:
    """Remove the routine's cached setup results: its next run runs the setup script again."""
    with connect() as client:
        cleared = client.call("DELETE", f"/routines/{segment(routine)}/setup-cache")
    count = cleared["cleared"]
    if count:
        noun = "result" if count == 1 else "results"
        out.print(f"{shown(routine)}: removed {count} cached setup {noun}")
    else:
        out.print(f"{shown(routine)}: no cached setup results to remove")


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
        sys.stdout.write(json_text(event) + "\n")
        sys.stdout.flush()
        return
    # Events hold what the agent said and strangers sent: shown inert.
    out.print(f"[dim]{event['at'][11:19]}[/] {shown(describe_event(event))}")
    for line in event_details(event):
        out.print(f"[dim]         │[/] {shown(line)}")
