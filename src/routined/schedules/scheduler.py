"""The scheduler: decides schedule triggers when they fall due, and queues their runs.

Each schedule trigger carries its next instant (`next_at`) and when to decide it
(`due_at`: the instant plus the routine's stagger). The scheduler sleeps until the
earliest `due_at`, decides every slot that is due in one transaction per batch,
and moves each trigger's cursor on with a guarded update. A slot's decision is a
`fires` row unique per (trigger, instant), so several schedulers sharing one
PostgreSQL database never fire a slot twice; there, each takes its batch with
`FOR UPDATE SKIP LOCKED` and they split the work.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from routined import admission, fires, runs
from routined.config import Settings
from routined.fires import Outcome, Policy
from routined.models import Account, Fire, Routine, Trigger
from routined.schedules.timing import Schedule, parse, stagger_offset
from routined.timeutil import format_duration
from routined.usage import hold_account, hold_accounts
from routined.wakeup import Loop

# Decisions of one batch commit together: small enough that the first run of a
# batch is not held back long by the last.
_BATCH = 50
# Enough slots to decide one trigger after any downtime within the catch-up
# window; a longer gap is summarised in one row.
_MAX_SLOTS = 1000


def schedule_of(trigger: Trigger | dict[str, Any]) -> Schedule:
    config = trigger.config if isinstance(trigger, Trigger) else trigger
    return parse(config["spec"], config["timezone"])


def arm(trigger: Trigger, stagger: timedelta, *, now: datetime) -> None:
    """Point a schedule trigger at its first instant after `now`."""
    next_at = schedule_of(trigger).next_after(now)
    trigger.next_at = next_at
    trigger.due_at = None if next_at is None else next_at + stagger_offset(trigger.id, stagger)


def restagger(trigger: Trigger, stagger: timedelta) -> None:
    """Keep the instant, move when it is decided (the routine's stagger changed)."""
    if trigger.next_at is not None:
        trigger.due_at = trigger.next_at + stagger_offset(trigger.id, stagger)


class Scheduler(Loop):
    """Decides due slots, then sleeps until the next one is due.

    Changes made by other processes (`routined apply`, another scheduler) are
    seen within `ROUTINED_POLL_INTERVAL`: the sleep is never longer, and looking
    costs one indexed query.
    """

    doing = "scheduler: deciding due schedules"

    def step(self, stopping: Callable[[], bool]) -> float:
        next_due = self.run_due(stopping)
        delay = self.settings.poll_interval
        if next_due is not None:
            delay = min(delay, (next_due - self.clock()).total_seconds())
        return delay

    def run_due(self, stopping: Callable[[], bool] = lambda: False) -> datetime | None:
        """Decide everything due now; return when the next decision is due.

        Looking is a read that takes no lock; the write transaction (and on
        SQLite the write lock) is taken only when something is due.
        """
        while True:
            with self.store.transaction(readonly=True) as session:
                next_due = session.scalar(select(func.min(Trigger.due_at)))
            now = self.clock()
            if next_due is None or next_due > now:
                return next_due
            with self.store.transaction() as session:
                decided, started = decide_due(session, now=now, settings=self.settings)
            if started:
                self.on_run_created()
            if stopping():
                return None
            if decided == 0:
                return None  # due, but another scheduler is deciding it: look again soon


def decide_due(session: Session, *, now: datetime, settings: Settings) -> tuple[int, int]:
    """Decide one batch of due triggers; return how many triggers and runs started."""
    query = (
        select(Trigger)
        .join(Routine)
        .where(Trigger.due_at <= now)
        .order_by(Trigger.due_at)
        .limit(_BATCH)
        .options(selectinload(Trigger.routine))
    )
    if session.get_bind().dialect.name == "postgresql":
        # The routine is locked with its triggers: its runs in flight (for
        # `overlap`) cannot change under a decision, and `apply` waits for it.
        query = query.with_for_update(skip_locked=True, key_share=True, of=[Trigger, Routine])
    due = session.scalars(query).all()
    # Their accounts are held for the daily limit.
    accounts = hold_accounts(session, (trigger.routine.account_id for trigger in due))
    bounds = admission.Bounds.of(settings)
    started = 0
    for trigger in due:
        account = accounts[trigger.routine.account_id]
        started += _decide(session, trigger, account, now=now, settings=settings, bounds=bounds)
    return len(due), started


def _decide(
    session: Session,
    trigger: Trigger,
    account: Account,
    *,
    now: datetime,
    settings: Settings,
    bounds: admission.Bounds,
    paused: bool | None = None,
) -> int:
    """Decide every due slot of one trigger; return how many runs it started.

    1. Slots older than the catch-up window are summarised in one `missed` row.
    2. The due slots left (at most `_MAX_SLOTS`, the newest) are planned by
       `fires.plan` against the routine's runs in flight.
    3. The cursor moves past them with a guarded update; if another scheduler
       moved it first, nothing is recorded here.
    4. Runs to supersede are cancelled, then each decision is recorded, and a
       run is created for each that fires; the decision row is unique per slot.
    """
    routine = trigger.routine
    policy = Policy.of(routine)
    schedule = schedule_of(trigger)
    offset = stagger_offset(trigger.id, policy.stagger)
    previous = trigger.next_at
    assert previous is not None  # due_at is set only with next_at
    # A slot held back by the daily limit is decided at the reset, however long
    # that took: it is neither summarised nor late.
    waited = frozenset(
        slot
        for slot in session.scalars(
            select(Fire.scheduled_at).where(
                Fire.trigger_id == trigger.id,
                Fire.scheduled_at == previous,
                Fire.outcome == Outcome.WAITING,
            )
        )
        if slot is not None
    )
    oldest_kept = now - policy.catch_up_window - offset
    cursor: datetime | None = previous
    if previous < oldest_kept and previous not in waited:
        cursor = _summarise(
            session, trigger, schedule, previous, before=oldest_kept, now=now,
            why=f"more than catch_up_window ({format_duration(policy.catch_up_window)}) "
            "ago when it came back",
        )  # fmt: skip
    slots: list[datetime] = []
    while cursor is not None and cursor + offset <= now:
        slots.append(cursor)
        cursor = schedule.next_after(cursor)
    if len(slots) > _MAX_SLOTS:
        _summarise(
            session, trigger, schedule, slots[0], before=slots[-_MAX_SLOTS], now=now,
            why=f"only the latest {_MAX_SLOTS} slots are decided one by one",
        )  # fmt: skip
        slots = slots[-_MAX_SLOTS:]
    # The account and the routine as they stand decide every slot alike; the limits
    # are asked again for each slot that would start a run.
    held = admission.standing(
        admission.Kind.SCHEDULE,
        routine=routine.name,
        paused=routine.paused_at is not None if paused is None else paused,
        account=account.name,
        disabled=account.disabled_at is not None,
    )
    planned = fires.plan(
        slots,
        now=now,
        zone=schedule.zone,
        policy=policy,
        grace=timedelta(seconds=settings.schedule_grace),
        paused=held.code is admission.Code.ROUTINE_PAUSED,
        refused=held.reason if held.code is admission.Code.ACCOUNT_DISABLED else None,
        in_flight=fires.in_flight(session, routine.id),
        offset=offset,
        waited=waited,
    )
    # The cursor moves only from where this scheduler found it: a routine
    # re-applied meanwhile keeps its new schedule.
    moved = session.execute(
        update(Trigger)
        .where(Trigger.id == trigger.id, Trigger.next_at == previous)
        .values(next_at=cursor, due_at=None if cursor is None else cursor + offset)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return 0
    superseded: str | None = None
    started = 0
    for decision in planned.decisions:
        run = None
        if decision.starts_run:
            verdict = admission.admit(
                session, admission.Kind.SCHEDULE, routine, account, bounds=bounds, now=now
            )
            if not verdict.admitted:  # a limit: the account and routine were asked above
                _wait(session, trigger, decision.slot, verdict, offset=offset, now=now)
                break  # this slot and those after it are decided when the limit resets
            if superseded is None:
                superseded = _supersede(session, planned.cancel, now=now)
            reason = decision.reason + superseded
            if verdict.reason:
                reason += f"; {verdict.reason}"
            run = runs.create(
                session,
                routine,
                trigger_type="schedule",
                trigger_id=trigger.id,
                text=None,
                now=now,
                reason=f"{decision.outcome}: {reason}",
                serial=decision.serial,
            )
            session.flush()  # the decision row refers to it
        else:
            reason = decision.reason
        recorded = fires.record(
            session,
            routine_id=routine.id,
            trigger_id=trigger.id,
            trigger_type="schedule",
            scheduled_at=decision.slot,
            outcome=decision.outcome,
            reason=reason,
            now=now,
            run_id=None if run is None else run.id,
        )
        if run is not None and recorded is None:
            session.delete(run)  # the slot was decided elsewhere: this run never was
        elif run is not None:
            started += 1
    return started


def _wait(
    session: Session,
    trigger: Trigger,
    slot: datetime,
    verdict: admission.Admission,
    *,
    offset: timedelta,
    now: datetime,
) -> None:
    """Hold a slot over the account's daily limit until the limit resets.

    The cursor goes back to the slot (this transaction holds the trigger), and
    the slot is decided again, as on time, when the window resets.
    """
    assert verdict.retry_after is not None
    resets = now + timedelta(seconds=verdict.retry_after)
    session.execute(
        update(Trigger)
        .where(Trigger.id == trigger.id)
        .values(next_at=slot, due_at=max(resets, slot + offset))
        .execution_options(synchronize_session=False)
    )
    fires.record(
        session,
        routine_id=trigger.routine_id,
        trigger_id=trigger.id,
        trigger_type="schedule",
        scheduled_at=slot,
        outcome=Outcome.WAITING,
        reason=f"waited for the daily limit: {verdict.reason}",
        now=now,
    )


def _supersede(session: Session, run_ids: list[str], *, now: datetime) -> str:
    """Cancel the runs `cancel_previous` replaces; say what became of each."""
    said = []
    for run_id in run_ids:
        result = runs.cancel(
            session, run_id, now=now, reason="superseded by a newer scheduled fire"
        )
        if result == "cancelled":
            said.append(f"cancelled run {run_id}")
        elif result == "requested":
            said.append(f"asked run {run_id} to stop")
        else:
            said.append(f"run {run_id} is delivering its work and was left to finish")
    return f"; {', '.join(said)} (overlap: cancel_previous)" if said else ""


def resume(session: Session, routine: Routine, *, now: datetime, settings: Settings) -> None:
    """Unpause a routine: slots that fell due while it was paused stay skipped."""
    account = hold_account(session, routine)
    for trigger in routine.triggers:
        if trigger.type == "schedule" and trigger.due_at is not None and trigger.due_at <= now:
            _decide(
                session,
                trigger,
                account,
                now=now,
                settings=settings,
                bounds=admission.Bounds.of(settings),
                paused=True,
            )
    routine.paused_at = None


def before_enabling(
    session: Session, account: Account, *, now: datetime, settings: Settings
) -> None:
    """Decide, while the account is still disabled, its routines' slots that fell due
    and are undecided (routined was down meanwhile): they are skipped as a disabled
    account's, so that enabling it fires none of them late by `catch_up`."""
    assert account.disabled_at is not None
    due = session.scalars(
        select(Trigger)
        .join(Routine)
        .where(Routine.account_id == account.id, Trigger.due_at <= now)
        .options(selectinload(Trigger.routine))
    )
    bounds = admission.Bounds.of(settings)
    for trigger in due:
        _decide(session, trigger, account, now=now, settings=settings, bounds=bounds)


def _summarise(
    session: Session,
    trigger: Trigger,
    schedule: Schedule,
    first: datetime,
    *,
    before: datetime,
    now: datetime,
    why: str,
) -> datetime | None:
    """Record the slots from `first` up to `before` as one `missed` row; return the next slot."""
    count = 0
    cursor: datetime | None = first
    last = first
    while cursor is not None and cursor < before and count < _MAX_SLOTS:
        count += 1
        last = cursor
        cursor = schedule.next_after(cursor)
    counted = f"{count} slot{'s' if count != 1 else ''}"
    if cursor is not None and cursor < before:  # too many to count one by one
        counted = f"more than {count} slots"
        last = before
        cursor = schedule.next_after(before - timedelta(microseconds=1))
    fires.record(
        session,
        routine_id=trigger.routine_id,
        trigger_id=trigger.id,
        trigger_type="schedule",
        scheduled_at=first,
        outcome=Outcome.MISSED,
        reason=(
            f"{counted} from {first:%Y-%m-%d %H:%M}Z to {last:%Y-%m-%d %H:%M}Z missed "
            f"while routined was not running; {why}"
        ),
        now=now,
    )
    return cursor


def next_instants(trigger: Trigger, *, count: int) -> list[datetime]:
    """The next `count` instants a schedule trigger fires at, its pending one first."""
    if trigger.next_at is None:
        return []
    return [trigger.next_at, *schedule_of(trigger).upcoming(trigger.next_at, count - 1)]
