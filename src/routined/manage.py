"""What can be done to accounts, routines, triggers, tokens, runs, keys and secrets, and by whom.

The management API and the CLI both call these functions, so a command prints
the same thing whether it works on the store here or on a server through the
API. Each takes the session of one transaction, the `Principal` asking and the
clock, and answers with plain JSON-able values. A principal never learns of
another account's objects: they are "not found", as if they did not exist.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from routined import admission, fires, keys, limits, runs, scheduler, tokens
from routined.config import Settings
from routined.db import Store
from routined.ids import new_id
from routined.keys import Principal, Scope
from routined.limits import Limits, PlanError
from routined.models import (
    Account,
    ApiKey,
    Fire,
    Routine,
    Run,
    RunEvent,
    Secret,
    Trigger,
    WebhookDelivery,
)
from routined.timeutil import iso
from routined.views import fire_view, routine_view, run_event_view, run_view
from routined.workspace import remove_now

# What only some operations need is loaded by them: the routine spec (pydantic, YAML)
# and the checks of what it names, the vault (cryptography), GitHub's matcher. The
# listings the CLI answers itself load none of it (`routined.cli.local`).
if TYPE_CHECKING:
    from routined import reach, resources, routines

T = TypeVar("T")


class Problem(Exception):
    """A request that cannot be done as asked; `status` is its HTTP status.

    A problem that `keeps` its transaction is one worth recording (a refused
    fire): what was written before it is committed, not rolled back.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        keeps: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.keeps = keeps


def perform(store: Store, operation: Callable[[Session], T], *, readonly: bool = False) -> T:
    """`operation` in one transaction of its own."""
    kept: Problem | None = None
    try:
        with store.transaction(readonly=readonly) as session:
            try:
                return operation(session)
            except Problem as problem:
                if not problem.keeps:
                    raise
                kept = problem
    except IntegrityError:
        # Another request took the name (or the like) since this one looked.
        raise Problem(409, "another request changed the same thing meanwhile; try again") from None
    raise kept


def require(principal: Principal, scope: Scope) -> None:
    if not principal.scope.allows(scope):
        raise Problem(403, f"this key has the {principal.scope} scope; this needs {scope}")
    if principal.disabled and scope is not Scope.READ:
        raise Problem(403, "this key's account is disabled: it can read, not change anything")


def require_operator(principal: Principal, does: str = "manages accounts") -> None:
    if principal.disabled:
        raise Problem(403, "this key's account is disabled: it can read, not change anything")
    if not principal.operator:
        raise Problem(
            403,
            "only the operator (an admin key of the default account, or the CLI on the "
            f"server) {does}",
        )


# Accounts and usage


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
    return [account_view(a) for a in session.scalars(_visible_accounts(principal))]


def get_account(session: Session, principal: Principal, name: str) -> dict[str, Any]:
    return account_view(_account(session, principal, name))


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
        raise Problem(409, f"name: there is already an account {name!r}")
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
    account = _account(session, principal, name)
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
        [_account(session, principal, account)]
        if account
        else list(session.scalars(_visible_accounts(principal)))
    )
    rules = Limits.of(settings)
    return [limits.usage(session, a, limits=rules, now=now) for a in found]


# API keys


def list_keys(
    session: Session, principal: Principal, *, account: str | None = None
) -> list[dict[str, Any]]:
    require(principal, Scope.ADMIN)
    statement = select(ApiKey, Account.name).join(Account).order_by(ApiKey.created_at, ApiKey.id)
    if account is not None:
        statement = statement.where(ApiKey.account_id == _account(session, principal, account).id)
    elif principal.account_id is not None:
        statement = statement.where(ApiKey.account_id == principal.account_id)
    return [keys.view(key, name) for key, name in session.execute(statement)]


