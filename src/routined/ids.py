"""Identifiers: a kind prefix and a time-ordered random part, like `trig_01JD3…`.

The random part follows ULID's layout (48 bits of milliseconds, 80 random bits,
Crockford base32), so ids sort by creation time in every store and read aloud well.
"""

from __future__ import annotations

import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters for each 10 bits: every fire, event and request takes ids, and
# 13 lookups cost a third less than 26 divisions.
_PAIRS = tuple(first + second for first in _CROCKFORD for second in _CROCKFORD)
_PAIR_SHIFTS = tuple(range(120, -1, -10))  # the 130 bits of 26 characters, high first


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    value = (millis << 80) | secrets.randbits(80)
    return f"{prefix}_{''.join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])}"


def short(identifier: str) -> str:
    """The last eight characters of an id: random, lower case, fit for branch names."""
    return identifier[-8:].lower()
