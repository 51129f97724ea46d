"""Ids keep ULID's layout: 48 bits of milliseconds, 80 random bits, Crockford base32."""

from __future__ import annotations

import secrets

import pytest

from routined import ids

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(millis: int, randomness: int) -> str:
    """The reference encoding: 26 characters, five bits each, most significant first."""
    value = (millis << 80) | randomness
    return "".join(CROCKFORD[(value >> (5 * place)) & 31] for place in reversed(range(26)))


@pytest.mark.parametrize(
    ("millis", "randomness"),
    [
        (0, 0),
        (1, 1),
        (1_795_000_000_000, 0x0123_4567_89AB_CDEF_FEDC),
        (2**48 - 1, 2**80 - 1),
    ],
)
def test_an_id_is_its_prefix_and_the_ulid_of_its_time_and_randomness(
    monkeypatch: pytest.MonkeyPatch, millis: int, randomness: int
) -> None:
    monkeypatch.setattr(secrets, "randbits", lambda bits: randomness if bits == 80 else -1)
    assert ids.new_id("run", now_ms=millis) == f"run_{ulid(millis, randomness)}"


def test_ids_sort_by_time_and_differ_within_a_millisecond() -> None:
    made = [ids.new_id("evt", now_ms=millis) for millis in (5, 5, 6, 1_000, 2**40)]
    assert made[2:] == sorted(made[2:])
    assert made[0][:14] == made[1][:14] and made[0] != made[1]
    assert all(len(made_id) == 30 and set(made_id[4:]) <= set(CROCKFORD) for made_id in made)
