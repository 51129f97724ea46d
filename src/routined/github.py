"""GitHub deliveries, decided: which routines an event starts, and why the others not.

`routined.webhooks` records each delivery and answers GitHub at once; the
`Matcher` here takes recorded deliveries in order and decides each in one
transaction: it keeps track of where the app is installed, and for every GitHub
trigger on the delivery's repository records one decision (a `fires` row with
the delivery's id) with a reason a person can read — fired run X, a filter that
did not match and what it got, dropped by a cap, app not installed, a
concurrency policy. A redelivery never reaches here twice: the delivery id is
the row's key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from routined import fires, github_events, limits, runs
from routined.config import Settings
from routined.db import count_up_to, rows_at_most, table_of
from routined.fires import Outcome, Overlap
from routined.models import (
    Delivery,
    Installation,
    InstallationRepository,
    Routine,
    Run,
    Trigger,
)
from routined.wakeup import Loop

log = logging.getLogger(__name__)

MAX_PAYLOAD_TEXT = 200_000
# Deliveries decided in one transaction: few, so the store's write lock (SQLite) and
# the accounts held are given back soon, to the receiver and the fire endpoint.
_BATCH = 10


class Matcher(Loop):
    """Decides recorded deliveries; woken by the receiver, polling as a fallback."""

    doing = "github: deciding deliveries"

    def step(self, stopping: Callable[[], bool]) -> float:
        self.run_pending(stopping)
        return self.settings.poll_interval

    def run_pending(self, stopping: Callable[[], bool] = lambda: False) -> int:
        """Decide every recorded delivery; return how many runs they started."""
        started_total = 0
        while not stopping():
            with self.store.transaction(readonly=True) as session:
                pending = session.scalar(
                    select(Delivery.id).where(Delivery.processed_at.is_(None)).limit(1)
                )
            if pending is None:
                break
            with self.store.transaction() as session:
                decided, started = decide_pending(session, now=self.clock(), settings=self.settings)
            started_total += started
            if started:
                self.on_run_created()
            if decided == 0:
                break  # another process holds them: it decides them
        return started_total


def decide_pending(session: Session, *, now: datetime, settings: Settings) -> tuple[int, int]:
    """Decide one batch of recorded deliveries, oldest first; (decided, runs started)."""
    statement = (
        select(Delivery)
        .where(Delivery.processed_at.is_(None))
        .order_by(Delivery.received_at, Delivery.id)
        .limit(_BATCH)
    )
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True)
    deliveries = list(session.scalars(statement))
    # Every account these deliveries may start runs of, held at once and in order, as
    # fires and the scheduler hold theirs: one at a time, the batch could deadlock
    # with them.
    repositories = {d.repository.lower() for d in deliveries if d.repository}
    limits.hold_accounts(
        session,
        session.scalars(
            select(Routine.account_id)
            .join(Trigger)
            .where(Trigger.type == "github", Trigger.repository.in_(repositories))
        ),
    )
    started = 0
    for delivery in deliveries:
        try:
            with session.begin_nested():
                outcome, count = decide(session, delivery, now=now, settings=settings)
        except Exception as error:
            log.exception("github: deciding delivery %s failed", delivery.id)
            outcome, count = f"not decided: {type(error).__name__}: {error}"[:1000], 0
        delivery.processed_at = now
        delivery.outcome = outcome
        started += count
    return len(deliveries), started


def decide(
    session: Session, delivery: Delivery, *, now: datetime, settings: Settings
) -> tuple[str, int]:
    """What the delivery did, in a line, and how many runs it started."""
    try:
        payload = json.loads(delivery.body)
    except ValueError:
        return "not JSON; nothing decided", 0
    if delivery.event == "ping":
        return f"ping from hook {payload.get('hook_id')}: {payload.get('zen', '')}".strip(), 0
    if delivery.event in ("installation", "installation_repositories"):
        return track_installation(session, delivery.event, payload, now=now), 0
    if delivery.repository is None:
        return f"{_name(delivery)} names no repository; no routine listens to it", 0
    repository = delivery.repository.lower()
    if delivery.installation_id is not None:
        _learn(session, delivery.installation_id, repository, now=now)
    rows = _listening(session, repository)
    if not rows:
        return f"no routine listens to {delivery.repository}", 0
    started = 0
    lines = []
    decided = []
    for trigger, routine in rows:
        outcome, reason, run = _decide_trigger(
            session, delivery, payload, trigger, routine, now=now, settings=settings
        )
        decided.append(
            fires.row(
                routine_id=routine.id,
                trigger_id=trigger.id,
                trigger_type="github",
                outcome=outcome,
                reason=reason,
                now=now,
                run_id=None if run is None else run.id,
                delivery_id=delivery.id,
            )
        )
        started += run is not None
        lines.append(f"{routine.name}: {outcome}")
    fires.record_all(session, decided)  # one statement: most decisions are skips
    return f"{_name(delivery)} on {delivery.repository}: " + "; ".join(lines), started


def _listening(session: Session, repository: str) -> list[tuple[Trigger, Routine]]:
    """The GitHub triggers on `repository` (lower case), with their routines, in order."""
    return [
        (trigger, routine)
        for trigger, routine in session.execute(
            select(Trigger, Routine)
            .join(Routine)
            .where(Trigger.type == "github", Trigger.repository == repository)
            .order_by(Routine.name, Trigger.position)
        )
    ]


@dataclass(frozen=True)
class Verdict:
    """What a delivery means for one trigger, before anything is written."""

    outcome: Outcome
    reason: str
    key: str | None = None  # the run's concurrency key
    serial: bool = False  # the run waits for the key's active run (queue_one)
    cancel: tuple[str, ...] = ()  # runs it supersedes first (cancel_previous)


def evaluate(
    session: Session,
    delivery: Delivery,
    payload: dict[str, Any],
    trigger: Trigger,
    routine: Routine,
    *,
    now: datetime,
    settings: Settings,
) -> Verdict:
    """Decide one trigger: events and filters, the app, the routine's state, the caps,
    and the concurrency policy. Reads only; `replay` shows it as it would be today."""
    config = trigger.config
    matched = github_events.match(
        config["repository"],
        github_events.parse_events(config["events"]),
        github_events.parse_filters(config.get("filters", [])),
        delivery.event,
        payload,
    )
    if not matched.matched:
        return Verdict(Outcome.SKIPPED, matched.reason)
    if delivery.installation_id is None:
        return Verdict(
            Outcome.SKIPPED,
            f"app not installed: the delivery names no installation of the GitHub App on "
            f"{delivery.repository} (a repository webhook?); runs need the app to clone and push",
        )
    if routine.paused_at is not None:
        return Verdict(Outcome.SKIPPED, f"{matched.reason}; the routine is paused")
    account = limits.hold_account(session, routine)
    allowed = limits.check(
        session, routine, account, "github", limits=limits.Limits.of(settings), now=now
    )
    if not allowed.allowed:
        return Verdict(Outcome.DROPPED, f"dropped: {allowed.reason}")
    capped = _cap(session, routine, now=now, settings=settings)
    if capped is not None:
        return Verdict(Outcome.DROPPED, f"dropped: cap: {capped}")
    reason = f"{matched.reason}; delivery {delivery.id}"
    concurrency = config.get("concurrency")
    if not concurrency:
        return Verdict(Outcome.FIRED, reason)
    try:
        key = github_events.render_key(concurrency["key"], payload)
    except github_events.KeyTemplateError as error:
        return Verdict(Outcome.FIRED, f"{reason}; no concurrency key ({error})")
    decision, cancel = _concurrency(session, routine, key, Overlap(concurrency["policy"]), reason)
    reason = decision.reason
    if cancel:
        reason += f"; supersedes {', '.join(cancel)} (concurrency: cancel_previous)"
    return Verdict(decision.outcome, reason, key, decision.serial, tuple(cancel))


def _decide_trigger(
    session: Session,
    delivery: Delivery,
    payload: dict[str, Any],
    trigger: Trigger,
    routine: Routine,
    *,
    now: datetime,
    settings: Settings,
) -> tuple[Outcome, str, Run | None]:
    verdict = evaluate(session, delivery, payload, trigger, routine, now=now, settings=settings)
    if verdict.outcome is not Outcome.FIRED:
        return verdict.outcome, verdict.reason, None
    reason = verdict.reason
    for run_id in verdict.cancel:
        became = runs.cancel(
            session, run_id, now=now, reason=f"superseded by delivery {delivery.id}"
        )
        reason += f"; {run_id} {became or 'had already ended'}"
    run = runs.create(
        session,
        routine,
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
    session: Session, delivery: Delivery, *, now: datetime, settings: Settings
) -> list[dict[str, Any]]:
    """What the delivery would do against today's routines ("would this have fired?"),
    one row per GitHub trigger on its repository; nothing is written."""
    if delivery.repository is None:
        return []
    payload = json.loads(delivery.body)
    rows = _listening(session, delivery.repository.lower())
    return [
        {
            "routine": routine.name,
            "account_id": routine.account_id,
            "trigger_id": trigger.id,
            "outcome": verdict.outcome.value,
            "reason": verdict.reason,
        }
        for trigger, routine in rows
        for verdict in [
            evaluate(session, delivery, payload, trigger, routine, now=now, settings=settings)
        ]
    ]


def _concurrency(
    session: Session, routine: Routine, key: str, policy: Overlap, reason: str
) -> tuple[fires.Decision, list[str]]:
    """The trigger's concurrency policy against the routine's runs with the same key."""
    in_flight = fires.in_flight(session, routine.id, key=key)
    wanted = fires.Decision(slot=datetime.min, outcome=Outcome.FIRED, reason=f"{reason}; key {key}")
    decided, cancel = fires.overlap([wanted], policy, in_flight)
    return decided[0], cancel


def _cap(session: Session, routine: Routine, *, now: datetime, settings: Settings) -> str | None:
    """Why the hourly caps on GitHub-started runs leave no room, or None."""
    if rows_at_most(session, table_of(Run)) < min(
        settings.github_routine_hourly_cap, settings.github_account_hourly_cap
    ):
        return None  # the store holds fewer runs than either cap: neither is reached
    hour = now.replace(minute=0, second=0, microsecond=0)
    started = select(Run.id).where(Run.trigger_type == "github", Run.created_at >= hour)
    per_routine = settings.github_routine_hourly_cap
    if (
        count_up_to(session, started.where(Run.routine_id == routine.id), per_routine)
        >= per_routine
    ):
        return (
            f"{routine.name} started {per_routine} runs from GitHub events this hour "
            "(ROUTINED_GITHUB_ROUTINE_HOURLY_CAP)"
        )
    per_account = settings.github_account_hourly_cap
    of_account = started.join(Routine).where(Routine.account_id == routine.account_id)
    if count_up_to(session, of_account, per_account) >= per_account:
        return (
            f"its account started {per_account} runs from GitHub events this hour "
            "(ROUTINED_GITHUB_ACCOUNT_HOURLY_CAP)"
        )
    return None


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


def context(delivery: Delivery, payload: dict[str, Any]) -> dict[str, Any]:
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


def track_installation(
    session: Session, event: str, payload: dict[str, Any], *, now: datetime
) -> str:
    """Keep `installations` as GitHub tells: created, deleted, suspended, repositories
    added and removed."""
    installation = payload.get("installation")
    if not isinstance(installation, dict) or not isinstance(installation.get("id"), int):
        return f"{event} names no installation; nothing recorded"
    action = payload.get("action")
    installation_id = installation["id"]
    if event == "installation" and action == "deleted":
        session.execute(delete(Installation).where(Installation.id == installation_id))
        return f"installation {installation_id} deleted"
    row = session.get(Installation, installation_id)
    account = _mapping(installation.get("account"))
    if row is None:
        row = Installation(id=installation_id, updated_at=now)
        session.add(row)
    row.account_login = str(account.get("login", ""))
    row.repository_selection = str(installation.get("repository_selection", "selected"))
    row.updated_at = now
    if action == "suspend":
        row.suspended_at = now
    elif action == "unsuspend":
        row.suspended_at = None
    session.flush()
    added = _names(payload.get("repositories")) + _names(payload.get("repositories_added"))
    removed = _names(payload.get("repositories_removed"))
    for name in added:
        _learn(session, installation_id, name, now=now)
    if removed:
        session.execute(
            delete(InstallationRepository).where(
                InstallationRepository.installation_id == installation_id,
                InstallationRepository.repository.in_(removed),
            )
        )
    changes = [f"{len(added)} repositories added"] * bool(added) + [
        f"{len(removed)} removed"
    ] * bool(removed)
    return f"installation {installation_id} ({row.account_login}) {action}" + (
        f": {', '.join(changes)}" if changes else ""
    )


def installed_on(session: Session, repository: str) -> bool:
    """Whether the app is known to be installed, and not suspended, on `repository`."""
    return (
        session.scalar(
            select(InstallationRepository.installation_id)
            .join(Installation)
            .where(
                InstallationRepository.repository == repository.lower(),
                Installation.suspended_at.is_(None),
            )
            .limit(1)
        )
        is not None
    )


def _learn(session: Session, installation_id: int, repository: str, *, now: datetime) -> None:
    """Remember that the installation covers the repository (its events say so).
    Upserts: matchers in two processes may learn the same thing at once."""
    known = session.execute(
        select(InstallationRepository.installation_id).where(
            InstallationRepository.installation_id == installation_id,
            InstallationRepository.repository == repository.lower(),
        )
    ).first()
    if known is not None:
        return  # the usual case, found with one read
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(table_of(Installation))
        .values(
            id=installation_id,
            account_login=repository.split("/")[0],
            repository_selection="selected",
            updated_at=now,
        )
        .on_conflict_do_nothing()
    )
    session.execute(
        insert(table_of(InstallationRepository))
        .values(installation_id=installation_id, repository=repository.lower())
        .on_conflict_do_nothing()
    )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _names(repositories: Any) -> list[str]:
    if not isinstance(repositories, list):
        return []
    return [
        r["full_name"].lower()
        for r in repositories
        if isinstance(r, dict) and isinstance(r.get("full_name"), str)
    ]


def _name(delivery: Delivery) -> str:
    return f"{delivery.event}.{delivery.action}" if delivery.action else delivery.event
