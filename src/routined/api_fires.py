"""Fires over the API: recorded in batches, in the order they came, each admitted or
refused with its reason (`admission.admit`). No HTTP here: `routined.http.fire` reads
a fire's request and answers it; this decides and records it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, insert, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from routined import admission, fires, runs, trigger_tokens
from routined.db import Store, rows_at_most, table_of
from routined.errors import NotFound, OutsideFailure, Refused, RoutinedError, Unauthenticated
from routined.models import Account, IdempotencyKey, Routine, Run, Trigger
from routined.usage import holding

log = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = timedelta(hours=24)
OVERLOADED_RETRY_AFTER = 5  # seconds; workers take queued runs in about that


class NotRecorded(OutsideFailure):
    """A fire the store did not take; the log says why, the caller only that it failed."""

    def __init__(self) -> None:
        super().__init__("internal error; the server log has the details")


def no_trigger(trigger_id: str) -> NotFound:
    shown = trigger_id if len(trigger_id) <= 64 else trigger_id[:64] + "…"
    return NotFound(f"no API trigger {shown}")


@dataclass(frozen=True)
class FireRequest:
    trigger_id: str
    token: str
    text: str | None
    idempotency_key: str | None
    now: datetime  # when it arrived


def record(
    store: Store,
    requests: list[FireRequest],
    *,
    bounds: admission.Bounds,
    on_run_created: Callable[[], None],
    refusal_reason: Callable[[Refused], str] = str,
) -> list[str | RoutinedError]:
    """Record fires, in the order they came: for each, the session it started (or
    started before, for a retry), or the error to answer with.

    A refusal is recorded too, with its reason: it answers "why did my call not
    start a run?" in `routined events`. The fires share one transaction; should it
    fail (a key another server took meanwhile, a routine removed meanwhile, a value
    the database refuses), each is recorded again on its own, so that only the fire
    concerned fails, as it would have alone: with a 500 and one line in the log.
    A store failing as a whole (unreachable, or locked past its timeout) fails them
    all at once instead: one by one, each would wait for it as long again.
    """
    try:
        answers, started = _record_batch(store, requests, bounds, refusal_reason)
    except (OperationalError, InterfaceError) as error:
        log.error("%d fires were not recorded: %s", len(requests), _described(error))
        return [NotRecorded() for _ in requests]
    except Exception as failure:  # noqa: BLE001 - whose it is, the fires alone tell
        if len(requests) == 1:
            return [_failed_alone(requests[0], failure)]
        answers, started = [], 0
        for request in requests:
            try:
                alone, count = _record_batch(store, [request], bounds, refusal_reason)
            except Exception as error:  # noqa: BLE001 - answered to this fire's caller alone
                alone, count = [_failed_alone(request, error)], 0
            answers += alone
            started += count
    if started:
        on_run_created()
    return answers


def _failed_alone(request: FireRequest, error: Exception) -> NotRecorded:
    """The answer to a fire that cannot be recorded even on its own, logged once: a
    value the database (or its driver) refuses says why in a line; anything else is a
    bug, worth its traceback."""
    refused = isinstance(error, DBAPIError | UnicodeError)
    log.error(
        "a fire through trigger %r was not recorded: %s",
        request.trigger_id[:64],
        _described(error),
        exc_info=None if refused else error,
    )
    return NotRecorded()


def _described(error: Exception) -> str:
    """An error in a line: for a database's, the driver's own message, without the
    statement and its parameters (which hold token lookups) that SQLAlchemy adds."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _record_batch(
    store: Store,
    requests: list[FireRequest],
    bounds: admission.Bounds,
    refusal_reason: Callable[[Refused], str],
) -> tuple[list[str | RoutinedError], int]:
    """The answers, and how many runs were started."""
    with store.transaction() as session:
        batch = _FireBatch(session, requests, bounds, refusal_reason)
        answers = [batch.decide(request) for request in requests]
        batch.write()
    return answers, len(batch.started)


