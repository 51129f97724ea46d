"""API keys: who calls the management API, for which account, with which scope.

A key reads `rtdk_<lookup><secret>` and is kept like a trigger token (see
`routined.trigger_tokens`): a digest and a lookup prefix, shown once. Its own prefix lets
secret scanners tell the two apart, and a trigger token is never a key.

Scopes nest: `read` sees the account's objects; `write` also changes routines,
triggers, tokens and runs; `admin` also manages the account's keys. An admin key
of the `default` account, the install's own, is the operator's: it also creates
accounts and sets their plans. Whoever works on the store directly (the CLI
without `--server`) is the operator too, and sees every account.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from routined import trigger_tokens
from routined.ids import new_id
from routined.models import DEFAULT_ACCOUNT_ID, Account, ApiKey
from routined.timeutil import iso

PREFIX = "rtdk_"


class Scope(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        return _RANK[self] >= _RANK[needed]


_RANK = {Scope.READ: 0, Scope.WRITE: 1, Scope.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """Who is asking: one account with a scope, or the operator (every account)."""

    account_id: str | None
    scope: Scope
    key_id: str | None = None
    # A disabled account's keys still read; they change nothing (see `operations.access.require`).
    disabled: bool = False

    @classmethod
    def local(cls) -> Principal:
        """The operator at the store itself: the CLI without `--server`."""
        return cls(account_id=None, scope=Scope.ADMIN)

    @property
    def operator(self) -> bool:
        return self.scope is Scope.ADMIN and self.account_id in (None, DEFAULT_ACCOUNT_ID)

    def sees(self, account_id: str) -> bool:
        """Whether the account's routines, runs and the like are this principal's to see."""
        return self.account_id is None or self.account_id == account_id

    def manages(self, account_id: str) -> bool:
        """Whether the account itself (its plan, its keys) is this principal's to see."""
        return self.operator or self.sees(account_id)


def issue(
    session: Session, account_id: str, *, name: str, scope: Scope, now: datetime
) -> tuple[ApiKey, str]:
    """A new key of the account; the secret is returned for showing once."""
    secret, lookup = trigger_tokens.generate(PREFIX)
    key = ApiKey(
        id=new_id("key"),
        account_id=account_id,
        name=name,
        scope=scope.value,
        lookup=lookup,
        digest=trigger_tokens.digest(secret),
        created_at=now,
    )
    session.add(key)
    return key, secret


def authenticate(session: Session, presented: str) -> Principal | None:
    """The principal a live key stands for, or None for anything else."""
    lookup = trigger_tokens.lookup_part(presented, PREFIX)
    if lookup is None:
        return None
    for key, disabled_at in session.execute(
        select(ApiKey, Account.disabled_at)
        .join(Account)
        .where(ApiKey.lookup == lookup, ApiKey.revoked_at.is_(None))
    ):
        if trigger_tokens.matches(presented, [key.digest]):
            return Principal(
                account_id=key.account_id,
                scope=Scope(key.scope),
                key_id=key.id,
                disabled=disabled_at is not None,
            )
    return None


def revoke(session: Session, key_id: str, *, now: datetime) -> bool:
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def view(key: ApiKey, account_name: str) -> dict[str, Any]:
    return {
        "id": key.id,
        "account": account_name,
        "name": key.name,
        "scope": key.scope,
        "created_at": iso(key.created_at),
        "revoked_at": iso(key.revoked_at) if key.revoked_at else None,
    }
