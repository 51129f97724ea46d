"""Management API keys: listed, created (the secret shown once) and revoked, by an
admin key for its own account or by the operator for any."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from routined import api_keys
from routined.api_keys import Principal, Scope
from routined.errors import BadInput, NotFound
from routined.models import Account, ApiKey
from routined.operations.access import find_account, require


def list_keys(
    session: Session, principal: Principal, *, account: str | None = None
) -> list[dict[str, Any]]:
    require(principal, Scope.ADMIN)
    statement = select(ApiKey, Account.name).join(Account).order_by(ApiKey.created_at, ApiKey.id)
    if account is not None:
        statement = statement.where(
            ApiKey.account_id == find_account(session, principal, account).id
        )
    elif principal.account_id is not None:
        statement = statement.where(ApiKey.account_id == principal.account_id)
    return [api_keys.view(key, name) for key, name in session.execute(statement)]


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
        raise BadInput(f"scope: {scope!r}; say read, write or admin") from None
    if account is None and principal.account_id is None:
        raise BadInput("account: say which account the key is for")
    owner = (
        find_account(session, principal, account)
        if account is not None
        else session.get_one(Account, principal.account_id)
    )
    if not name.strip() or len(name) > 100:
        raise BadInput("name: give the key a name of 1 to 100 characters, such as `ci`")
    key, secret = api_keys.issue(session, owner.id, name=name, scope=wanted, now=now)
    session.flush()
    return {**api_keys.view(key, owner.name), "key": secret}


def revoke_key(session: Session, principal: Principal, key_id: str, *, now: datetime) -> None:
    require(principal, Scope.ADMIN)
    key = session.get(ApiKey, key_id)
    if key is None or not principal.manages(key.account_id):
        raise NotFound(f"no API key {key_id}; `routined key list` shows them")
    api_keys.revoke(session, key_id, now=now)
