"""Fire decisions: what happened each time a trigger could fire, and why.

`plan` is the pure part: given the slots of a schedule that are due, the
routine's policies and its runs in flight, it decides for each slot whether it
fires, is caught up, skipped, missed or coalesced, with a reason a person can
read. `record` stores a decision; a scheduled slot is stored at most once.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict, Unpack
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from routined.db import table_of
from routined.models import Fire, Routine, Run
from routined.routines.policy import CatchUp, Overlap
from routined.runs import ACTIVE, RunStatus
from routined.timeutil import format_duration


class Outcome(enum.StrEnum):
    FIRED = "fired"  # a run was started for it, on time (or by hand, or over the API)
    CAUGHT_UP = "caught_up"  # missed while routined was down, fired late by `catch_up`
    SKIPPED = "skipped"  # not fired: the routine was paused, or a run was active
    MISSED = "missed"  # not fired: missed while routined was down, not caught up
    COALESCED = "coalesced"  # not fired: a run was already waiting to start
    WAITING = "waiting"  # over the account's daily limit: decided again when it resets
    REFUSED = "refused"  # a fire by hand or over the API that was refused
    DROPPED = "dropped"  # a GitHub event past an hourly cap: dropped, never decided again


STARTS_RUN = frozenset({Outcome.FIRED, Outcome.CAUGHT_UP})


@dataclass(frozen=True)
class Policy:
    catch_up: CatchUp = CatchUp.LATEST
    catch_up_window: timedelta = timedelta(days=7)
    overlap: Overlap = Overlap.SKIP
    stagger: timedelta = timedelta(0)

    @classmethod
    def of(cls, routine: Routine) -> Policy:
        return cls(
            catch_up=CatchUp(routine.catch_up),
            catch_up_window=timedelta(seconds=routine.catch_up_window),
            overlap=Overlap(routine.overlap),
            stagger=timedelta(seconds=routine.stagger),
        )


@dataclass(frozen=True)
class InFlight:
    """A run of the routine that is queued or active when a decision is made."""

    run_id: str
    status: str
    serial: bool


def in_flight(session: Session, routine_id: str, *, key: str | None = None) -> list[InFlight]:
    """The routine's queued and active runs, oldest first; with `key`, only those of
    that concurrency key."""
    statement = (
        select(Run.id, Run.status, Run.serial)
        .where(Run.routine_id == routine_id, Run.status.in_([RunStatus.QUEUED, *ACTIVE]))
        .order_by(Run.created_at)
    )
    if key is not None:
        statement = statement.where(Run.concurrency_key == key)
    return [InFlight(row.id, row.status, row.serial) for row in session.execute(statement)]


@dataclass(frozen=True)
class Decision:
    slot: datetime
    outcome: Outcome
    reason: str
    serial: bool = False  # the run it starts waits for the routine's active runs

    @property
    def starts_run(self) -> bool:
        return self.outcome in STARTS_RUN


@dataclass(frozen=True)
class Plan:
    decisions: list[Decision]
    cancel: list[str]  # runs to cancel first (overlap: cancel_previous)


def plan(
    slots: Sequence[datetime],
    *,
    now: datetime,
    zone: ZoneInfo,
    policy: Policy,
    grace: timedelta,
    paused: bool,
    in_flight: Sequence[InFlight],
    offset: timedelta = timedelta(0),
    waited: frozenset[datetime] = frozenset(),
    refused: str | None = None,
) -> Plan:
    """Decide every due slot of one schedule trigger, oldest first.

    1. A slot of a routine admission turns away (`refused`: its account is
       disabled) is skipped with that reason, and so is every slot of a paused
       routine; neither is fired later.
    2. A slot decided within `grace` of its due time (instant + `offset`, the
       stagger) is on time, and so is one that `waited` for a limit to reset.
       Later ones were missed while routined was down and follow `catch_up`;
       those older than its window are missed in any case.
    3. The slots that should start a run then meet `overlap`, judged against the
       runs in flight before this decision. Runs started under any policy but
       `allow` are serial, so slots fired together never overlap each other.
    """
    if refused is not None:
        return Plan(
            [
                Decision(
                    slot,
                    Outcome.SKIPPED,
                    f"due at {_local(slot, zone)}; not started: {refused}; "
                    "slots skipped meanwhile are not fired later",
                )
                for slot in slots
            ],
            [],
        )
    if paused:
        return Plan(
            [
                Decision(
                    slot,
                    Outcome.SKIPPED,
                    f"due at {_local(slot, zone)} while the routine was paused; "
                    "resuming it does not fire skipped slots",
                )
                for slot in slots
            ],
            [],
        )
    decisions: dict[datetime, Decision] = {}
    wanted: list[Decision] = []
    late = [s for s in slots if s not in waited and now - (s + offset) > grace]
    on_time = [s for s in slots if s in waited or now - (s + offset) <= grace]
    in_window = [s for s in late if now - (s + offset) <= policy.catch_up_window]
    for slot in late:
        shown = _local(slot, zone)
        if now - (slot + offset) > policy.catch_up_window:
            window = format_duration(policy.catch_up_window)
            decisions[slot] = Decision(
                slot,
                Outcome.MISSED,
                f"missed at {shown} while routined was not running; more than "
                f"catch_up_window ({window}) ago when it came back",
            )
        elif policy.catch_up == CatchUp.SKIP:
            decisions[slot] = Decision(
                slot,
                Outcome.MISSED,
                f"missed at {shown} while routined was not running; catch_up: skip "
                "fires no missed slots",
            )
        elif policy.catch_up == CatchUp.ALL or (slot == in_window[-1] and not on_time):
            wanted.append(
                Decision(
                    slot,
                    Outcome.CAUGHT_UP,
                    f"missed at {shown} while routined was not running; fired "
                    f"{format_duration(now - slot)} late by catch_up: {policy.catch_up}",
                )
            )
        else:
            newest = on_time[-1] if on_time else in_window[-1]
            decisions[slot] = Decision(
                slot,
                Outcome.MISSED,
                f"missed at {shown} while routined was not running; catch_up: latest "
                f"fires only the most recent slot ({_local(newest, zone)})",
            )
    for slot in on_time:
        wanted.append(Decision(slot, Outcome.FIRED, f"scheduled for {_local(slot, zone)}"))
    started, cancel = overlap(wanted, policy.overlap, in_flight)
    for decision in started:
        decisions[decision.slot] = decision
    return Plan([decisions[s] for s in slots], cancel)


def overlap(
    wanted: list[Decision], overlap: Overlap, in_flight: Sequence[InFlight]
) -> tuple[list[Decision], list[str]]:
    """`wanted` decisions under an overlap policy, given the runs in flight (of the
    routine, or of one concurrency key); and the runs to cancel first."""
    if not wanted or overlap == Overlap.ALLOW:
        return wanted, []
    serial = [replace(d, serial=True) for d in wanted]
    if not in_flight:
        return serial, []
    first = in_flight[0]
    if overlap == Overlap.CANCEL_PREVIOUS:
        # The scheduler adds to the reasons what became of each cancelled run.
        return serial, [r.run_id for r in in_flight]
    if overlap == Overlap.SKIP:
        return [
            replace(
                d,
                outcome=Outcome.SKIPPED,
                reason=f"{d.reason}; not started: run {first.run_id} is still "
                f"{first.status} (overlap: skip)",
            )
            for d in wanted
        ], []
    waiting = next((r for r in in_flight if r.status == "queued" and r.serial), None)
    decided = []
    for decision in serial:
        if waiting is None and decision is serial[-1]:
            decided.append(
                replace(decision, reason=f"{decision.reason}; waits for run {first.run_id}")
            )
        else:
            behind = waiting.run_id if waiting else "the newest slot's run"
            decided.append(
                replace(
                    decision,
                    outcome=Outcome.COALESCED,
                    reason=f"{decision.reason}; merged into {behind}, already waiting "
                    f"for run {first.run_id} (overlap: queue_one)",
                )
            )
    return decided, []


def _local(moment: datetime, zone: ZoneInfo) -> str:
    local = moment.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {zone.key} ({moment:%H:%M}Z)"


class Decided(TypedDict):
    """A decision as `row` and `record` take it, by name."""

    routine_id: str
    trigger_id: str | None  # None: a fire by hand
    trigger_type: str
    outcome: Outcome
    reason: str
    now: datetime  # when it was decided
    scheduled_at: NotRequired[datetime | None]  # the slot of a schedule trigger
    run_id: NotRequired[str | None]  # the run it started
    delivery_id: NotRequired[str | None]  # the GitHub delivery it decided


def row(**decided: Unpack[Decided]) -> dict[str, Any]:
    """A decision as the `fires` row that stores it."""
    return {
        "routine_id": decided["routine_id"],
        "trigger_id": decided["trigger_id"],
        "trigger_type": decided["trigger_type"],
        "scheduled_at": decided.get("scheduled_at"),
        "decided_at": decided["now"],
        "outcome": decided["outcome"],
        "reason": decided["reason"],
        "run_id": decided.get("run_id"),
        "delivery_id": decided.get("delivery_id"),
    }


def record(session: Session, **decided: Unpack[Decided]) -> int | None:
    """Store a decision; None if this trigger's slot was already decided elsewhere.

    A slot recorded as `waiting` is decided again later: that decision replaces
    the row, keeping what it waited for in the reason.
    """
    statement = _record_statement(session.get_bind().dialect.name)
    inserted: int | None = session.scalar(statement, row(**decided))
    return inserted


def record_all(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Store decisions that have no slot (fires by hand or over the API), in order,
    in one statement: without a slot no two can conflict, so there is nothing to
    upsert."""
    assert all(decision["scheduled_at"] is None for decision in rows)
    if rows:
        session.execute(insert(table_of(Fire)), rows)


@functools.cache
def _record_statement(dialect_name: str) -> ReturningInsert[int]:
    """The upsert `record` runs, built once: building it (its `excluded` alias above
    all) costs more than running it."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    # On the table, not the entity: a plain insert, without the ORM's bookkeeping.
    table = Fire.__table__
    new = dialect.insert(table)
    statement: ReturningInsert[int] = new.on_conflict_do_update(
        index_elements=["trigger_id", "scheduled_at"],
        set_={
            "decided_at": new.excluded.decided_at,
            "outcome": new.excluded.outcome,
            "reason": table.c.reason + "; then " + new.excluded.reason,
            "run_id": new.excluded.run_id,
        },
        where=table.c.outcome == Outcome.WAITING,
    ).returning(table.c.id)
    return statement


def skipped_by_gate(session: Session, run_id: str, answer: str) -> None:
    """The fire that queued this run was turned away by its trigger's gate."""
    session.execute(
        update(Fire)
        .where(Fire.run_id == run_id)
        .values(outcome=Outcome.SKIPPED, reason=Fire.reason + "; then skipped: gate: " + answer)
        .execution_options(synchronize_session=False)
    )
