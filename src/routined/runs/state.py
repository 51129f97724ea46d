"""Runs: their states, the guarded moves between them, and the events that record them.

Every change of state is one `UPDATE … WHERE status = :expected` that must touch
exactly one row, written in the same transaction as an event row saying why.

Over 500 lines and still one concept: the states and every guarded move between
them (create, claim, heartbeat, end, cancel, lose, expire) read best side by side.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict, Unpack

from sqlalchemy import Select, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from routined.db import table_of
from routined.ids import new_id
from routined.models import Routine, Run, RunEvent
from routined.runs.failure import Failure
from routined.timeutil import format_duration

# The most text a fire (over the API or by hand) may hand its run.
MAX_TEXT = 65_536


class RunStatus(enum.StrEnum):
    QUEUED = "queued"  # recorded, waiting for a worker
    PREPARING = "preparing"  # a worker holds it and is cloning the repositories
    RUNNING = "running"  # the agent is working inside its sandbox
    FINISHING = "finishing"  # the agent has stopped; its work is being delivered
    SUCCEEDED = "succeeded"  # delivered with no infrastructure error
    FAILED = "failed"  # ended by an error, with the reason in `error`
    CANCELLED = "cancelled"  # stopped on request before it finished
    SKIPPED = "skipped"  # never started: its trigger's gate said no
    TIMED_OUT = "timed_out"  # stopped at its routine's max_duration; its work delivered


ACTIVE = frozenset({RunStatus.PREPARING, RunStatus.RUNNING, RunStatus.FINISHING})
# Past these a run's work is being delivered; a cancel request no longer stops it.
CANCELLABLE = frozenset({RunStatus.PREPARING, RunStatus.RUNNING})
TERMINAL = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.SKIPPED,
        RunStatus.TIMED_OUT,
    }
)

ALLOWED: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.PREPARING, RunStatus.CANCELLED}),
    RunStatus.PREPARING: frozenset(
        {RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SKIPPED}
    ),
    RunStatus.RUNNING: frozenset({RunStatus.FINISHING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.FINISHING: frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
    RunStatus.SKIPPED: frozenset(),
    RunStatus.TIMED_OUT: frozenset(),
}


class TransitionRefused(RuntimeError):
    """The run was not in the expected state (or is held under another lease)."""


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a run: later updates must name the same lease."""

    run_id: str
    lease: int


def add_event(
    session: Session,
    run_id: str,
    kind: str,
    *,
    now: datetime,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
) -> RunEvent:
    return _add_event(session, run_id, kind=kind, at=now, reason=reason, data=data)


def _add_event(session: Session, run_id: str, **fields: Any) -> RunEvent:
    # The counter row is locked by this UPDATE until commit, so two writers of
    # one run's events can never take the same number.
    session.execute(update(Run).where(Run.id == run_id).values(event_seq=Run.event_seq + 1))
    seq = session.scalar(select(Run.event_seq).where(Run.id == run_id))
    if seq is None:
        raise LookupError(f"run {run_id} does not exist")
    event = RunEvent(run_id=run_id, seq=seq, **fields)
    session.add(event)
    return event


@dataclass(frozen=True)
class NewRun:
    """A queued run and its first event, as rows not yet written (see `insert_all`)."""

    row: dict[str, Any]
    first_event: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.row["id"])

    @property
    def session_id(self) -> str:
        return str(self.row["session_id"])


class Queued(TypedDict):
    """What a run is queued with, by name (see `new`)."""

    trigger_type: str
    trigger_id: str | None
    text: str | None  # what the fire hands the agent
    now: datetime
    reason: str  # why it was queued, its first event's
    serial: NotRequired[bool]  # it waits for the routine's active runs (False unless said)


