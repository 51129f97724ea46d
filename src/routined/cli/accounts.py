"""Commands about accounts, plans and usage: account create/plan/list/disable/enable, usage."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from routined.cli.common import JsonFlag, app, connect, fail, out, print_json, segment

accounts = typer.Typer(help="Accounts own routines; their plan bounds runs a day.")
app.add_typer(accounts, name="account")


@accounts.command("create")
def create(
    name: str,
    plan: Annotated[str, typer.Option(help="One of ROUTINED_PLANS.")] = "unlimited",
) -> None:
    """Create an account; routines name it with `account:`."""
    with connect() as client:
        client.call("POST", "/accounts", body={"name": name, "plan": plan})
    out.print(f"account {escape(name)} created on plan {escape(plan)}")


@accounts.command("plan")
def set_plan(
    name: str,
    plan: str,
    extra_usage: Annotated[
        str | None,
        typer.Option("--extra-usage", help="on: runs go on past the daily limit; off: they stop."),
    ] = None,
) -> None:
    """Change an account's plan, and whether runs may go past its daily limit."""
    if extra_usage not in (None, "on", "off"):
        fail(f"--extra-usage: {extra_usage!r}; say on or off")
    change: dict[str, Any] = {"plan": plan}
    if extra_usage is not None:
        change["extra_usage"] = extra_usage == "on"
    with connect() as client:
        account = client.call("PATCH", f"/accounts/{segment(name)}", body=change)
    shown = "on" if account["extra_usage"] else "off"
    out.print(f"account {escape(name)}: plan {escape(account['plan'])}, extra usage {shown}")


@accounts.command("disable")
def disable(name: str) -> None:
    """Disable an account: its routines start nothing (API fires, schedules, GitHub
    events, `routined fire`) and its keys change nothing until it is enabled."""
    _set_disabled(name, disabled=True)


@accounts.command("enable")
def enable(name: str) -> None:
    """Enable a disabled account."""
    _set_disabled(name, disabled=False)


@accounts.command("list")
def list_accounts(as_json: JsonFlag = False) -> None:
    """Accounts with their plans."""
    with connect(creates=False) as client:
        rows = client.call("GET", "/accounts")
    if as_json:
        print_json(rows)
        return
    table = Table("Account", "Plan", "Extra usage", "State")
    for row in rows:
        state = "disabled" if row["disabled"] else "enabled"
        table.add_row(row["name"], row["plan"], "on" if row["extra_usage"] else "off", state)
    out.print(table)


@app.command("usage")
def usage_(
    account: Annotated[str | None, typer.Argument(help="Only this account.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Runs used in the current hour and day, and what remains, per account and routine."""
    with connect(creates=False) as client:
        rows = client.call("GET", "/usage", params={"account": account})
    if as_json:
        print_json(rows)
        return
    for row in rows:
        out.print(_usage_line(row))
        for routine in row["routines"]:
            out.print(
                f"  {escape(routine['routine'])}: {routine['manual_and_api_this_hour']} by hand "
                f"or API this hour, {routine['remaining_this_hour']} left"
            )


def _usage_line(row: dict[str, Any]) -> str:
    daily = row["runs_per_day"]
    today = (
        f"{row['runs_today']} runs today (no daily limit)"
        if daily is None
        else f"{row['runs_today']} of {daily} runs today, {row['remaining_today']} left"
    )
    extra = ", extra usage on" if row["extra_usage"] else ""
    disabled = " [red]disabled[/]" if row["disabled"] else ""
    return (
        f"[bold]{escape(row['account'])}[/] ({escape(row['plan'])}{extra}){disabled}: {today}; "
        f"{row['api_runs_this_hour']} of {row['api_runs_per_hour']} API runs this hour"
    )


def _set_disabled(name: str, *, disabled: bool) -> None:
    with connect() as client:
        client.call("PATCH", f"/accounts/{segment(name)}", body={"disabled": disabled})
    out.print(f"account {escape(name)} {'disabled' if disabled else 'enabled'}")
