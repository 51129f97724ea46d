"""Identifiers: a kind prefix and a time-ordered random part, like `trig_01JD3…`.

The random part follows ULID's layout (48 bits of milliseconds, 80 random bits,
Crockford base32), so ids sort by creation time in every store and read aloud well.
"""

from __future__ import annotations

import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    value = (millis << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{prefix}_{''.join(reversed(chars))}"


def short(identifier: str) -> str:
    """The last eight characters of an id: random, lower case, fit for branch names."""
    return identifier[-8:].lower()
