"""Commands that manage routines: serve, apply, list, show, delete, token, pause, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from routined.cli.common import (
    JsonFlag,
    app,
    connect,
    fail,
    out,
    print_json,
    remote,
    segment,
    settings,
)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (0: any free one).")] = None,
    matcher: Annotated[
        bool,
        typer.Option(
            help="Decide GitHub deliveries here; --no-matcher when `routined matcher` "
            "runs in a process of its own."
        ),
    ] = True,
) -> None:
    """Serve the APIs, fire schedules, decide GitHub deliveries and run queued runs."""
    from routined.server import serve as run_server

    config = settings()
    run_server(
        config,
        host=host if host is not None else config.host,
        port=port if port is not None else config.port,
        console=out,
        matcher=matcher,
    )


@app.command("apply")
def apply_(
    file: Annotated[Path, typer.Option("--file", "-f", help="Routines YAML file.")],
) -> None:
    """Create or update routines from a YAML file, by name."""
    from routined.routines.load import read, with_absolute_paths
    from routined.routines.spec import SpecError

    try:
        document = with_absolute_paths(read(file), file.parent)
    except SpecError as error:
        fail(str(error))
    with connect() as client:
        # The server checks the file; its messages name the place in it.
        changes = client.call(
            "PUT",
            "/routines",
            body=document,
            explain=lambda message: _in_file(file, message),
        )
    for change in changes:
        colour = {"created": "green", "updated": "yellow", "unchanged": "dim"}[change["action"]]
        out.print(f"[{colour}]{escape(change['description'])}[/]")
        for warning in change["warnings"]:
            out.print(f"  [yellow]{escape(warning)}[/]")


def _in_file(file: Path, message: str) -> str:
    """The server's message about the document, each line labelled with the file rather
    than `request:` (the server only ever saw a request body); any other message is
    about the file as a whole."""
    if not message.startswith("request:"):
        return f"{file}: {message}"
    lines = message.splitlines()
    return "\n".join(
        f"{file}{line.removeprefix('request')}" if line.startswith("request:") else line
        for line in lines
    )


@app.command("list")
def list_(as_json: JsonFlag = False) -> None:
    """List routines with their triggers, next scheduled run (in its zone) and latest run."""
    with connect(creates=False) as client:
        rows = client.call("GET", "/routines")
    if as_json:
        print_json(rows)
        return
    if not rows:
        where = "" if remote() else f" in {settings().home}"
        out.print(f"No routines yet{where}. Write a YAML file and `routined apply -f FILE`.")
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
    with connect(creates=False) as client:
        row = client.call("GET", f"/routines/{segment(routine)}")
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
def delete(
    routine: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a routine with its triggers, tokens, runs and history."""
    if not yes:
        typer.confirm(f"Delete routine {routine} and all its runs?", abort=True)
    with connect() as client:
        client.call("DELETE", f"/routines/{segment(routine)}")
    out.print(f"{escape(routine)} deleted")


@app.command()
def pause(routine: str) -> None:
    """Pause a routine: its schedules skip their slots, API fires are refused."""
    _set_paused(routine, paused=True)


@app.command()
def resume(routine: str) -> None:
    """Resume a paused routine; slots skipped while paused are not fired."""
    _set_paused(routine, paused=False)


def _set_paused(name: str, *, paused: bool) -> None:
    with connect() as client:
        answer = client.call("POST", f"/routines/{segment(name)}/{'pause' if paused else 'resume'}")
    state = "paused" if paused else "resumed"
    out.print(
        f"{escape(name)} {state}" if answer["changed"] else f"{escape(name)} was already {state}"
    )


def _trigger_line(trigger: dict[str, Any]) -> str:
    if trigger["type"] == "schedule":
        spec, where, state = trigger["schedule"], trigger["timezone"], trigger["state"]
        return f"schedule {trigger['id']} {spec} ({where}) {state}"
    if trigger["type"] == "github":
        events = ", ".join(trigger["events"])
        return f"github {trigger['id']} {trigger['repository']} ({events}) {trigger['state']}"
    return f"{trigger['type']} {trigger['id']}"


@app.command()
def token(
    routine: str,
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Revoke the token instead; fires then get 401.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Generate the routine's API token (shown once; the old one stops working)."""
    from routined.http.fire import ANTHROPIC_VERSION

    config = settings()
    with connect() as client:
        found = client.call("GET", f"/routines/{segment(routine)}")
        trigger = next((t for t in found["triggers"] if t["type"] == "api"), None)
        if trigger is None:
            fail(f"routine {routine!r} has no API trigger; add `- type: api` under triggers")
        if revoke:
            revoked = client.call("DELETE", f"/triggers/{trigger['id']}/token")
            if as_json:
                print_json(revoked)
            elif revoked["revoked"]:
                out.print(f"token of trigger {trigger['id']} revoked; its fires now get 401")
            else:
                out.print(f"trigger {trigger['id']} had no live token")
            return
        issued = client.call("POST", f"/triggers/{trigger['id']}/token")
    secret, url = issued["token"], issued["url"]
    if as_json:
        print_json({"trigger_id": issued["trigger_id"], "token": secret, "url": url})
        return
    out.print(f"Token for routine [bold]{escape(routine)}[/] (trigger {issued['trigger_id']}).")
    out.print("It is shown only now; any earlier token of this trigger no longer works.\n")
    out.print(f"  {secret}\n")
    out.print("Fire it:")
    out.print(
        f"  curl -X POST {url} \\\n"
        f'    -H "Authorization: Bearer {secret}" \\\n'
        f'    -H "anthropic-beta: {config.accepted_betas[-1]}" \\\n'
        f'    -H "anthropic-version: {ANTHROPIC_VERSION}" \\\n'
        '    -H "Content-Type: application/json" \\\n'
        '    -d \'{"text": "optional context for this run"}\''
    )
