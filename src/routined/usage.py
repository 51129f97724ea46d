"""An account's usage: its runs counted in the store within the current windows and
checked against its limits, with the account held meanwhile, so that fires racing for
its last run take turns instead of both starting.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeVarTuple

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from routined.db import count_up_to
from routined.limits import (
    LIMITED_KINDS,
    Counts,
    Limits,
    Plan,
    PlanError,
    Verdict,
    decide,
    windows,
)
from routined.models import Account, Routine, Run
from routined.runs import RunStatus
from routined.timeutil import iso

_UNKNOWN_PLAN_RETRY = 3600  # seconds: an operator has to act; look again in an hour

Row = TypeVarTuple("Row")


def _account_runs(account_id: str, since: datetime) -> Select[str]:
    return (
        select(Run.id)
        .join(Routine, Routine.id == Run.routine_id)
        .where(
            Routine.account_id == account_id,
            Run.created_at >= since,
            Run.status != RunStatus.SKIPPED,
        )
    )


def _routine_limited_runs(routine_id: str, since: datetime) -> Select[str]:
    return select(Run.id).where(
        Run.routine_id == routine_id,
        Run.created_at >= since,
        Run.status != RunStatus.SKIPPED,
        Run.trigger_type.in_(LIMITED_KINDS),
    )


def count(
    session: Session,
    account_id: str,
    routine_id: str,
    kind: str,
    *,
    plan: Plan,
    limits: Limits,
    now: datetime,
    runs_at_most: int | None = None,
) -> Counts:
    """The counts `decide` reads for a run of `kind`, each up to its limit (the rest 0).

    A count at its cap stands for "at least that many". `runs_at_most` bounds the
    runs in the store (`db.rows_at_most`): a limit above it cannot be reached, and
    is not counted (0) either.
    """

    def needed(cap: int) -> bool:
        return runs_at_most is None or runs_at_most >= cap

    window = windows(now, limits.zone)
    today = hour = routine = 0
    if plan.runs_per_day is not None and needed(plan.runs_per_day):
        rows = _account_runs(account_id, window.day_start)
        today = count_up_to(session, rows, plan.runs_per_day)
    if kind == "api" and needed(limits.account_api_hourly):
        api_runs = _account_runs(account_id, window.hour_start).where(Run.trigger_type == "api")
        hour = count_up_to(session, api_runs, limits.account_api_hourly)
    if kind in LIMITED_KINDS and needed(limits.routine_hourly):
        rows = _routine_limited_runs(routine_id, window.hour_start)
        routine = count_up_to(session, rows, limits.routine_hourly)
    return Counts(account_today=today, account_api_hour=hour, routine_hour=routine)


def hold_account(session: Session, routine: Routine) -> Account:
    """The routine's account, held until commit: fires racing for its last run take
    turns (on SQLite every write transaction already does)."""
    return hold_accounts(session, [routine.account_id])[routine.account_id]


def hold_accounts(session: Session, account_ids: Iterable[str]) -> dict[str, Account]:
    """These accounts by id, held until commit (see `hold_account` and `holding`)."""
    wanted = sorted(set(account_ids))
    held = {account.id: account for account in session.scalars(_held(), {"ids": wanted})}
    assert len(held) == len(wanted)  # foreign keys
    return held


def holding(statement: Select[*Row]) -> Select[*Row]:
    """`statement`, which reads accounts, holding them until commit as `hold_account` does.

    All in one go, in a fixed order: taken one by one as each is needed, two
    transactions could each hold one the other waits for.
    """
    return statement.order_by(Account.id).with_for_update(key_share=True, of=Account)


@functools.cache
def _held() -> Select[Account]:
    """The statement of `hold_accounts`, built once: building costs more than running it."""
    return holding(select(Account).where(Account.id.in_(bindparam("ids", expanding=True))))


def check(
    session: Session,
    routine: Routine,
    account: Account,
    kind: str,
    *,
    limits: Limits,
    now: datetime,
    runs_at_most: int | None = None,
) -> Verdict:
    """Count the runs in the current windows and decide; hold the account first.

    `runs_at_most`: see `count`.
    """
    try:
        plan = limits.plan(account.plan)
    except PlanError as error:
        # Refused, not raised: one account's stale plan must not stop the others.
        return Verdict(
            False,
            f"account {account.name}: {error}; give it one with `routined account plan`",
            _UNKNOWN_PLAN_RETRY,
        )
    counts = count(
        session,
        account.id,
        routine.id,
        kind,
        plan=plan,
        limits=limits,
        now=now,
        runs_at_most=runs_at_most,
    )
    return decide(
        kind,
        counts,
        account=account.name,
        plan=plan,
        extra_usage=account.extra_usage,
        limits=limits,
        now=now,
    )


def report(session: Session, account: Account, *, limits: Limits, now: datetime) -> dict[str, Any]:
    """What an account has used in the current windows, and what remains."""
    window = windows(now, limits.zone)
    plan = limits.plans.get(account.plan, Plan(f"{account.plan} (not in ROUTINED_PLANS)", 0))
    routines = session.execute(
        select(Routine.id, Routine.name)
        .where(Routine.account_id == account.id)
        .order_by(Routine.name)
    ).all()
    runs_today = count_up_to(session, _account_runs(account.id, window.day_start))
    api_runs = _account_runs(account.id, window.hour_start).where(Run.trigger_type == "api")
    api_this_hour = count_up_to(session, api_runs)
    per_routine = []
    for routine_id, name in routines:
        used = count_up_to(session, _routine_limited_runs(routine_id, window.hour_start))
        per_routine.append(
            {
                "routine": name,
                "manual_and_api_this_hour": used,
                "remaining_this_hour": max(0, limits.routine_hourly - used),
            }
        )
    daily = plan.runs_per_day
    return {
        "account": account.name,
        "plan": plan.name,
        "extra_usage": account.extra_usage,
        "disabled": account.disabled_at is not None,
        "runs_today": runs_today,
        "runs_per_day": daily,
        "remaining_today": None if daily is None else max(0, daily - runs_today),
        "day_resets_at": iso(window.day_end),
        "api_runs_this_hour": api_this_hour,
        "api_runs_per_hour": limits.account_api_hourly,
        "hour_resets_at": iso(window.hour_end),
        "routines": per_routine,
    }
