"""Applying a routines file: the store made to match it by routine name, keeping trigger
ids (and so their tokens and history), so that applying the same file again changes
nothing and says so."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from routined.github import installations
from routined.ids import new_id
from routined.models import Account, Repository, Routine, Trigger
from routined.routines.spec import (
    PUSH_RULES,
    GitHubTriggerSpec,
    RoutinesFile,
    RoutineSpec,
    SpecError,
)
from routined.schedules.scheduler import arm, restagger
from routined.schedules.timing import zone
from routined.workspace import display_url


@dataclass
class Change:
    """What `apply` did to one routine."""

    name: str
    action: Literal["created", "updated", "unchanged"]
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        suffix = f": {'; '.join(self.details)}" if self.details else ""
        return f"{self.name} {self.action}{suffix}"


def apply(
    session: Session, spec: RoutinesFile, *, now: datetime, public_only: bool = False
) -> list[Change]:
    """Create or update each routine of the file by name; routines not in it stay.

    A new or changed schedule trigger is armed at its first instant after `now`;
    an unchanged one keeps its place (a `once` that ran stays done). `public_only`
    records that an account's key applied the file: its runs reach public addresses
    only (see `routined.reach`); the operator's reach what they name.
    """
    names = [routine.name for routine in spec.routines]
    existing = {
        routine.name: routine
        for routine in session.scalars(
            select(Routine)
            .where(Routine.name.in_(names))
            .options(selectinload(Routine.repositories), selectinload(Routine.triggers))
            # A scheduler deciding one of these routines finishes first; then it
            # skips them until this apply commits (see `scheduler.decide_due`).
            .with_for_update(key_share=True)
        )
    }
    accounts = {name: id_ for name, id_ in session.execute(select(Account.name, Account.id))}
    changes = []
    for index, wanted in enumerate(spec.routines):
        current = existing.get(wanted.name)
        label = f"routines[{index}] ({wanted.name})"
        account_id = accounts.get(wanted.account)
        if account_id is None:
            raise SpecError(
                f"{label}.account: there is no account {wanted.account!r}; create it with "
                f"`routined account create {wanted.account} --plan PLAN`"
            )
        if current is None:
            change = _create(session, wanted, now, label, account_id, public_only)
        else:
            change = _update(session, current, wanted, now, label, account_id, public_only)
        change.warnings = _installation_warnings(session, wanted)
        changes.append(change)
    return changes


def _create(
    session: Session,
    wanted: RoutineSpec,
    now: datetime,
    label: str,
    account_id: str,
    public_only: bool,
) -> Change:
    routine = Routine(
        id=new_id("rtn"),
        account_id=account_id,
        public_only=public_only,
        name=wanted.name,
        prompt=wanted.prompt,
        model=wanted.model,
        created_at=now,
        updated_at=now,
        **_policy(wanted),
        **runtime(wanted),
    )
    routine.repositories = [
        Repository(position=i, url=r.url, **r.push_rules())
        for i, r in enumerate(wanted.repositories)
    ]
    routine.triggers = [
        Trigger(id=new_id("trig"), position=i, type=t.type, config=t.config(), created_at=now)
        for i, t in enumerate(wanted.triggers)
    ]
    for number, trigger in enumerate(routine.triggers):
        _arm(wanted, f"{label}.triggers[{number}]", trigger, now)
    session.add(routine)
    details = [_count(len(routine.repositories), "repository", "repositories")]
    details += [_describe_trigger(t) for t in routine.triggers]
    return Change(wanted.name, "created", details)


def _policy(wanted: RoutineSpec) -> dict[str, Any]:
    return {
        "catch_up": wanted.catch_up.value,
        "catch_up_window": wanted.catch_up_window,
        "overlap": wanted.overlap.value,
        "stagger": wanted.stagger,
        "pull_requests": wanted.pull_requests,
        "comment": wanted.comment,
    }


def runtime(wanted: RoutineSpec) -> dict[str, dict[str, Any]]:
    """The run's environment, limits, agent and connectors, as the routine's row keeps
    them (read back by `routined.runs.scope`)."""
    agent = (
        {"type": "claude"}
        if wanted.agent == "claude"
        else {"type": "command", "command": list(wanted.agent.command)}
    )
    environment = wanted.environment.model_dump(mode="json")
    if not environment["setup_cache_files"]:
        del environment["setup_cache_files"]  # stored as before it existed: no change to report
    return {
        "environment": environment,
        "limits": wanted.limits.model_dump(mode="json", exclude_none=True),
        "agent": agent,
        "connectors": {
            name: connector.definition() for name, connector in wanted.connectors.items()
        },
    }


def _arm(wanted: RoutineSpec, where: str, trigger: Trigger, now: datetime) -> None:
    """Point a new or changed schedule trigger at its first instant; refuse a past `once`.
    A GitHub trigger gets the repository its deliveries are found by."""
    trigger.repository = trigger.config["repository"].lower() if trigger.type == "github" else None
    if trigger.type != "schedule":
        return
    arm(trigger, timedelta(seconds=wanted.stagger), now=now)
    if trigger.next_at is None:
        spec = trigger.config["spec"]
        raise SpecError(
            f"{where}: {spec!r} ({trigger.config['timezone']}) is in the past; give a future time"
        )


def _describe_trigger(trigger: Trigger) -> str:
    if trigger.type == "schedule" and trigger.next_at is not None:
        where = zone(trigger.config["timezone"])
        local = trigger.next_at.astimezone(where)
        return (
            f"trigger schedule {trigger.id} ({trigger.config['spec']}, next "
            f"{local:%Y-%m-%d %H:%M} {where.key})"
        )
    if trigger.type == "github":
        events = ", ".join(trigger.config["events"])
        return f"trigger github {trigger.id} ({trigger.config['repository']}: {events})"
    return f"trigger {trigger.type} {trigger.id}"


def _installation_warnings(session: Session, routine: RoutineSpec) -> list[str]:
    """What a GitHub trigger would miss: a repository the app is not installed on."""
    return [
        f"warning: the GitHub App is not installed on {trigger.repository}: its events "
        "reach no routine until it is (GitHub sends them only where the app is installed)"
        for trigger in routine.triggers
        if isinstance(trigger, GitHubTriggerSpec)
        and not installations.installed_on(session, trigger.repository)
    ]


def _update(
    session: Session,
    routine: Routine,
    wanted: RoutineSpec,
    now: datetime,
    label: str,
    account_id: str,
    public_only: bool,
) -> Change:
    details = []
    if routine.account_id != account_id:
        routine.account_id = account_id
        details.append(f"account → {wanted.account}")
    if routine.public_only != public_only:
        routine.public_only = public_only
        details.append(
            "reach: public addresses only (an account's key applied it)"
            if public_only
            else "reach: what it names (the operator applied it)"
        )
    if routine.prompt != wanted.prompt:
        routine.prompt = wanted.prompt
        details.append("prompt changed")
    if routine.model != wanted.model:
        details.append(f"model {routine.model or 'default'} → {wanted.model or 'default'}")
        routine.model = wanted.model
    wanted_repositories = [(r.url, r.push_rules()) for r in wanted.repositories]
    current_repositories = [(r.url, _push_rules_of(r)) for r in routine.repositories]
    if current_repositories != wanted_repositories:
        routine.repositories.clear()
        session.flush()  # old positions must be gone before new rows reuse them
        routine.repositories.extend(
            Repository(position=i, url=url, **rules)
            for i, (url, rules) in enumerate(wanted_repositories)
        )
        urls = [url for url, _ in wanted_repositories]
        details.append("repositories " + ", ".join(display_url(u) for u in urls))
    for name, value in runtime(wanted).items():
        if getattr(routine, name) != value:
            details.append(f"{name} changed")
            setattr(routine, name, value)
    policy = _policy(wanted)
    for name, value in policy.items():
        if getattr(routine, name) != value:
            details.append(f"{name} {getattr(routine, name)} → {value}")
            setattr(routine, name, value)
    details += _update_triggers(session, routine, wanted, now, label)
    if "stagger" in policy and any(d.startswith("stagger") for d in details):
        for trigger in routine.triggers:
            restagger(trigger, timedelta(seconds=wanted.stagger))
    if details:
        routine.updated_at = now
    return Change(wanted.name, "updated" if details else "unchanged", details)


def _push_rules_of(repository: Repository) -> dict[str, Any]:
    return {name: getattr(repository, name) for name in PUSH_RULES}


def _update_triggers(
    session: Session, routine: Routine, wanted: RoutineSpec, now: datetime, label: str
) -> list[str]:
    """Keep trigger ids (and so their tokens and history) stable.

    A wanted trigger keeps the existing one with the same type and configuration
    wherever it moved in the list; the rest pair up by order within their type.
    """
    unclaimed: dict[str, list[Trigger]] = {}
    for trigger in routine.triggers:
        unclaimed.setdefault(trigger.type, []).append(trigger)
    same: dict[int, Trigger] = {}
    for index, spec in enumerate(wanted.triggers):
        pool = unclaimed.get(spec.type, [])
        match = next((t for t in pool if t.config == spec.config()), None)
        if match is not None:
            pool.remove(match)
            same[index] = match
    final: list[tuple[Trigger, dict[str, Any], bool]] = []
    for index, spec in enumerate(wanted.triggers):
        pool = unclaimed.get(spec.type, [])
        if index in same:
            final.append((same[index], spec.config(), False))
        elif pool:
            final.append((pool.pop(0), spec.config(), False))
        else:
            fresh = Trigger(id=new_id("trig"), type=spec.type, config={}, created_at=now)
            final.append((fresh, spec.config(), True))
    details = []
    for leftovers in unclaimed.values():
        for trigger in leftovers:
            routine.triggers.remove(trigger)
            details.append(f"trigger {trigger.type} {trigger.id} removed")
    # Positions are unique per routine: park the survivors out of the way first.
    for offset, (trigger, _config, is_new) in enumerate(final):
        if not is_new:
            trigger.position = -1 - offset
    session.flush()
    for position, (trigger, config, is_new) in enumerate(final):
        trigger.position = position
        if is_new:
            trigger.config = config
            _arm(wanted, f"{label}.triggers[{position}]", trigger, now)
            routine.triggers.append(trigger)
            details.append(f"{_describe_trigger(trigger)} added")
        elif trigger.config != config:
            trigger.config = config
            _arm(wanted, f"{label}.triggers[{position}]", trigger, now)
            details.append(f"{_describe_trigger(trigger)} changed")
    return details


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"