def create_key(
    session: Session,
    principal: Principal,
    *,
    name: str,
    scope: str,
    account: str | None = None,
    now: datetime,
) -> dict[str, Any]:
    """A new key, its secret shown in this answer only."""
    require(principal, Scope.ADMIN)
    try:
        wanted = Scope(scope)
    except ValueError:
        raise Problem(400, f"scope: {scope!r}; say read, write or admin") from None
    if account is None and principal.account_id is None:
        raise Problem(400, "account: say which account the key is for")
    owner = (
        _account(session, principal, account)
        if account is not None
        else session.get_one(Account, principal.account_id)
    )
    if not name.strip() or len(name) > 100:
        raise Problem(400, "name: give the key a name of 1 to 100 characters, such as `ci`")
    key, secret = keys.issue(session, owner.id, name=name, scope=wanted, now=now)
    session.flush()
    return {**keys.view(key, owner.name), "key": secret}


def revoke_key(session: Session, principal: Principal, key_id: str, *, now: datetime) -> None:
    require(principal, Scope.ADMIN)
    key = session.get(ApiKey, key_id)
    if key is None or not principal.manages(key.account_id):
        raise Problem(404, f"no API key {key_id}; `routined key list` shows them")
    keys.revoke(session, key_id, now=now)


# Secrets


def secret_view(secret: Secret, account_name: str) -> dict[str, Any]:
    """A secret as listed: never its value."""
    return {
        "name": secret.name,
        "account": account_name,
        "created_at": iso(secret.created_at),
        "updated_at": iso(secret.updated_at),
    }


def set_secret(
    session: Session,
    principal: Principal,
    account: str,
    name: str,
    *,
    value: str,
    settings: Settings,
    now: datetime,
) -> dict[str, Any]:
    """Store a secret for the account's routines, or replace its value."""
    from routined import vault

    require(principal, Scope.WRITE)
    owner = _account(session, principal, account)
    try:
        created = vault.set_secret(
            session, settings, account_id=owner.id, name=name, value=value, now=now
        )
    except vault.VaultError as error:
        # The server's key is unusable: the operator's to fix, not the caller's input.
        raise Problem(500, str(error)) from None
    except ValueError as error:
        message = str(error)
        raise Problem(
            400, message if message.startswith("value:") else f"name: {message}"
        ) from None
    stored = session.scalars(
        select(Secret).where(Secret.account_id == owner.id, Secret.name == name)
    ).one()
    return {**secret_view(stored, owner.name), "created": created}


def list_secrets(session: Session, principal: Principal, account: str) -> list[dict[str, Any]]:
    from routined import vault

    owner = _account(session, principal, account)
    return [secret_view(s, owner.name) for s in vault.list_secrets(session, account_id=owner.id)]


def rotate_secrets(session: Session, principal: Principal, *, settings: Settings) -> dict[str, Any]:
    """Every account's secrets encrypted again under the server's first key."""
    from routined import vault

    require_operator(principal, "rotates the secret key")
    try:
        rotation = vault.rotate(session, settings)
    except vault.VaultError as error:
        raise Problem(500, str(error)) from None  # the server's keys: the operator's to fix
    names = {
        account_id: name for account_id, name in session.execute(select(Account.id, Account.name))
    }
    return {
        "rotated": rotation.rotated,
        "unreadable": [
            {"account": names.get(account_id, account_id), "name": name}
            for account_id, name in rotation.unreadable
        ],
    }


def delete_secret(session: Session, principal: Principal, account: str, name: str) -> None:
    from routined import vault

    require(principal, Scope.WRITE)
    owner = _account(session, principal, account)
    if not vault.delete_secret(session, account_id=owner.id, name=name):
        hint = "" if owner.name == "default" else f" --account {owner.name}"
        raise Problem(
            404,
            f"no secret {name!r} in account {owner.name}; `routined secret list{hint}` shows them",
        )


# Routines


def list_routines(session: Session, principal: Principal) -> list[dict[str, Any]]:
    return [routine_view(session, r, next_count=1) for r in _routines_of(session, principal)]


def get_routine(session: Session, principal: Principal, name: str) -> dict[str, Any]:
    return routine_view(session, find_routine(session, principal, name), next_count=5)


