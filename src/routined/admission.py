"""Admission: whether a trigger may start a run now, one rule for every kind of trigger.

Every door that starts runs asks `admit`: the fire endpoint (`api`), the scheduler
(`schedule`), the GitHub matcher (`github`) and a person's "run now" (`manual`,
`routined fire` and the management API). Each records the answer its own way (an
HTTP status and a `fires` row; a slot skipped or waiting; a delivery's decision; a
CLI error), but none decides on its own whether an account, a routine or a limit
lets a run start: copies of that rule drifted apart once (a disabled account
stopped only API fires).

The rules, in the order they are asked; the first that refuses is the answer:

1. the account: a disabled account's routines start nothing, whatever the trigger;
2. the routine: a paused routine's triggers start nothing; a person's "run now" does;
3. the queue: an API fire finds no room past `ROUTINED_MAX_QUEUED_RUNS` queued runs;
4. the limits: the plan's runs a day and the hourly caps (`routined.limits`);
5. the GitHub caps: runs started by GitHub events an hour, per routine and account.

`RULES` says which apply to which kind. `standing` (1 and 2) is pure; `admit` also
counts in the store, reading only, and takes the clock as an argument.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from routined import limits as limits_
from routined import usage
from routined.config import Settings
from routined.db import count_up_to, rows_at_most, table_of
from routined.models import Account, Routine, Run
from routined.runs import RunStatus


class Kind(enum.StrEnum):
    API = "api"  # the fire endpoint, with a trigger's token
    SCHEDULE = "schedule"  # a schedule trigger's slot
    GITHUB = "github"  # a GitHub event matched by a trigger
    MANUAL = "manual"  # a person's "run now": `routined fire`, POST /api/v1/routines/…/runs


class Code(enum.StrEnum):
    """What `admit` answered; stable, for callers to map to their surface."""

    ADMITTED = "admitted"  # a run may start; the reason notes an allowance, if any
    ACCOUNT_DISABLED = "account_disabled"  # the routine's account is disabled
    ROUTINE_PAUSED = "routine_paused"  # the routine is paused
    QUEUE_FULL = "queue_full"  # ROUTINED_MAX_QUEUED_RUNS runs are already queued
    OVER_LIMIT = "over_limit"  # the plan's runs a day or an hourly cap; see retry_after
    OVER_GITHUB_CAP = "over_github_cap"  # runs started by GitHub events this hour


class Rule(enum.StrEnum):
    ACCOUNT = "account"
    PAUSE = "pause"
    QUEUE = "queue"
    LIMITS = "limits"  # which of them count for a kind, `limits.decide` says
    GITHUB_CAPS = "github_caps"


RULES: Mapping[Kind, frozenset[Rule]] = {
    Kind.API: frozenset({Rule.ACCOUNT, Rule.PAUSE, Rule.QUEUE, Rule.LIMITS}),
    # A slot waits for the day's limit to reset (the scheduler's `waiting`) rather than
    # being refused; the queue and the hourly caps are for callers that can try again.
    Kind.SCHEDULE: frozenset({Rule.ACCOUNT, Rule.PAUSE, Rule.LIMITS}),
    Kind.GITHUB: frozenset({Rule.ACCOUNT, Rule.PAUSE, Rule.LIMITS, Rule.GITHUB_CAPS}),
    # Pausing stops a routine's triggers, not a person who asks for a run now.
    Kind.MANUAL: frozenset({Rule.ACCOUNT, Rule.LIMITS}),
}


@dataclass(frozen=True)
class Admission:
    code: Code
    # Refused: why, and what to do about it. Admitted: notes on the allowance (extra
    # usage, a paused routine fired by hand) joined by "; ", or "".
    reason: str = ""
    retry_after: int | None = None  # seconds until the window that refused resets

    @property
    def admitted(self) -> bool:
        return self.code is Code.ADMITTED


ADMITTED = Admission(Code.ADMITTED)


@dataclass(frozen=True)
class Bounds:
    """The server's settings that admission reads."""

    limits: limits_.Limits
    max_queued: int  # ROUTINED_MAX_QUEUED_RUNS
    # (per routine, per account) runs started by GitHub events an hour; None where no
    # GitHub event is decided (the fire endpoint's batches).
    github_hourly: tuple[int, int] | None = None

    @classmethod
    @functools.cache  # settings are frozen; every decision asks
    def of(cls, settings: Settings) -> Bounds:
        return cls(
            limits=limits_.Limits.of(settings),
            max_queued=settings.max_queued_runs,
            github_hourly=(settings.github_routine_hourly_cap, settings.github_account_hourly_cap),
        )


