"""Commands about accounts, plans and usage: account create/plan/list/disable/enable, usage."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from routined import routines
from routined.cli.common import JsonFlag, app, fail, opened, out, print_json
from routined.ids import new_id
from routined.limits import Limits, PlanError, usage
from routined.models import Account
from routined.worker import utcnow

accounts = typer.Typer(help="Accounts own routines; their plan bounds runs a day.")
app.add_typer(accounts, name="account")


@accounts.command("create")
def create(
    name: str,
    plan: Annotated[str, typer.Option(help="One of ROUTINED_PLANS.")] = "unlimited",
) -> None:
    """Create an account; routines name it with `account:`."""
    if not _valid_name(name):
        fail(f"{name!r}: account names use letters, digits, '.', '_' and '-'")
    with opened() as (config, store):
        _check_plan(Limits.of(config), plan)
        with store.transaction() as session:
            if session.scalar(select(Account.id).where(Account.name == name)):
                fail(f"there is already an account {name!r}")
            session.add(Account(id=new_id("acct"), name=name, plan=plan, created_at=utcnow()))
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
    with opened() as (config, store):
        _check_plan(Limits.of(config), plan)
        with store.transaction() as session:
            account = _account(session, name)
            account.plan = plan
            if extra_usage is not None:
                account.extra_usage = extra_usage == "on"
            shown = "on" if account.extra_usage else "off"
    out.print(f"account {escape(name)}: plan {escape(plan)}, extra usage {shown}")


@accounts.command("disable")
def disable(name: str) -> None:
    """Disable an account: API fires of its routines are refused (403) until it is enabled."""
    _set_disabled(name, disabled=True)


@accounts.command("enable")
def enable(name: str) -> None:
    """Enable a disabled account."""
    _set_disabled(name, disabled=False)


@accounts.command("list")
def list_accounts(as_json: JsonFlag = False) -> None:
    """Accounts with their plans."""
    with opened() as (_config, store), store.transaction(readonly=True) as session:
        rows: list[dict[str, Any]] = [
            {
                "name": a.name,
                "plan": a.plan,
                "extra_usage": a.extra_usage,
                "disabled": a.disabled_at is not None,
            }
            for a in session.scalars(select(Account).order_by(Account.name))
        ]
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
    with opened() as (config, store):
        limits = Limits.of(config)
        now = utcnow()
        with store.transaction(readonly=True) as session:
            found = (
                [_account(session, account)]
                if account
                else list(session.scalars(select(Account).order_by(Account.name)))
            )
            rows = [usage(session, a, limits=limits, now=now) for a in found]
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
    with opened() as (_config, store), store.transaction() as session:
        account = _account(session, name)
        account.disabled_at = utcnow() if disabled else None
    out.print(f"account {escape(name)} {'disabled' if disabled else 'enabled'}")


def _account(session: Session, name: str) -> Account:
    account = session.scalar(select(Account).where(Account.name == name))
    if account is None:
        fail(f"no account named {name!r}; `routined account list` shows them")
    return account


def _check_plan(limits: Limits, plan: str) -> None:
    try:
        limits.plan(plan)
    except PlanError as error:
        fail(str(error))


def _valid_name(name: str) -> bool:
    return re.fullmatch(routines.NAME_PATTERN, name) is not None