def apply_routines(
    session: Session, principal: Principal, document: Any, *, settings: Settings, now: datetime
) -> list[dict[str, Any]]:
    """Create or update the document's routines by name, as `routined apply` does."""
    from routined import resources, routines

    require(principal, Scope.WRITE)
    try:
        spec = routines.parse_document(
            document,
            source="request",
            base=None,
            now=now,
            timezone=settings.timezone,
            min_interval=timedelta(seconds=settings.min_schedule_interval),
        )
        spec = _for_principal(
            session,
            principal,
            spec,
            allowed=settings.allow_private_networks,
            caps=resources.Caps.of(settings, {}),
        )
        changes = routines.apply(session, spec, now=now, public_only=not principal.operator)
    except routines.SpecError as error:
        raise Problem(400, str(error)) from None
    return [
        {
            "name": c.name,
            "action": c.action,
            "details": c.details,
            "warnings": c.warnings,
            "description": c.describe(),
        }
        for c in changes
    ]


def delete_routine(session: Session, principal: Principal, name: str) -> None:
    """Delete a routine with its history; refused while a run of it is active, whose
    worker would otherwise lose it mid-flight."""
    require(principal, Scope.WRITE)
    routine = find_routine(session, principal, name)
    # Held against workers' claims (they hold the routine too), so no run of it can
    # become active between the look below and the delete.
    session.execute(select(Routine.id).where(Routine.id == routine.id).with_for_update())
    active = session.scalar(
        select(Run.id).where(Run.routine_id == routine.id, Run.status.in_(runs.ACTIVE))
    )
    if active is not None:
        raise Problem(
            409, f"run {active} of {name} is active; cancel it (routined cancel {active}) first"
        )
    session.delete(routine)


def set_paused(
    session: Session,
    principal: Principal,
    name: str,
    *,
    paused: bool,
    settings: Settings,
    now: datetime,
) -> dict[str, Any]:
    require(principal, Scope.WRITE)
    routine = find_routine(session, principal, name)
    changed = (routine.paused_at is None) == paused
    if changed and paused:
        routine.paused_at = now
    elif changed:
        scheduler.resume(session, routine, now=now, settings=settings)
    return {"name": routine.name, "paused": paused, "changed": changed}


def setup_cache_folder(
    session: Session, principal: Principal, name: str, *, settings: Settings
) -> Path:
    """Where the routine's cached setup results are, for `clear_setup_cache`."""
    from routined.environment import cache_folder

    require(principal, Scope.WRITE)
    return cache_folder(settings.home, find_routine(session, principal, name).id)


def clear_setup_cache(folder: Path) -> int:
    """Remove a routine's cached setup results; how many there were (one subfolder
    each; a `.partial-` one is a result still being written, not counted).

    Outside any transaction: it is file work. The folder is first renamed aside, which
    is atomic, so a run storing a result meanwhile starts a new folder rather than
    writing into one being removed.
    """
    aside = folder.with_name(f".{folder.name}.clearing-{secrets.token_hex(6)}")
    try:
        folder.rename(aside)
    except FileNotFoundError:
        return 0  # nothing cached, or another clear took it
    with os.scandir(aside) as entries:
        count = sum(
            1
            for entry in entries
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
        )
    remove_now(aside)  # cached homes keep the modes their scripts gave them
    return count


# How a refused fire by hand is answered (the CLI exits 1 with the message either way).
_REFUSED_BY_HAND = {admission.Code.ACCOUNT_DISABLED: 403, admission.Code.OVER_LIMIT: 429}


