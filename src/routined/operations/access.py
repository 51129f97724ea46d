"""Who may do what, and what each principal sees.

An operation runs in one transaction of its own (`perform`); it first checks that the
principal may change things (`require`, `require_operator`), and finds what it works
on through the lookups here, which answer "not found" for another account's objects,
as if they did not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from routined.api_keys import Principal, Scope
from routined.db import Store
from routined.errors import Conflict, NotAllowed, NotFound, RoutinedError
from routined.models import Account, Routine, Run, Trigger

T = TypeVar("T")


def perform(store: Store, operation: Callable[[Session], T], *, readonly: bool = False) -> T:
    """`operation` in one transaction of its own. An error that `keeps` (a refused
    fire, recorded) commits what was written before it, then is raised."""
    kept: RoutinedError | None = None
    try:
        with store.transaction(readonly=readonly) as session:
            try:
                return operation(session)
            except RoutinedError as error:
                if not error.keeps:
                    raise
                kept = error
    except IntegrityError:
        # Another request took the name (or the like) since this one looked.
        raise Conflict("another request changed the same thing meanwhile; try again") from None
    raise kept


def require(principal: Principal, scope: Scope) -> None:
    if not principal.scope.allows(scope):
        raise NotAllowed(f"this key has the {principal.scope} scope; this needs {scope}")
    if principal.disabled and scope is not Scope.READ:
        raise NotAllowed("this key's account is disabled: it can read, not change anything")


def require_operator(principal: Principal, does: str = "manages accounts") -> None:
    if principal.disabled:
        raise NotAllowed("this key's account is disabled: it can read, not change anything")
    if not principal.operator:
        raise NotAllowed(
            "only the operator (an admin key of the default account, or the CLI on the "
            f"server) {does}"
        )


# Lookups that hide what the principal may not see


def find_routine(session: Session, principal: Principal, name: str) -> Routine:
    routine = session.scalar(_with_children(select(Routine).where(Routine.name == name)))
    if routine is None or not principal.sees(routine.account_id):
        raise NotFound(f"no routine named {name!r}; `routined list` shows the routines there are")
    return routine


def routines_of(session: Session, principal: Principal) -> list[Routine]:
    """The routines the principal sees, by name."""
    statement = _with_children(select(Routine).order_by(Routine.name))
    if principal.account_id is not None:
        statement = statement.where(Routine.account_id == principal.account_id)
    return list(session.scalars(statement))


def _with_children(statement: Select[Routine]) -> Select[Routine]:
    return statement.options(selectinload(Routine.triggers), selectinload(Routine.repositories))


def visible_accounts(principal: Principal) -> Select[Account]:
    """The accounts the principal sees, by name: all of them for the operator."""
    statement = select(Account).order_by(Account.name)
    if principal.account_id is not None and not principal.operator:
        statement = statement.where(Account.id == principal.account_id)
    return statement


def find_account(session: Session, principal: Principal, name: str) -> Account:
    account = session.scalar(select(Account).where(Account.name == name))
    if account is None or not principal.manages(account.id):
        raise NotFound(f"no account named {name!r}; `routined account list` shows them")
    return account


def find_trigger(session: Session, principal: Principal, trigger_id: str) -> Trigger:
    trigger = session.get(Trigger, trigger_id)
    if trigger is None or not principal.sees(trigger.routine.account_id):
        raise NotFound(f"no trigger {trigger_id}; `routined show ROUTINE` lists its triggers")
    return trigger


def find_run(session: Session, principal: Principal, run: str) -> tuple[Run, str]:
    """The run with this id or session id, and its routine's name."""
    row = session.execute(
        select(Run, Routine.name, Routine.account_id)
        .join(Routine)
        .where((Run.id == run) | (Run.session_id == run))
    ).first()
    if row is None or not principal.sees(row[2]):
        raise NotFound(f"no run or session {run!r}; `routined runs` lists them")
    return row[0], row[1]
