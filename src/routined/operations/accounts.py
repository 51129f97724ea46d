"""Accounts and their usage: listed, shown, created, changed (plan, extra usage,
disabled) by the operator, and what each has used of its plan."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from routined import usage as usage_
from routined.api_keys import Principal
from routined.config import Settings
from routined.errors import BadInput, Conflict
from routined.ids import new_id
from routined.limits import Limits, PlanError
from routined.models import Account
from routined.operations.access import find_account, require_operator, visible_accounts
from routined.routines.spec import NAME_PATTERN
from routined.schedules import scheduler
from routined.timeutil import iso


def account_view(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "plan": account.plan,
        "extra_usage": account.extra_usage,
        "disabled": account.disabled_at is not None,
        "created_at": iso(account.created_at),
    }


def list_accounts(session: Session, principal: Principal) -> list[dict[str, Any]]:
    return [account_view(a) for a in session.scalars(visible_accounts(principal))]


def get_account(session: Session, principal: Principal, name: str) -> dict[str, Any]:
    return account_view(find_account(session, principal, name))


def create_account(
    session: Session,
    principal: Principal,
    *,
    name: str,
    plan: str,
    settings: Settings,
    now: datetime,
) -> dict[str, Any]:
    require_operator(principal)
    _check_name("name", name)
    _check_plan(settings, plan)
    if session.scalar(select(Account.id).where(Account.name == name)):
        raise Conflict(f"name: there is already an account {name!r}")
    account = Account(id=new_id("acct"), name=name, plan=plan, created_at=now)
    session.add(account)
    session.flush()
    return account_view(account)


def update_account(
    session: Session,
    principal: Principal,
    name: str,
    *,
    plan: str | None = None,
    extra_usage: bool | None = None,
    disabled: bool | None = None,
    settings: Settings,
    now: datetime,
) -> dict[str, Any]:
    require_operator(principal)
    account = find_account(session, principal, name)
    if plan is not None:
        _check_plan(settings, plan)
        account.plan = plan
    if extra_usage is not None:
        account.extra_usage = extra_usage
    if disabled is not None and disabled != (account.disabled_at is not None):
        if not disabled:
            scheduler.before_enabling(session, account, now=now, settings=settings)
        account.disabled_at = now if disabled else None
    return account_view(account)


def usage(
    session: Session,
    principal: Principal,
    *,
    account: str | None = None,
    settings: Settings,
    now: datetime,
) -> list[dict[str, Any]]:
    found = (
        [find_account(session, principal, account)]
        if account
        else list(session.scalars(visible_accounts(principal)))
    )
    rules = Limits.of(settings)
    return [usage_.report(session, a, limits=rules, now=now) for a in found]


def _check_name(field: str, name: str) -> None:
    if re.fullmatch(NAME_PATTERN, name) is None:
        raise BadInput(f"{field}: {name!r}; account names use letters, digits, '.', '_' and '-'")


def _check_plan(settings: Settings, plan: str) -> None:
    try:
        Limits.of(settings).plan(plan)
    except PlanError as error:
        raise BadInput(f"plan: {error}") from None