def standing(kind: Kind, *, routine: str, paused: bool, account: str, disabled: bool) -> Admission:
    """Rules 1 and 2: what the account's and the routine's state allow, from the state
    alone (the GitHub matcher asks this before it takes the store's write lock)."""
    rules = RULES[kind]
    if disabled and Rule.ACCOUNT in rules:
        return Admission(
            Code.ACCOUNT_DISABLED,
            f"account {account} is disabled; its routines cannot be fired until it is "
            f"enabled (routined account enable {account})",
        )
    if not paused:
        return ADMITTED
    if Rule.PAUSE not in rules:
        return Admission(Code.ADMITTED, "the routine is paused, which stops only its triggers")
    if kind is Kind.API:
        why = f"routine {routine} is paused; resume it (routined resume {routine}) to fire it"
    else:
        why = "the routine is paused"
    return Admission(Code.ROUTINE_PAUSED, why)


def admit_now(
    session: Session, kind: Kind, routine: Routine, *, settings: Settings, now: datetime
) -> Admission:
    """`admit`, for a trigger that decides one fire at a time (a GitHub event, a fire by
    hand): the routine's account is held first, until the transaction ends."""
    account = usage.hold_account(session, routine)
    return admit(session, kind, routine, account, bounds=Bounds.of(settings), now=now)


def admit(
    session: Session,
    kind: Kind,
    routine: Routine,
    account: Account,
    *,
    bounds: Bounds,
    now: datetime,
    runs_at_most: int | None = None,
) -> Admission:
    """Whether a run of `routine` started by `kind` may start at `now`; reads only.

    The caller holds `account` (`usage.hold_account`) so that fires racing for its
    last run take turns. `runs_at_most` bounds the runs in the store
    (`db.rows_at_most`): a count that cannot reach its cap is not made.
    """
    rules = RULES[kind]
    found = standing(
        kind,
        routine=routine.name,
        paused=routine.paused_at is not None,
        account=account.name,
        disabled=account.disabled_at is not None,
    )
    if not found.admitted:
        return found
    notes = [found.reason] if found.reason else []
    if Rule.QUEUE in rules and _queue_full(session, bounds.max_queued, runs_at_most):
        return Admission(
            Code.QUEUE_FULL,
            "the server's run queue is full (ROUTINED_MAX_QUEUED_RUNS); try again shortly",
        )
    if Rule.LIMITS in rules:
        verdict = usage.check(
            session,
            routine,
            account,
            kind.value,
            limits=bounds.limits,
            now=now,
            runs_at_most=runs_at_most,
        )
        if not verdict.allowed:
            return Admission(Code.OVER_LIMIT, verdict.reason, verdict.retry_after)
        if verdict.reason:
            notes.append(verdict.reason)
    if Rule.GITHUB_CAPS in rules:
        assert bounds.github_hourly is not None, "GitHub events are decided with their caps"
        capped = _github_cap(session, routine, bounds.github_hourly, now=now)
        if capped is not None:
            return Admission(Code.OVER_GITHUB_CAP, capped)
    return Admission(Code.ADMITTED, "; ".join(notes))


def _queue_full(session: Session, max_queued: int, runs_at_most: int | None) -> bool:
    """Whether `max_queued` runs are queued; not counted when the store holds fewer runs."""
    if runs_at_most is not None and runs_at_most < max_queued:
        return False
    queued = select(Run.id).where(Run.status == RunStatus.QUEUED)
    return count_up_to(session, queued, max_queued) >= max_queued


def _github_cap(
    session: Session, routine: Routine, caps: tuple[int, int], *, now: datetime
) -> str | None:
    """Why the hourly caps on GitHub-started runs leave no room, or None."""
    per_routine, per_account = caps
    if rows_at_most(session, table_of(Run)) < min(per_routine, per_account):
        return None  # the store holds fewer runs than either cap: neither is reached
    hour = now.replace(minute=0, second=0, microsecond=0)
    started = select(Run.id).where(Run.trigger_type == "github", Run.created_at >= hour)
    if (
        count_up_to(session, started.where(Run.routine_id == routine.id), per_routine)
        >= per_routine
    ):
        return (
            f"{routine.name} started {per_routine} runs from GitHub events this hour "
            "(ROUTINED_GITHUB_ROUTINE_HOURLY_CAP)"
        )
    of_account = started.join(Routine).where(Routine.account_id == routine.account_id)
    if count_up_to(session, of_account, per_account) >= per_account:
        return (
            f"its account started {per_account} runs from GitHub events this hour "
            "(ROUTINED_GITHUB_ACCOUNT_HOURLY_CAP)"
        )
    return None