def new(routine: Routine, **queued: Unpack[Queued]) -> NewRun:
    run_id = new_id("run")
    now = queued["now"]
    return NewRun(
        row={
            "id": run_id,
            "session_id": new_id("session"),
            "routine_id": routine.id,
            "trigger_id": queued["trigger_id"],
            "trigger_type": queued["trigger_type"],
            "status": RunStatus.QUEUED,
            "text": queued["text"],
            "model": routine.model,
            "created_at": now,
            "branches": [],
            "serial": queued.get("serial", False),
            "event_seq": 1,  # its first event, below: nobody else can write to it yet
        },
        first_event={
            "run_id": run_id,
            "seq": 1,
            "at": now,
            "kind": "status",
            "reason": queued["reason"],
            "to_status": RunStatus.QUEUED,
        },
    )


def create(session: Session, routine: Routine, **queued: Unpack[Queued]) -> Run:
    created = new(routine, **queued)
    run = Run(**created.row)
    session.add(run)
    session.add(RunEvent(**created.first_event))
    return run


def insert_all(session: Session, created: Sequence[NewRun]) -> None:
    """Write new runs with their first events, one statement for each table: the
    ORM's bookkeeping for each object costs more than writing it."""
    if created:
        session.execute(insert(table_of(Run)), [run.row for run in created])
        session.execute(insert(table_of(RunEvent)), [run.first_event for run in created])


@dataclass(frozen=True)
class Move:
    """One guarded move of a run: from `expected` to `to` at `now`, and why. With a
    `lease`, only the worker holding it may make the move; `data` goes into the move's
    event, `changes` into the run's row."""

    expected: RunStatus
    to: RunStatus
    now: datetime
    reason: str
    lease: int | None = None
    data: dict[str, Any] | None = None
    changes: dict[str, Any] | None = None


def transition(session: Session, run_id: str, move: Move) -> None:
    """Make `move`, or refuse if the run is not where it expects (or not ours)."""
    expected, to, now, lease = move.expected, move.to, move.now, move.lease
    if to not in ALLOWED[expected]:
        raise TransitionRefused(f"a run cannot go from {expected} to {to}")
    values: dict[str, Any] = {"status": to, **(move.changes or {})}
    if to in TERMINAL:
        values.setdefault("finished_at", now)
    statement = update(Run).where(Run.id == run_id, Run.status == expected)
    if lease is not None:
        statement = statement.where(Run.lease == lease)
    result = session.execute(statement.values(values))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        held = f" under lease {lease}" if lease is not None else ""
        raise TransitionRefused(
            f"run {run_id} was not {expected}{held}; it stays as it is instead of becoming {to}"
        )
    _add_event(
        session,
        run_id,
        kind="status",
        at=now,
        reason=move.reason,
        data=move.data,
        from_status=expected,
        to_status=to,
    )


def claim(
    session: Session, worker_id: str, *, now: datetime, run_id: str | None = None
) -> Claim | None:
    """Take the oldest queued run (or the one named) for this worker, if any.

    One statement picks and takes the run, so two workers can never both take it:
    on SQLite the UPDATE holds the write lock while its subquery picks; on
    PostgreSQL the subquery skips rows another worker is taking. A serial run
    waits while another run of its routine is active; one with a concurrency key,
    only while a run with the same key is.
    """
    candidate, other = aliased(Run), aliased(Run)
    routine_busy = (
        select(other.id)
        .where(
            other.routine_id == candidate.routine_id,
            other.status.in_(ACTIVE),
            or_(
                candidate.concurrency_key.is_(None),
                other.concurrency_key == candidate.concurrency_key,
            ),
        )
        .exists()
    )
    oldest = (
        select(candidate.id)
        .join(Routine, Routine.id == candidate.routine_id)
        .where(
            candidate.status == RunStatus.QUEUED,
            or_(candidate.serial.is_(False), ~routine_busy),
        )
        .order_by(candidate.created_at, candidate.id)
        .limit(1)
    )
    if run_id is not None:
        oldest = oldest.where(candidate.id == run_id)
    if session.get_bind().dialect.name == "postgresql":
        # Locking the routine too makes claims of one routine's runs (and the
        # scheduler's decisions about it) take turns: a claimer that could not
        # yet see another's claim would start a second serial run. NO KEY
        # UPDATE: new runs may still reference the routine meanwhile.
        oldest = oldest.with_for_update(skip_locked=True, key_share=True, of=[candidate, Routine])
    taken = session.execute(
        update(Run)
        .where(Run.id == oldest.scalar_subquery(), Run.status == RunStatus.QUEUED)
        .values(
            status=RunStatus.PREPARING,
            lease=Run.lease + 1,
            worker_id=worker_id,
            heartbeat_at=now,
            started_at=now,
        )
        .returning(Run.id, Run.lease)
    ).first()
    if taken is None:
        return None
    _add_event(
        session,
        taken.id,
        kind="status",
        at=now,
        reason=f"claimed by worker {worker_id}",
        from_status=RunStatus.QUEUED,
        to_status=RunStatus.PREPARING,
    )
    return Claim(taken.id, taken.lease)