def fire_by_hand(
    session: Session,
    principal: Principal,
    name: str,
    *,
    text: str | None,
    by: str,
    settings: Settings,
    now: datetime,
) -> dict[str, Any]:
    """Start a run now ("run now"); refused, with its reason recorded, past a limit or
    for a disabled account (`admission`)."""
    require(principal, Scope.WRITE)
    if text is not None and len(text) > runs.MAX_TEXT:
        raise Problem(400, f"text: {len(text)} characters is over the limit of {runs.MAX_TEXT}")
    routine = find_routine(session, principal, name)
    account = limits.hold_account(session, routine)
    admitted = admission.admit(
        session,
        admission.Kind.MANUAL,
        routine,
        account,
        bounds=admission.Bounds.of(settings),
        now=now,
    )
    if not admitted.admitted:
        fires.record(
            session,
            routine_id=routine.id,
            trigger_id=None,
            trigger_type="manual",
            outcome=fires.Outcome.REFUSED,
            reason=f"a fire by hand ({by}) was refused: {admitted.reason}",
            now=now,
        )
        retry = {} if admitted.retry_after is None else {"retry-after": str(admitted.retry_after)}
        raise Problem(
            _REFUSED_BY_HAND[admitted.code],
            f"not started: {admitted.reason}",
            headers=retry,
            keeps=True,
        )
    reason = f"fired by hand ({by}); schedules are not affected"
    if admitted.reason:
        reason += f"; {admitted.reason}"
    run = runs.create(
        session,
        routine,
        trigger_type="manual",
        trigger_id=None,
        text=text,
        now=now,
        reason=reason,
    )
    session.flush()  # the decision row refers to it
    fires.record(
        session,
        routine_id=routine.id,
        trigger_id=None,
        trigger_type="manual",
        outcome=fires.Outcome.FIRED,
        reason=reason,
        now=now,
        run_id=run.id,
    )
    return {
        "run_id": run.id,
        "session_id": run.session_id,
        "session_url": runs.session_url(settings.public_url, run.session_id),
    }


# Triggers and their tokens


def list_triggers(
    session: Session, principal: Principal, *, routine: str | None = None
) -> list[dict[str, Any]]:
    found = (
        [find_routine(session, principal, routine)]
        if routine is not None
        else _routines_of(session, principal)
    )
    return [
        {**trigger, "routine": r.name}
        for r in found
        for trigger in routine_view(session, r, next_count=1)["triggers"]
    ]


def get_trigger(session: Session, principal: Principal, trigger_id: str) -> dict[str, Any]:
    trigger = _trigger(session, principal, trigger_id)
    routine = trigger.routine
    view = next(
        t for t in routine_view(session, routine, next_count=5)["triggers"] if t["id"] == trigger.id
    )
    return {**view, "routine": routine.name}


def issue_token(
    session: Session, principal: Principal, trigger_id: str, *, settings: Settings, now: datetime
) -> dict[str, Any]:
    """A new token for an API trigger (the one before stops working), shown only now."""
    require(principal, Scope.WRITE)
    trigger = _trigger(session, principal, trigger_id)
    if trigger.type != "api":
        raise Problem(
            400, f"trigger {trigger_id} is a {trigger.type} trigger; only API triggers have tokens"
        )
    secret = tokens.issue(session, trigger.id, now=now)
    return {
        "trigger_id": trigger.id,
        "routine": trigger.routine.name,
        "token": secret,
        "url": f"{settings.public_url}/v1/claude_code/routines/{trigger.id}/fire",
    }


def revoke_token(
    session: Session, principal: Principal, trigger_id: str, *, now: datetime
) -> dict[str, Any]:
    require(principal, Scope.WRITE)
    trigger = _trigger(session, principal, trigger_id)
    return {"trigger_id": trigger.id, "revoked": tokens.revoke(session, trigger.id, now=now) > 0}


# Runs and decisions


def list_runs(
    session: Session,
    principal: Principal,
    *,
    routine: str | None = None,
    limit: int = 20,
    settings: Settings,
) -> list[dict[str, Any]]:
    statement = runs.with_routine_name().order_by(Run.created_at.desc(), Run.id.desc())
    if routine is not None:
        statement = statement.where(Run.routine_id == find_routine(session, principal, routine).id)
    elif principal.account_id is not None:
        statement = statement.where(Routine.account_id == principal.account_id)
    return [
        run_view(run, name, public_url=settings.public_url)
        for run, name in session.execute(statement.limit(limit))
    ]


def get_run(
    session: Session, principal: Principal, run: str, *, settings: Settings
) -> dict[str, Any]:
    found, name = _run(session, principal, run)
    return run_view(found, name, public_url=settings.public_url)


def cancel_run(
    session: Session, principal: Principal, run: str, *, now: datetime, by: str
) -> dict[str, Any]:
    require(principal, Scope.WRITE)
    found, _name = _run(session, principal, run)
    result = runs.cancel(session, found.id, now=now, reason=f"cancelled by {by}")
    if result is None:
        raise Problem(409, f"run {found.id} is {found.status}; it is past cancelling")
    return {"run_id": found.id, "cancel": result}