class _FireBatch:
    """Fires decided in one transaction, in order, each seeing the ones before it.

    What they need is read once for all of them: the triggers with their
    routines and accounts in one statement, the accounts held until commit (fires
    racing for an account's last run take turns, also across servers sharing a
    PostgreSQL database); then whether each distinct token is live, at this
    moment: a revoked token stops working at once. Their rows are written
    together at the end, unless the store may hold enough runs to reach a cap:
    then each fire counts runs, and the rows before it are written first.
    """

    def __init__(
        self,
        session: Session,
        requests: list[FireRequest],
        bounds: admission.Bounds,
        refusal_reason: Callable[[Refused], str],
    ) -> None:
        self.session = session
        self.bounds = bounds
        self.refusal_reason = refusal_reason
        wanted = sorted({request.trigger_id for request in requests})
        self.routines: dict[str, tuple[Trigger, Routine]] = {}
        self.accounts: dict[str, Account] = {}
        for trigger, routine, account in session.execute(_triggers_held(), {"ids": wanted}):
            self.routines[trigger.id] = (trigger, routine)
            self.accounts[account.id] = account
        self.live = {
            (trigger_id, token): trigger_tokens.verify(session, trigger_id, token)
            for trigger_id, token in {(r.trigger_id, r.token) for r in requests}
            if self._api_trigger(trigger_id) is not None
        }
        # Found once the accounts are held: no run of theirs can be added meanwhile.
        self.runs_at_most = rows_at_most(session, table_of(Run))
        self.started: list[runs.NewRun] = []  # by this batch, written or not
        self.keys: dict[tuple[str, str], str] = {}  # (trigger, key) → session, this batch's
        self.unwritten_runs: list[runs.NewRun] = []
        self.unwritten_fires: list[dict[str, Any]] = []
        self.unwritten_keys: list[dict[str, Any]] = []

    def _api_trigger(self, trigger_id: str) -> tuple[Trigger, Routine] | None:
        found = self.routines.get(trigger_id)
        return found if found is not None and found[0].type == "api" else None

    def decide(self, request: FireRequest) -> str | RoutinedError:
        found = self._api_trigger(request.trigger_id)
        if found is None:
            return no_trigger(request.trigger_id)
        trigger, routine = found
        if not self.live[(trigger.id, request.token)]:
            return Unauthenticated("invalid token for this trigger")
        account = self.accounts[routine.account_id]
        key = request.idempotency_key
        if key is not None:
            # A retry is answered with its first session, whatever would refuse a
            # new fire now: its run exists, and the caller must learn that.
            earlier = self.keys.get((trigger.id, key)) or _earlier_fire(
                self.session, trigger.id, key, request.now
            )
            if earlier is not None:
                return earlier
        # Every run the store may hold now, this batch's included.
        at_most = self.runs_at_most + len(self.started)
        if at_most >= min(self.bounds.max_queued, self.bounds.limits.lowest_cap(account.plan)):
            self.write()  # a count may be made below: it must see this batch's runs
        admitted = admission.admit(
            self.session,
            admission.Kind.API,
            routine,
            account,
            bounds=self.bounds,
            now=request.now,
            runs_at_most=at_most,
        )
        if not admitted.admitted:
            refusal = _refused(admitted)
            self._decided(routine, trigger, request, self.refusal_reason(refusal))
            return refusal
        reason = f"fired over the API through trigger {trigger.id}"
        if admitted.reason:
            reason += f"; {admitted.reason}"
        run = runs.new(
            routine,
            trigger_type="api",
            trigger_id=trigger.id,
            text=request.text,
            now=request.now,
            reason=reason,
        )
        self.started.append(run)
        self.unwritten_runs.append(run)
        self._decided(routine, trigger, request, reason, run)
        if key is not None:
            self.keys[(trigger.id, key)] = run.session_id
            self.unwritten_keys.append(
                {"trigger_id": trigger.id, "key": key, "run_id": run.id, "created_at": request.now}
            )
        return run.session_id

    def _decided(
        self,
        routine: Routine,
        trigger: Trigger,
        request: FireRequest,
        reason: str,
        run: runs.NewRun | None = None,
    ) -> None:
        self.unwritten_fires.append(
            fires.row(
                routine_id=routine.id,
                trigger_id=trigger.id,
                trigger_type="api",
                outcome=fires.Outcome.REFUSED if run is None else fires.Outcome.FIRED,
                reason=reason,
                now=request.now,
                run_id=None if run is None else run.id,
            )
        )

    def write(self) -> None:
        """Write the rows decided so far, runs first: the others refer to them."""
        runs.insert_all(self.session, self.unwritten_runs)
        fires.record_all(self.session, self.unwritten_fires)
        if self.unwritten_keys:
            self.session.execute(insert(table_of(IdempotencyKey)), self.unwritten_keys)
        self.unwritten_runs, self.unwritten_fires, self.unwritten_keys = [], [], []


@functools.cache
def _triggers_held() -> Select[Trigger, Routine, Account]:
    """Triggers with their routines and accounts, the accounts held until commit;
    built once: building a statement costs more than running it."""
    return holding(
        select(Trigger, Routine, Account)
        .join(Routine, Routine.id == Trigger.routine_id)
        .join(Account, Account.id == Routine.account_id)
        .where(Trigger.id.in_(bindparam("ids", expanding=True)))
    )


def _refused(admitted: admission.Admission) -> Refused:
    """A refusal as the caller is told it; a full queue is worth trying again shortly."""
    retry_after = (
        OVERLOADED_RETRY_AFTER
        if admitted.code is admission.Code.QUEUE_FULL
        else admitted.retry_after
    )
    return Refused(admitted.reason, code=admitted.code, retry_after=retry_after)


def _earlier_fire(session: Session, trigger_id: str, key: str, now: datetime) -> str | None:
    """The session an earlier fire with this key started, if it is less than a day old."""
    earlier = session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.trigger_id == trigger_id, IdempotencyKey.key == key
        )
    )
    if earlier is None:
        return None
    if now - earlier.created_at >= IDEMPOTENCY_WINDOW:
        session.delete(earlier)
        session.flush()  # the key is free for this fire
        return None
    return session.scalar(select(Run.session_id).where(Run.id == earlier.run_id))