def fail(session: Session, held: Claim, *, now: datetime, error: str) -> bool:
    """End a run this worker holds as failed, from whatever active state it is in."""
    status = session.scalar(
        select(Run.status).where(Run.id == held.run_id, Run.lease == held.lease)
    )
    if status is None or RunStatus(status) not in ACTIVE:
        return False
    transition(
        session,
        held.run_id,
        Move(
            RunStatus(status),
            RunStatus.FAILED,
            now=now,
            reason=error,
            lease=held.lease,
            changes={"error": error},
        ),
    )
    return True


def end_cancelled(session: Session, held: Claim, *, now: datetime, reason: str) -> bool:
    """End a run this worker holds as cancelled, if it has not reached delivery."""
    # Tried from each state in turn: a move the worker made just before the
    # cancel landed may have committed after the worker last looked.
    for status in (RunStatus.RUNNING, RunStatus.PREPARING):
        try:
            transition(
                session,
                held.run_id,
                Move(
                    status,
                    RunStatus.CANCELLED,
                    now=now,
                    reason=reason,
                    lease=held.lease,
                    changes={"error": f"{Failure.CANCELLED}: {reason}"},
                ),
            )
        except TransitionRefused:
            continue
        return True
    return False


def cancel(session: Session, run_id: str, *, now: datetime, reason: str) -> str | None:
    """Cancel a queued run at once, or ask the worker of an active one to stop it.

    Returns `cancelled`, `requested`, or None when the run is past stopping
    (delivering or ended). The worker holding an active run sees the request
    within a second (see `routined.runs.worker.Worker._beat`).
    """
    status = session.scalar(select(Run.status).where(Run.id == run_id))
    if status == RunStatus.QUEUED:
        try:
            transition(
                session,
                run_id,
                Move(
                    RunStatus.QUEUED,
                    RunStatus.CANCELLED,
                    now=now,
                    reason=reason,
                    changes={"error": f"{Failure.CANCELLED}: {reason}"},
                ),
            )
            return "cancelled"
        except TransitionRefused:
            pass  # a worker took it meanwhile: ask that worker instead
    asked = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_(CANCELLABLE), Run.cancel_requested_at.is_(None))
        .values(cancel_requested_at=now)
    )
    if asked.rowcount != 1:  # type: ignore[attr-defined]
        return None
    add_event(session, run_id, "cancel.requested", now=now, reason=reason)
    return "requested"


def cancel_requests(session: Session, claims: list[Claim]) -> dict[str, str]:
    """Runs among these claims someone asked to cancel, with the reason they gave."""
    asked: dict[str, str] = {}
    for held in claims:
        requested = session.scalar(
            select(Run.cancel_requested_at).where(
                Run.id == held.run_id, Run.lease == held.lease, Run.status.in_(CANCELLABLE)
            )
        )
        if requested is None:
            continue
        reason = session.scalar(
            select(RunEvent.reason)
            .where(RunEvent.run_id == held.run_id, RunEvent.kind == "cancel.requested")
            .order_by(RunEvent.seq.desc())
            .limit(1)
        )
        asked[held.run_id] = reason or "cancelled on request"
    return asked


