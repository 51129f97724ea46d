"""Secrets an account's routines get as environment variables: set, listed (never
their values), deleted, and all of them encrypted again under the server's first key."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from routined.api_keys import Principal, Scope
from routined.config import Settings
from routined.errors import BadInput, NotFound, ServerFault
from routined.models import Account, Secret
from routined.operations.access import find_account, require, require_operator
from routined.secrets import vault
from routined.timeutil import iso


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
    require(principal, Scope.WRITE)
    owner = find_account(session, principal, account)
    try:
        created = vault.set_secret(
            session, settings, account_id=owner.id, name=name, value=value, now=now
        )
    except vault.VaultError as error:
        # The server's key is unusable: the operator's to fix, not the caller's input.
        raise ServerFault(str(error)) from None
    except ValueError as error:
        message = str(error)
        raise BadInput(message if message.startswith("value:") else f"name: {message}") from None
    stored = session.scalars(
        select(Secret).where(Secret.account_id == owner.id, Secret.name == name)
    ).one()
    return {**secret_view(stored, owner.name), "created": created}


def list_secrets(session: Session, principal: Principal, account: str) -> list[dict[str, Any]]:
    owner = find_account(session, principal, account)
    return [secret_view(s, owner.name) for s in vault.list_secrets(session, account_id=owner.id)]


def rotate_secrets(session: Session, principal: Principal, *, settings: Settings) -> dict[str, Any]:
    """Every account's secrets encrypted again under the server's first key."""
    require_operator(principal, "rotates the secret key")
    try:
        rotation = vault.rotate(session, settings)
    except vault.VaultError as error:
        raise ServerFault(str(error)) from None  # the server's keys: the operator's to fix
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
    require(principal, Scope.WRITE)
    owner = find_account(session, principal, account)
    if not vault.delete_secret(session, account_id=owner.id, name=name):
        hint = "" if owner.name == "default" else f" --account {owner.name}"
        raise NotFound(
            f"no secret {name!r} in account {owner.name}; `routined secret list{hint}` shows them"
        )
