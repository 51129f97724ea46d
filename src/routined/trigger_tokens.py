"""Trigger tokens: shown once, stored as a digest, looked up by a short prefix.

A token reads `rtd_<lookup><secret>`. The fixed `rtd_` prefix lets secret scanners
recognise a leaked token; the lookup part finds the row without scanning; the
whole token is compared as a SHA-256 digest in constant time. Tokens carry 190
random bits, so a fast hash is the right one: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from routined.models import Token

PREFIX = "rtd_"
_ALPHABET = string.ascii_letters + string.digits
_LOOKUP_LENGTH = 12
_SECRET_LENGTH = 32
LENGTH = len(PREFIX) + _LOOKUP_LENGTH + _SECRET_LENGTH


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def lookup_part(token: str, prefix: str = PREFIX) -> str | None:
    """The lookup prefix of a well-formed secret, or None before any database work."""
    if len(token) != len(prefix) + _LOOKUP_LENGTH + _SECRET_LENGTH or not token.startswith(prefix):
        return None
    body = token[len(prefix) :]
    if not (body.isascii() and body.isalnum()):  # the letters and digits of _ALPHABET
        return None
    return body[:_LOOKUP_LENGTH]


def generate(prefix: str) -> tuple[str, str]:
    """A new secret with `prefix` (a trigger token's or an API key's), and its lookup part."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_LOOKUP_LENGTH + _SECRET_LENGTH))
    return prefix + body, body[:_LOOKUP_LENGTH]


def matches(presented: str, digests: Iterable[str]) -> bool:
    """Whether `presented` hashes to one of `digests`, compared in constant time."""
    presented_digest = digest(presented)
    return any(hmac.compare_digest(presented_digest, stored) for stored in digests)


def issue(session: Session, trigger_id: str, *, now: datetime) -> str:
    """Create the trigger's token, revoking any it had; return it for showing once."""
    revoke(session, trigger_id, now=now)
    token, lookup = generate(PREFIX)
    session.add(Token(trigger_id=trigger_id, lookup=lookup, digest=digest(token), created_at=now))
    return token


def revoke(session: Session, trigger_id: str, *, now: datetime) -> int:
    result = session.execute(
        update(Token)
        .where(Token.trigger_id == trigger_id, Token.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def verify(session: Session, trigger_id: str, presented: str) -> bool:
    """Whether `presented` is the live token of this trigger (and of no other)."""
    lookup = lookup_part(presented)
    if lookup is None:
        return False
    candidates = session.scalars(_LIVE_DIGESTS, {"trigger_id": trigger_id, "lookup": lookup})
    return matches(presented, candidates.all())


# Built once: on the fire endpoint, building the statement cost more than running it.
_LIVE_DIGESTS = select(Token.digest).where(
    Token.trigger_id == bindparam("trigger_id"),
    Token.lookup == bindparam("lookup"),
    Token.revoked_at.is_(None),
)
