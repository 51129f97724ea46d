"""GitHub deliveries, decided: which routines an event starts, and why the others not.

`routined.github.webhooks` records each delivery and answers GitHub at once; the
`Matcher` here takes recorded deliveries in order and decides each: it keeps
track of where the app is installed, and for every GitHub trigger on the
delivery's repository records one decision (a `fires` row with the delivery's
id) with a reason a person can read — fired run X, a filter that did not match
and what it got, dropped by a cap, app not installed, a concurrency policy. A
redelivery never reaches here twice: the delivery id is the row's key.

Deciding is done in two steps, so that the store's single writer (SQLite) is held
only briefly: `prepare` reads, parses and matches a batch of deliveries in a
read-only transaction; `decide_prepared` then claims each (one another matcher
decided meanwhile is left alone) and, in a short transaction, writes the skips
found and decides what may fire against the store as it is then.

Over 500 lines and still one concept: reading, matching and deciding a delivery share
its steps, and a decision must read the same way in `decide` and `replay`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from routined import admission, fires, jsonbody, runs, usage
from routined.config import Settings
from routined.db import table_of
from routined.fires import Outcome
from routined.github import events as github_events
from routined.github import installations
from routined.models import (
    Account,
    Routine,
    Run,
    Trigger,
    WebhookDelivery,
)
from routined.routines.policy import Overlap
from routined.wakeup import Loop

log = logging.getLogger(__name__)

MAX_PAYLOAD_TEXT = 200_000
# Deliveries prepared at a time.
_BATCH = 10
# How long one transaction may go on writing decisions (it finishes the delivery it
# is on): meanwhile it holds the store's write lock (SQLite), which the receiver
# and the fire endpoint wait for.
_TRANSACTION_BUDGET = 0.003


class Matcher(Loop):
    """Decides recorded deliveries; woken by the receiver, polling as a fallback."""

    doing = "github: deciding deliveries"

    def step(self, stopping: Callable[[], bool]) -> float:
        self.run_pending(stopping)
        return self.settings.poll_interval

    def run_pending(self, stopping: Callable[[], bool] = lambda: False) -> int:
        """Decide every recorded delivery; return how many runs they started.

        Most of the work (reading bodies, parsing, matching filters) is done in a
        read-only transaction, which waits for no writer and holds up none; the
        transactions that write the decisions then have little left to do, and
        each gives the store back after _TRANSACTION_BUDGET.
        """
        started_total = 0
        prepared: deque[Prepared] = deque()
        while not stopping():
            if not prepared:
                with self.store.transaction(readonly=True) as session:
                    prepared.extend(prepare(session))
                if not prepared:
                    break
            with self.store.transaction() as session:
                decided, started = decide_prepared(
                    session,
                    prepared,
                    now=self.clock(),
                    settings=self.settings,
                    enough=functools.partial(_past, time.monotonic() + _TRANSACTION_BUDGET),
                )
            started_total += started
            if started:
                self.on_run_created()
            if decided == 0 and not prepared:
                break  # another process decided them
        return started_total


def _past(moment: float) -> bool:
    return time.monotonic() > moment


@dataclass(frozen=True)
class Delivered:
    """A recorded delivery with its payload parsed: what deciding a trigger reads of it."""

    delivery: WebhookDelivery
    payload: dict[str, Any]


@dataclass
class Prepared:
    """A delivery read, parsed and matched against its repository's triggers as the
    store stood a moment before its decision is written."""

    delivery: WebhookDelivery
    payload: dict[str, Any] | None  # None: not a JSON object
    listening: list[Listener]
    # The triggers it skips, by id, with why: only the others need the transaction
    # that writes (the app, the caps, the concurrency policy, a run).
    skipped: dict[str, Verdict]
    learn: bool  # it tells of an installation on its repository routined did not know

    @property
    def may_fire(self) -> list[Listener]:
        return [one for one in self.listening if one.trigger_id not in self.skipped]


class Listener(NamedTuple):
    """A GitHub trigger as `prepare` needs it: plain values, read without the ORM's
    bookkeeping (ten of them for every delivery)."""

    trigger_id: str
    config: dict[str, Any]
    routine_id: str
    routine_name: str
    account_id: str
    paused: bool
    account_name: str
    disabled: bool  # its account is


def prepare(session: Session) -> list[Prepared]:
    """The oldest undecided deliveries, a batch of them, prepared (read only)."""
    deliveries = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.processed_at.is_(None))
        .order_by(WebhookDelivery.received_at, WebhookDelivery.id)
        .limit(_BATCH)
    )
    return [_prepare_one(session, delivery) for delivery in deliveries]


def _prepare_one(session: Session, delivery: WebhookDelivery) -> Prepared:
    try:
        payload = jsonbody.parse_json(delivery.body)
    except ValueError:  # UnfitJson among them: recorded before the receiver refused it
        payload = None
    if not isinstance(payload, dict):
        return Prepared(delivery, None, [], {}, learn=False)
    listening: list[Listener] = []
    skipped: dict[str, Verdict] = {}
    if delivery.repository is not None and delivery.event not in installations.EVENTS:
        listening = _listeners(session, delivery.repository)
        delivered = Delivered(delivery, payload)
        for one in listening:
            held = admission.standing(
                admission.Kind.GITHUB,
                routine=one.routine_name,
                paused=one.paused,
                account=one.account_name,
                disabled=one.disabled,
            )
            verdict = _prejudge(delivered, one.config, held)
            if isinstance(verdict, Verdict):
                skipped[one.trigger_id] = verdict
    learn = (
        delivery.installation_id is not None
        and delivery.repository is not None
        and not installations.knows(session, delivery.installation_id, delivery.repository)
    )
    return Prepared(delivery, payload, listening, skipped, learn)


def decide_prepared(
    session: Session,
    prepared: deque[Prepared],
    *,
    now: datetime,
    settings: Settings,
    enough: Callable[[], bool] = lambda: False,
) -> tuple[int, int]:
    """Decide prepared deliveries in order, taking them off `prepared`, at least one,
    until `enough` says so; one another process decided meanwhile is left alone.
    (decided, runs started)"""
    # Every account these deliveries may start runs of, held at once and in order, as
    # fires and the scheduler hold theirs: one at a time, the batch could deadlock
    # with them.
    usage.hold_accounts(
        session, (listener.account_id for one in prepared for listener in one.may_fire)
    )
    started = decided = 0
    while prepared:
        one = prepared.popleft()
        delivery = one.delivery
        claimed = session.execute(_CLAIM, {"delivery_id": delivery.id, "now": now})
        if claimed.rowcount == 0:  # type: ignore[attr-defined]
            continue
        try:
            try:
                with session.begin_nested():
                    outcome, count = decide(session, one, now=now, settings=settings)
            except IntegrityError:
                # A routine it was prepared against is gone: prepared again, as is.
                with session.begin_nested():
                    again = _prepare_one(session, delivery)
                    outcome, count = decide(session, again, now=now, settings=settings)
        except Exception as error:
            log.exception("github: deciding delivery %s failed", delivery.id)
            outcome, count = f"not decided: {type(error).__name__}: {error}"[:1000], 0
        session.execute(_OUTCOME, {"delivery_id": delivery.id, "outcome": outcome})
        started += count
        decided += 1
        if enough():
            break
    return decided, started


# Built once, on the table: the ORM's bulk update costs more than the statement.
_DELIVERIES = table_of(WebhookDelivery)
_CLAIM = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("delivery_id"), _DELIVERIES.c.processed_at.is_(None))
    .values(processed_at=bindparam("now"))
)
_OUTCOME = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("delivery_id"))
    .values(outcome=bindparam("outcome"))
)


def decide(
    session: Session, prepared: Prepared, *, now: datetime, settings: Settings
) -> tuple[str, int]:
    """What the delivery did, in a line, and how many runs it started."""
    delivery, payload = prepared.delivery, prepared.payload
    if payload is None:
        return "not a JSON object; nothing decided", 0
    if delivery.event == "ping":
        return f"ping from hook {payload.get('hook_id')}: {payload.get('zen', '')}".strip(), 0
    if delivery.event in installations.EVENTS:
        return installations.track(session, delivery.event, payload, now=now), 0
    if delivery.repository is None:
        return f"{_name(delivery)} names no repository; no routine listens to it", 0
    if prepared.learn and delivery.installation_id is not None:
        installations.learn(session, delivery.installation_id, delivery.repository, now=now)
    if not prepared.listening:
        return f"no routine listens to {delivery.repository}", 0
    delivered = Delivered(delivery, payload)
    started = 0
    lines = []
    decided = []
    for listener in prepared.listening:
        skipped = prepared.skipped.get(listener.trigger_id)
        if skipped is not None:
            outcome, reason, run = skipped.outcome, skipped.reason, None
        else:
            # As it is now: it may have changed since the delivery was prepared.
            trigger = session.get(Trigger, listener.trigger_id)
            if trigger is None:
                lines.append(f"{listener.routine_name}: its trigger was removed meanwhile")
                continue
            outcome, reason, run = _decide_trigger(
                session, delivered, trigger, now=now, settings=settings
            )
        decided.append(
            fires.row(
                routine_id=listener.routine_id,
                trigger_id=listener.trigger_id,
                trigger_type="github",
                outcome=outcome,
                reason=reason,
                now=now,
                run_id=None if run is None else run.id,
                delivery_id=delivery.id,
            )
        )
        started += run is not None
        lines.append(f"{listener.routine_name}: {outcome}")
    fires.record_all(session, decided)  # one statement: most decisions are skips
    return f"{_name(delivery)} on {delivery.repository}: " + "; ".join(lines), started


def _listeners(session: Session, repository: str) -> list[Listener]:
    """The GitHub triggers on `repository`, with what deciding needs of their routines,
    in order."""
    return [
        Listener(*row) for row in session.execute(_LISTENERS, {"repository": repository.lower()})
    ]


# Built once: building a statement costs more than running it.
_LISTENERS = (
    select(
        Trigger.id,
        Trigger.config,
        Routine.id,
        Routine.name,
        Routine.account_id,
        Routine.paused_at.is_not(None),
        Account.name,
        Account.disabled_at.is_not(None),
    )
    .select_from(Trigger)
    .join(Routine, Routine.id == Trigger.routine_id)
    .join(Account, Account.id == Routine.account_id)
    .where(Trigger.type == "github", Trigger.repository == bindparam("repository"))
    .order_by(Routine.name, Trigger.position)
)


@dataclass(frozen=True)
class Verdict:
    """What a delivery means for one trigger, before anything is written."""

    outcome: Outcome
    reason: str
    key: str | None = None  # the run's concurrency key
    serial: bool = False  # the run waits for the key's active run (queue_one)
    cancel: tuple[str, ...] = ()  # runs it supersedes first (cancel_previous)


def _prejudge(
    delivered: Delivered, config: dict[str, Any], held: admission.Admission | None
) -> Verdict | github_events.Verdict:
    """What can be told of one trigger from the delivery alone (its configuration, and
    `held`: what admission says of its routine's and account's state, if known): why
    it skips, or the match to take further."""
    delivery, payload = delivered.delivery, delivered.payload
    events, filters = _parsed(json.dumps(config, sort_keys=True))
    matched = github_events.match(config["repository"], events, filters, delivery.event, payload)
    if not matched.matched:
        return Verdict(Outcome.SKIPPED, matched.reason)
    if delivery.installation_id is None:
        return Verdict(
            Outcome.SKIPPED,
            f"app not installed: the delivery names no installation of the GitHub App on "
            f"{delivery.repository} (a repository webhook?); runs need the app to clone and push",
        )
    if held is not None and not held.admitted:
        return _not_admitted(matched, held)
    return matched


def _not_admitted(matched: github_events.Verdict, refused: admission.Admission) -> Verdict:
    """How a delivery records admission's refusal: an event is not kept for later, so
    a limit drops it; a disabled account or a paused routine skips it."""
    if refused.code is admission.Code.OVER_LIMIT:
        return Verdict(Outcome.DROPPED, f"dropped: {refused.reason}")
    if refused.code is admission.Code.OVER_GITHUB_CAP:
        return Verdict(Outcome.DROPPED, f"dropped: cap: {refused.reason}")
    return Verdict(Outcome.SKIPPED, f"{matched.reason}; {refused.reason}")


def evaluate(
    session: Session, delivered: Delivered, trigger: Trigger, *, now: datetime, settings: Settings
) -> Verdict:
    """Decide one trigger: events and filters, the app, admission (the account, the
    routine's state, the limits and caps), and the concurrency policy. Reads only;
    `replay` shows it as it would be today."""
    matched = _prejudge(delivered, trigger.config, None)
    if isinstance(matched, Verdict):
        return matched
    routine = trigger.routine
    admitted = admission.admit_now(
        session, admission.Kind.GITHUB, routine, settings=settings, now=now
    )
    if not admitted.admitted:
        return _not_admitted(matched, admitted)
    reason = f"{matched.reason}; delivery {delivered.delivery.id}"
    concurrency = trigger.config.get("concurrency")
    if not concurrency:
        return Verdict(Outcome.FIRED, reason)
    try:
        key = github_events.render_key(concurrency["key"], delivered.payload)
    except github_events.KeyTemplateError as error:
        return Verdict(Outcome.FIRED, f"{reason}; no concurrency key ({error})")
    decision, cancel = _concurrency(session, routine, key, Overlap(concurrency["policy"]), reason)
    reason = decision.reason
    if cancel:
        reason += f"; supersedes {', '.join(cancel)} (concurrency: cancel_previous)"
    return Verdict(decision.outcome, reason, key, decision.serial, tuple(cancel))


@functools.lru_cache(maxsize=4096)
def _parsed(
    config: str,
) -> tuple[tuple[github_events.EventSelector, ...], tuple[github_events.Filter, ...]]:
    """A trigger's events and filters, parsed once for each distinct configuration
    (as JSON): the matcher meets the same few again with every delivery."""
    raw = json.loads(config)
    return github_events.parse_events(raw["events"]), github_events.parse_filters(
        raw.get("filters", [])
    )


def _decide_trigger(
    session: Session, delivered: Delivered, trigger: Trigger, *, now: datetime, settings: Settings
) -> tuple[Outcome, str, Run | None]:
    verdict = evaluate(session, delivered, trigger, now=now, settings=settings)
    if verdict.outcome is not Outcome.FIRED:
        return verdict.outcome, verdict.reason, None
    delivery, payload = delivered.delivery, delivered.payload
    reason = verdict.reason
    for run_id in verdict.cancel:
        became = runs.cancel(
            session, run_id, now=now, reason=f"superseded by delivery {delivery.id}"
        )
        reason += f"; {run_id} {became or 'had already ended'}"
    run = runs.create(
        session,
        trigger.routine,
        trigger_type="github",
        trigger_id=trigger.id,
        text=session_input(delivery.event, payload),
        now=now,
        reason=f"fired by GitHub: {reason}",
        serial=verdict.serial,
    )
    run.context = context(delivery, payload)
    run.concurrency_key = verdict.key
    session.flush()  # the decision row refers to it
    return Outcome.FIRED, f"fired run {run.id}: {reason}", run


def replay(
    session: Session, delivery: WebhookDelivery, *, now: datetime, settings: Settings
) -> list[dict[str, Any]]:
    """What the delivery would do against today's routines ("would this have fired?"),
    one row per GitHub trigger on its repository; nothing is written."""
    if delivery.repository is None:
        return []
    delivered = Delivered(delivery, json.loads(delivery.body))
    decisions = []
    for listener in _listeners(session, delivery.repository):
        trigger = session.get_one(Trigger, listener.trigger_id)
        verdict = evaluate(session, delivered, trigger, now=now, settings=settings)
        decisions.append(
            {
                "routine": listener.routine_name,
                "account_id": listener.account_id,
                "trigger_id": listener.trigger_id,
                "outcome": verdict.outcome.value,
                "reason": verdict.reason,
            }
        )
    return decisions


def _concurrency(
    session: Session, routine: Routine, key: str, policy: Overlap, reason: str
) -> tuple[fires.Decision, list[str]]:
    """The trigger's concurrency policy against the routine's runs with the same key."""
    in_flight = fires.in_flight(session, routine.id, key=key)
    wanted = fires.Decision(slot=datetime.min, outcome=Outcome.FIRED, reason=f"{reason}; key {key}")
    decided, cancel = fires.overlap([wanted], policy, in_flight)
    return decided[0], cancel


def session_input(event: str, payload: dict[str, Any]) -> str:
    """What the session reads of the event (inside its untrusted block): a summary,
    then the payload, cut at MAX_PAYLOAD_TEXT characters (GitHub sends up to 25 MB;
    the model needs the gist, and the summary has it)."""
    payload_text = json.dumps(payload, indent=1, ensure_ascii=False)
    if len(payload_text) > MAX_PAYLOAD_TEXT:
        payload_text = (
            payload_text[:MAX_PAYLOAD_TEXT]
            + f"\n… (cut: the payload has {len(payload_text):,} characters; the rest is on GitHub)"
        )
    text = (
        github_events.summary_text(github_events.summary(event, payload))
        + "\n\nPayload (JSON):\n"
        + payload_text
    )
    # A title may hold a NUL (JSON can say \u0000), which no store's text can keep.
    return text.replace("\x00", "")


def context(delivery: WebhookDelivery, payload: dict[str, Any]) -> dict[str, Any]:
    """What the run's workspace and delivery need: the pull request's head to fetch,
    the pull request or issue to comment on."""
    found: dict[str, Any] = {
        "delivery_id": delivery.id,
        "event": delivery.event,
        "repository": delivery.repository,
        "installation_id": delivery.installation_id,
    }
    pull = payload.get("pull_request")
    if isinstance(pull, dict) and isinstance(pull.get("number"), int):
        head = _mapping(pull.get("head"))
        head_repository = _mapping(head.get("repo")).get("full_name")
        found["pull_request"] = {
            "number": pull["number"],
            "head_ref": head.get("ref"),
            "head_sha": head.get("sha"),
            # A fork's commits must not reach the origin through a claude/ branch.
            "from_fork": str(head_repository or "").lower() != str(delivery.repository).lower(),
        }
    for kind in ("pull_request", "issue", "discussion"):
        subject = payload.get(kind)
        if isinstance(subject, dict) and isinstance(subject.get("number"), int):
            found["comment_on"] = {"kind": kind, "number": subject["number"]}
            break
    return found


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _name(delivery: WebhookDelivery) -> str:
    return f"{delivery.event}.{delivery.action}" if delivery.action else delivery.event