def heartbeat(session: Session, claims: list[Claim], *, now: datetime) -> None:
    for held in claims:
        session.execute(
            update(Run)
            .where(Run.id == held.run_id, Run.lease == held.lease, Run.status.in_(ACTIVE))
            .values(heartbeat_at=now)
        )


def end_lost(session: Session, *, now: datetime, lost_after: timedelta) -> list[str]:
    """End active runs whose worker stopped beating; never re-run them.

    A re-run could push a second time, so a run whose worker vanished is ended
    with the reason `lost` and left for a person to look at.
    """
    stale = session.execute(
        select(Run.id, Run.status, Run.lease, Run.heartbeat_at, Run.worker_id).where(
            Run.status.in_(ACTIVE), Run.heartbeat_at < now - lost_after
        )
    ).all()
    ended = []
    for row in stale:
        try:
            transition(
                session,
                row.id,
                Move(
                    RunStatus(row.status),
                    RunStatus.FAILED,
                    now=now,
                    lease=row.lease,
                    reason=f"{Failure.LOST}: worker {row.worker_id} sent no heartbeat since "
                    f"{row.heartbeat_at:%Y-%m-%dT%H:%M:%SZ}",
                    changes={"error": f"{Failure.LOST}: the worker running it stopped responding"},
                ),
            )
        except TransitionRefused:
            continue  # its worker moved it on after all
        ended.append(row.id)
    return ended


@dataclass(frozen=True)
class ExpiredFiles:
    """Run folders whose time is up: of runs that ended at least the kept time ago
    (their removal is recorded on them), and of runs the store no longer has (removed
    with their routine), which only the folder's own age can date."""

    ended: list[str]
    unknown: list[str]


def expired_files(
    session: Session, run_ids: Sequence[str], *, now: datetime, keep_for: timedelta
) -> ExpiredFiles:
    """Which of these runs' folders may go, `keep_for` after their runs ended."""
    found: dict[str, tuple[str, datetime | None]] = {}
    for start in range(0, len(run_ids), _IDS_PER_STATEMENT):
        chunk = run_ids[start : start + _IDS_PER_STATEMENT]
        rows = session.execute(select(Run.id, Run.status, Run.finished_at).where(Run.id.in_(chunk)))
        found.update((run_id, (status, finished)) for run_id, status, finished in rows)
    return ExpiredFiles(
        ended=[
            run_id
            for run_id, (status, finished) in found.items()
            if status in TERMINAL and finished is not None and finished <= now - keep_for
        ],
        unknown=[run_id for run_id in run_ids if run_id not in found],
    )


def record_files_removed(session: Session, run_id: str, *, now: datetime, kept: timedelta) -> None:
    """Say on the run that its folder is gone, unless the run is gone too."""
    reason = (
        "the run's folder was removed: folders are kept "
        f"{format_duration(kept)} after their runs end (ROUTINED_RUN_FILES_MAX_AGE)"
    )
    with contextlib.suppress(LookupError):  # its routine was deleted meanwhile
        add_event(session, run_id, "files.removed", now=now, reason=reason)


# Well under every store's limit on bound parameters (SQLite's is 32,766).
_IDS_PER_STATEMENT = 500


def session_url(public_url: str, session_id: str) -> str:
    return f"{public_url}/sessions/{session_id}"


def with_routine_name() -> Select[Run, str]:
    """Runs with their routine's name, for `summary`."""
    return select(Run, Routine.name).join(Routine)


def summary(run: Run, routine_name: str, *, public_url: str) -> dict[str, Any]:
    """A run's state, as every view of it starts (`views.run_view` adds its results)."""
    return {
        "id": run.id,
        "session_id": run.session_id,
        "session_url": session_url(public_url, run.session_id),
        "routine": routine_name,
        "status": run.status,
        "trigger": run.trigger_type,
        "trigger_id": run.trigger_id,
        "branches": run.branches,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "error": run.error,
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