def run_events(
    session: Session, principal: Principal, run: str, *, after: int = 0, limit: int = 1000
) -> dict[str, Any]:
    """A run's events after `after` (their `seq`), and its status now, for following it."""
    found, _name = _run(session, principal, run)
    events = session.scalars(
        select(RunEvent)
        .where(RunEvent.run_id == found.id, RunEvent.seq > after)
        .order_by(RunEvent.seq)
        .limit(limit)
    )
    return {
        "run_id": found.id,
        "status": found.status,
        "events": [run_event_view(event) for event in events],
    }


def fire_decisions(
    session: Session, principal: Principal, *, routine: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    statement = (
        select(Fire, Routine.name)
        .join(Routine)
        .order_by(Fire.decided_at.desc(), Fire.id.desc())
        .limit(limit)
    )
    if routine is not None:
        statement = statement.where(Fire.routine_id == find_routine(session, principal, routine).id)
    elif principal.account_id is not None:
        statement = statement.where(Routine.account_id == principal.account_id)
    return [fire_view(fire, name) for fire, name in session.execute(statement)]


# GitHub deliveries


def delivery_view(delivery: WebhookDelivery, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event": delivery.event,
        "action": delivery.action,
        "repository": delivery.repository,
        "installation_id": delivery.installation_id,
        "headers": delivery.headers,
        "received_at": iso(delivery.received_at),
        "attempts": delivery.attempts,
        "processed_at": iso(delivery.processed_at) if delivery.processed_at else None,
        "outcome": delivery.outcome,
        "decisions": decisions,
    }


def list_deliveries(
    session: Session, principal: Principal, *, limit: int = 50
) -> list[dict[str, Any]]:
    """GitHub deliveries, newest first, each with the decisions it led to. An account's
    key sees the deliveries its routines decided, and only those decisions."""
    statement = (
        select(WebhookDelivery)
        .order_by(WebhookDelivery.received_at.desc(), WebhookDelivery.id)
        .limit(limit)
    )
    if not _sees_all(principal):
        statement = statement.where(
            WebhookDelivery.id.in_(
                select(Fire.delivery_id)
                .join(Routine)
                .where(Routine.account_id == principal.account_id)
            )
        )
    deliveries = list(session.scalars(statement))
    return [_visible_delivery(session, principal, d) for d in deliveries]


def get_delivery(session: Session, principal: Principal, delivery_id: str) -> dict[str, Any]:
    return _visible_delivery(session, principal, _delivery(session, principal, delivery_id))


def replay_delivery(
    session: Session, principal: Principal, delivery_id: str, *, settings: Settings, now: datetime
) -> dict[str, Any]:
    """The delivery against today's routines: what it would start, and why not."""
    from routined import github

    delivery = _delivery(session, principal, delivery_id)
    would = [
        {key: value for key, value in row.items() if key != "account_id"}
        for row in github.replay(session, delivery, now=now, settings=settings)
        if _sees_all(principal) or row["account_id"] == principal.account_id
    ]
    shown = _visible_delivery(session, principal, delivery)
    return {**shown, "decisions": [], "replayed_at": iso(now), "would": would}


def _visible_delivery(
    session: Session, principal: Principal, delivery: WebhookDelivery
) -> dict[str, Any]:
    """The delivery with the decisions the principal may see; for an account's key, its
    one-line outcome is told again from those alone (it names every routine)."""
    decisions = _delivery_decisions(session, principal, delivery.id)
    shown = delivery_view(delivery, decisions)
    if not _sees_all(principal):
        told = "; ".join(f"{d['routine']}: {d['outcome']}" for d in decisions)
        shown["outcome"] = f"{delivery.event} on {delivery.repository}: {told}"
    return shown


def _delivery_decisions(
    session: Session, principal: Principal, delivery_id: str
) -> list[dict[str, Any]]:
    statement = (
        select(Fire, Routine.name)
        .join(Routine)
        .where(Fire.delivery_id == delivery_id)
        .order_by(Routine.name, Fire.id)
    )
    if not _sees_all(principal):
        statement = statement.where(Routine.account_id == principal.account_id)
    return [fire_view(fire, name) for fire, name in session.execute(statement)]


def _delivery(session: Session, principal: Principal, delivery_id: str) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or not (
        _sees_all(principal) or _delivery_decisions(session, principal, delivery_id)
    ):
        raise Problem(404, f"no delivery {delivery_id}; `routined events deliveries` lists them")
    return delivery


def _sees_all(principal: Principal) -> bool:
    return principal.account_id is None or principal.operator


# Lookups that hide what the principal may not see


def find_routine(session: Session, principal: Principal, name: str) -> Routine:
    routine = session.scalar(_with_children(select(Routine).where(Routine.name == name)))
    if routine is None or not principal.sees(routine.account_id):
        raise Problem(
            404, f"no routine named {name!r}; `routined list` shows the routines there are"
        )
    return routine


def _routines_of(session: Session, principal: Principal) -> list[Routine]:
    """The routines the principal sees, by name."""
    statement = _with_children(select(Routine).order_by(Routine.name))
    if principal.account_id is not None:
        statement = statement.where(Routine.account_id == principal.account_id)
    return list(session.scalars(statement))


def _with_children(statement: Select[Routine]) -> Select[Routine]:
    return statement.options(selectinload(Routine.triggers), selectinload(Routine.repositories))


def _visible_accounts(principal: Principal) -> Select[Account]:
    statement = select(Account).order_by(Account.name)
    if principal.account_id is not None and not principal.operator:
        statement = statement.where(Account.id == principal.account_id)
    return statement


def _account(session: Session, principal: Principal, name: str) -> Account:
    account = session.scalar(select(Account).where(Account.name == name))
    if account is None or not principal.manages(account.id):
        raise Problem(404, f"no account named {name!r}; `routined account list` shows them")
    return account


def _trigger(session: Session, principal: Principal, trigger_id: str) -> Trigger:
    trigger = session.get(Trigger, trigger_id)
    if trigger is None or not principal.sees(trigger.routine.account_id):
        raise Problem(404, f"no trigger {trigger_id}; `routined show ROUTINE` lists its triggers")
    return trigger


def _run(session: Session, principal: Principal, run: str) -> tuple[Run, str]:
    row = session.execute(
        select(Run, Routine.name, Routine.account_id)
        .join(Routine)
        .where((Run.id == run) | (Run.session_id == run))
    ).first()
    if row is None or not principal.sees(row[2]):
        raise Problem(404, f"no run or session {run!r}; `routined runs` lists them")
    return row[0], row[1]


def _for_principal(
    session: Session,
    principal: Principal,
    spec: routines.RoutinesFile,
    *,
    allowed: Sequence[reach.Network] = (),
    caps: resources.Caps | None = None,
) -> routines.RoutinesFile:
    """A key's routines are its account's: unnamed accounts become it, other accounts
    are unknown, and a name another account uses is taken.

    What runs with the server's own reach stays the operator's: an account's key
    may name only https repositories on public hosts (not the server's paths, its
    SSH keys or its network), hosts and connectors on public addresses (or in the
    private networks the operator `allowed`), no GitHub triggers, pull requests or
    comments (they act as the operator's GitHub App, whose installations are not
    tied to one account), and no more of the machine than the server's `caps`.
    """
    from routined import routines

    if principal.account_id is None:
        return spec
    own = session.get_one(Account, principal.account_id).name
    wanted = []
    named: list[_Named] = []
    for index, routine in enumerate(spec.routines):
        label = f"request: routines[{index}] ({routine.name})"
        if "account" not in routine.model_fields_set:
            routine = routine.model_copy(update={"account": own})
        elif routine.account != own:
            raise routines.SpecError(f"{label}.account: there is no account {routine.account!r}")
        holder = session.scalar(select(Routine.account_id).where(Routine.name == routine.name))
        if holder is not None and holder != principal.account_id:
            raise routines.SpecError(f"{label}.name: the name is taken; choose another")
        if not principal.operator:
            named += _hosts_named(label, routine)
            _within_share(label, routine, caps)
        wanted.append(routine)
    _within_reach(named, allowed)
    return routines.RoutinesFile(routines=wanted)


_REPOSITORIES = (
    "an account's key may name https repositories on public hosts; ask the operator for "
    "anything else"
)
_HOSTS = "an account's key may name public hosts only; ask the operator for anything else"


@dataclass(frozen=True)
class _Named:
    """A host a routine names, where, and what an account's key may name there."""

    field: str
    host: str
    rule: str


def _hosts_named(label: str, routine: routines.RoutineSpec) -> list[_Named]:
    """The hosts an account's routine would have the server reach, for
    `_within_reach`; what may not be named at all is refused here."""
    from routined import reach, routines

    named = []
    for number, repository in enumerate(routine.repositories):
        field = f"{label}.repositories[{number}].url"
        try:
            host, _port = reach.endpoint(repository.url, schemes=("https",))
        except reach.Unreachable as error:
            raise routines.SpecError(f"{field}: {error}; {_REPOSITORIES}") from None
        named.append(_Named(field, host, _REPOSITORIES))
    for number, entry in enumerate(routine.environment.allowed_hosts):
        field = f"{label}.environment.allowed_hosts[{number}]"
        host, wildcard = reach.entry_host(entry)
        if wildcard and reach.names_this_machine(host):
            raise routines.SpecError(f"{field}: {entry} names this machine; {_HOSTS}")
        if not wildcard:  # *.domain names no one host: judged at each connection
            named.append(_Named(field, host, _HOSTS))
    for name, connector in routine.connectors.items():
        if connector.url is None:
            continue
        field = f"{label}.connectors.{name}.url"
        try:
            host, _port = reach.endpoint(connector.url)
        except reach.Unreachable as error:
            raise routines.SpecError(f"{field}: {error}; {_HOSTS}") from None
        named.append(_Named(field, host, _HOSTS))
    for number, trigger in enumerate(routine.triggers):
        if isinstance(trigger, routines.GitHubTriggerSpec):
            raise routines.SpecError(
                f"{label}.triggers[{number}]: GitHub triggers are applied by the operator "
                "(routined apply on the server, or an admin key of the default account)"
            )
    return named


def _within_share(label: str, routine: routines.RoutineSpec, caps: resources.Caps | None) -> None:
    """Refuse what an account's routine may not ask for: to act as the operator's
    GitHub App, or more of the machine than the server's caps (runs are held to
    them anyway)."""
    from routined import resources, routines

    for field in ("pull_requests", "comment"):
        if getattr(routine, field):
            raise routines.SpecError(
                f"{label}.{field}: pull requests and comments are made as the operator's "
                "GitHub App, which an account's key may not act as; ask the operator"
            )
    if caps is None:
        return
    for field, most, shown in (
        ("memory", caps.memory, resources.format_size(caps.memory)),
        ("pids", caps.pids, str(caps.pids)),
        ("disk", caps.disk, resources.format_size(caps.disk)),
        ("cpu", caps.cpu, f"{caps.cpu:g}"),
    ):
        asked = getattr(routine.limits, field)
        if asked is not None and asked > most:
            raise routines.SpecError(
                f"{label}.limits.{field}: an account's routine may ask at most {shown} "
                "(the server's default); ask the operator for more"
            )


def _within_reach(named: Sequence[_Named], allowed: Sequence[reach.Network]) -> None:
    """Refuse the first host that resolves to an address an account may not reach
    (see `routined.reach`); a name that does not resolve now is judged at each
    connection instead. The answer is the same whatever the port."""
    from routined import reach, routines

    refused = reach.refused_now((place.host for place in named), allowed)
    for place in named:
        why = refused.get(place.host)
        if why is not None:
            raise routines.SpecError(f"{place.field}: {why}; {place.rule}")


def _check_name(field: str, name: str) -> None:
    from routined import routines

    if re.fullmatch(routines.NAME_PATTERN, name) is None:
        raise Problem(
            400, f"{field}: {name!r}; account names use letters, digits, '.', '_' and '-'"
        )


def _check_plan(settings: Settings, plan: str) -> None:
    try:
        Limits.of(settings).plan(plan)
    except PlanError as error:
        raise Problem(400, f"plan: {error}") from None
