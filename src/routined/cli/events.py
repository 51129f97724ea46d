"""`routined events`: every decision about a fire, GitHub deliveries, and their replay."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from routined.cli.common import JsonFlag, app, connect, out, print_json, segment, shown


class _ListByDefault(TyperGroup):
    """`routined events [ROUTINE]` is `routined events list [ROUTINE]`; the other
    commands are named (a routine called `replay` is `events list replay`)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # Typer's own click Context
        if not args or (args[0] not in self.commands and args[0] != "--help"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


events = typer.Typer(
    cls=_ListByDefault,
    help="Every decision about a fire and why; GitHub deliveries and their replay.",
)
app.add_typer(events, name="events")

Limit = Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")]


@events.command("list")
def list_decisions(
    routine: Annotated[str | None, typer.Argument(help="Only this routine's decisions.")] = None,
    limit: Limit = 50,
    as_json: JsonFlag = False,
) -> None:
    """Every decision about a fire (fired, caught up, skipped, missed, dropped…) and why."""
    with connect(creates=False) as client:
        rows = client.call("GET", "/events", params={"routine": routine, "limit": limit})
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("No fire decisions yet.")
        return
    # A line per decision and its reason beneath: reasons are long, terminals narrow.
    for row in reversed(rows):
        _print_decision(row)


@events.command("deliveries")
def deliveries(limit: Limit = 20, as_json: JsonFlag = False) -> None:
    """GitHub deliveries: their headers of record, and what each routine decided."""
    with connect(creates=False) as client:
        rows = client.call("GET", "/deliveries", params={"limit": limit})
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("No GitHub deliveries yet.")
        return
    for row in reversed(rows):
        _print_delivery(row)
        for decision in row["decisions"]:
            _print_decision(decision, indent="  ")


@events.command("replay")
def replay(
    delivery: Annotated[str, typer.Argument(help="The X-GitHub-Delivery id.")],
    as_json: JsonFlag = False,
) -> None:
    """Decide a stored delivery again against today's routines, without starting
    anything: would it fire now, and if not, why not?"""
    with connect(creates=False) as client:
        row = client.call("GET", f"/deliveries/{segment(delivery)}/replay")
    if as_json:
        print_json(row)
        return
    _print_delivery(row)
    if not row["would"]:
        out.print(f"  no routine listens to {shown(row['repository'] or 'its repository')}")
    for would in row["would"]:
        out.print(f"  {shown(would['routine'])} would be [bold]{would['outcome']}[/]")
        out.print(f"      {shown(would['reason'])}")


def _print_delivery(row: dict[str, Any]) -> None:
    event = f"{row['event']}.{row['action']}" if row["action"] else row["event"]
    again = f", delivered {row['attempts']} times" if row["attempts"] > 1 else ""
    out.print(
        f"[dim]{row['received_at']}[/] delivery {shown(row['id'])} [bold]{shown(event)}[/] "
        f"{shown(row['repository'] or '')}{again}".rstrip()
    )
    if row["outcome"]:
        out.print(f"    {shown(row['outcome'])}")


def _print_decision(row: dict[str, Any], indent: str = "") -> None:
    instant = f"for {row['scheduled_at']}" if row["scheduled_at"] else ""
    run = f"→ {row['run_id']}" if row["run_id"] else ""
    out.print(
        f"{indent}[dim]{row['decided_at']}[/] {shown(row['routine'])} {row['trigger_type']} "
        f"[bold]{row['outcome']}[/] {instant} {run}".rstrip()
    )
    out.print(f"{indent}    {shown(row['reason'])}")
