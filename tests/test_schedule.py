"""Schedule maths: tables of real UTC instants across real DST transitions.

Every expected instant below was worked out by hand from the zone's offsets
(each table's comment names the transition: date, local time, old→new offset),
never by asking the module. The transition dates were checked with zoneinfo.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from routined.schedules.timing import (
    ScheduleError,
    check_interval,
    parse,
    parse_duration,
    stagger_offset,
    to_utc,
)
from routined.timeutil import format_duration, iso


def at(text: str) -> datetime:
    """An aware UTC instant from ISO text ending in Z."""
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0), text
    return moment


def z(moment: datetime) -> str:
    """ISO text of an instant, Z only when the datetime really is at offset 0 (not via iso())."""
    assert moment.tzinfo is not None
    return moment.isoformat().replace("+00:00", "Z")


# Each case: zone, spec, start (exclusive), the instants that follow it, in UTC.
INSTANT_TABLE = [
    # ---------------------------------------------------------------- Europe/Berlin
    # Spring forward: 2027-03-28 02:00 CET (+01:00) → 03:00 CEST (+02:00), at 01:00Z.
    # 02:30 does not exist on the 28th: it fires at the jump, 01:00Z.
    pytest.param(
        "Europe/Berlin",
        "daily at 02:30",
        "2027-03-27T00:00:00Z",
        ["2027-03-27T01:30:00Z", "2027-03-28T01:00:00Z", "2027-03-29T00:30:00Z"],
        id="berlin-spring-daily-0230",
    ),
    # 02:00 is the first minute the clock skips: it fires at the jump too.
    pytest.param(
        "Europe/Berlin",
        "daily at 02:00",
        "2027-03-27T00:00:00Z",
        ["2027-03-27T01:00:00Z", "2027-03-28T01:00:00Z", "2027-03-29T00:00:00Z"],
        id="berlin-spring-daily-0200",
    ),
    # 03:00 exists (it is the first CEST minute): 03:00+02:00 = 01:00Z.
    pytest.param(
        "Europe/Berlin",
        "daily at 03:00",
        "2027-03-27T00:00:00Z",
        ["2027-03-27T02:00:00Z", "2027-03-28T01:00:00Z", "2027-03-29T01:00:00Z"],
        id="berlin-spring-daily-0300",
    ),
    # 01:59 is the last CET minute before the jump: 00:59Z, then CEST from the 29th.
    pytest.param(
        "Europe/Berlin",
        "daily at 01:59",
        "2027-03-27T00:00:00Z",
        ["2027-03-27T00:59:00Z", "2027-03-28T00:59:00Z", "2027-03-28T23:59:00Z"],
        id="berlin-spring-daily-0159",
    ),
    # Hourly: 01:00 CET, 02:00 (skipped → jump 01:00Z), 03:00 CEST (also 01:00Z: fires once), 04:00 CEST.
    pytest.param(
        "Europe/Berlin",
        "hourly",
        "2027-03-27T23:30:00Z",
        [
            "2027-03-28T00:00:00Z",
            "2027-03-28T01:00:00Z",
            "2027-03-28T02:00:00Z",
            "2027-03-28T03:00:00Z",
        ],
        id="berlin-spring-hourly",
    ),
    pytest.param(
        "Europe/Berlin",
        "30 2 * * *",
        "2027-03-27T00:00:00Z",
        ["2027-03-27T01:30:00Z", "2027-03-28T01:00:00Z", "2027-03-29T00:30:00Z"],
        id="berlin-spring-cron-30-2",
    ),
    # Several wall times, one instant: 02:00, 02:30 and 03:00 on the 28th are all 01:00Z.
    pytest.param(
        "Europe/Berlin",
        "0,30 2,3 * * *",
        "2027-03-28T00:00:00Z",
        [
            "2027-03-28T01:00:00Z",
            "2027-03-28T01:30:00Z",
            "2027-03-29T00:00:00Z",
            "2027-03-29T00:30:00Z",
        ],
        id="berlin-spring-many-walls-one-instant",
    ),
    # 2027-03-28 is a Sunday: Friday 09:00 CET = 08:00Z, Monday 09:00 CEST = 07:00Z.
    pytest.param(
        "Europe/Berlin",
        "weekdays at 09:00",
        "2027-03-26T00:00:00Z",
        ["2027-03-26T08:00:00Z", "2027-03-29T07:00:00Z", "2027-03-30T07:00:00Z"],
        id="berlin-spring-weekdays-0900",
    ),
    # Fall back: 2027-10-31 03:00 CEST (+02:00) → 02:00 CET (+01:00), at 01:00Z.
    # 02:00–02:59 happen twice; each fires at its first (CEST) occurrence only.
    pytest.param(
        "Europe/Berlin",
        "daily at 02:30",
        "2027-10-30T00:00:00Z",
        ["2027-10-30T00:30:00Z", "2027-10-31T00:30:00Z", "2027-11-01T01:30:00Z"],
        id="berlin-fall-daily-0230",
    ),
    pytest.param(
        "Europe/Berlin",
        "daily at 02:00",
        "2027-10-29T12:00:00Z",
        ["2027-10-30T00:00:00Z", "2027-10-31T00:00:00Z", "2027-11-01T01:00:00Z"],
        id="berlin-fall-daily-0200",
    ),
    # 03:00 on the 31st exists once only, in CET: 02:00Z.
    pytest.param(
        "Europe/Berlin",
        "daily at 03:00",
        "2027-10-30T00:00:00Z",
        ["2027-10-30T01:00:00Z", "2027-10-31T02:00:00Z", "2027-11-01T02:00:00Z"],
        id="berlin-fall-daily-0300",
    ),
    pytest.param(
        "Europe/Berlin",
        "daily at 01:59",
        "2027-10-29T00:00:00Z",
        ["2027-10-29T23:59:00Z", "2027-10-30T23:59:00Z", "2027-11-01T00:59:00Z"],
        id="berlin-fall-daily-0159",
    ),
    # Hourly: 01:00 CEST, 02:00 CEST (first pass), 03:00 CET; never 01:00Z (02:00 CET, the second pass).
    pytest.param(
        "Europe/Berlin",
        "0 * * * *",
        "2027-10-30T22:30:00Z",
        [
            "2027-10-30T23:00:00Z",
            "2027-10-31T00:00:00Z",
            "2027-10-31T02:00:00Z",
            "2027-10-31T03:00:00Z",
        ],
        id="berlin-fall-hourly",
    ),
    pytest.param(
        "Europe/Berlin",
        "cron 30 2 * * *",
        "2027-10-30T00:00:00Z",
        ["2027-10-30T00:30:00Z", "2027-10-31T00:30:00Z", "2027-11-01T01:30:00Z"],
        id="berlin-fall-cron-30-2",
    ),
    # 2027-10-31 is a Sunday: Friday 09:00 CEST = 07:00Z, Monday 09:00 CET = 08:00Z.
    pytest.param(
        "Europe/Berlin",
        "weekdays at 09:00",
        "2027-10-29T00:00:00Z",
        ["2027-10-29T07:00:00Z", "2027-11-01T08:00:00Z", "2027-11-02T08:00:00Z"],
        id="berlin-fall-weekdays-0900",
    ),
    # Starting in the first pass of the repeated hour (00:10Z = 02:10 CEST).
    pytest.param(
        "Europe/Berlin",
        "*/15 * * * *",
        "2027-10-31T00:10:00Z",
        [
            "2027-10-31T00:15:00Z",
            "2027-10-31T00:30:00Z",
            "2027-10-31T00:45:00Z",
            "2027-10-31T02:00:00Z",
        ],
        id="berlin-fall-start-in-first-pass",
    ),
    # Starting in the SECOND pass (01:05Z = 02:05 CET): 02:15–02:45 already fired in the first pass.
    pytest.param(
        "Europe/Berlin",
        "*/15 * * * *",
        "2027-10-31T01:05:00Z",
        ["2027-10-31T02:00:00Z", "2027-10-31T02:15:00Z"],
        id="berlin-fall-start-in-second-pass",
    ),
    pytest.param(
        "Europe/Berlin",
        "daily at 02:30",
        "2027-10-31T01:10:00Z",
        ["2027-11-01T01:30:00Z"],
        id="berlin-fall-daily-start-in-second-pass",
    ),
    # Strictly after: a start equal to an instant excludes it.
    pytest.param(
        "Europe/Berlin",
        "0 * * * *",
        "2027-10-31T00:00:00Z",
        ["2027-10-31T02:00:00Z", "2027-10-31T03:00:00Z"],
        id="berlin-strictly-after-instant",
    ),
    pytest.param(
        "Europe/Berlin",
        "daily at 02:30",
        "2027-03-28T01:00:00Z",
        ["2027-03-29T00:30:00Z"],
        id="berlin-strictly-after-jump-instant",
    ),
    # ---------------------------------------------------------------- America/New_York
    # Spring forward: 2027-03-14 02:00 EST (-05:00) → 03:00 EDT (-04:00), at 07:00Z.
    pytest.param(
        "America/New_York",
        "daily at 02:30",
        "2027-03-13T00:00:00Z",
        ["2027-03-13T07:30:00Z", "2027-03-14T07:00:00Z", "2027-03-15T06:30:00Z"],
        id="new-york-spring-daily-0230",
    ),
    # 01:00 EST, 02:00 (skipped → jump 07:00Z), 03:00 EDT (also 07:00Z), 04:00 EDT.
    pytest.param(
        "America/New_York",
        "hourly",
        "2027-03-14T05:30:00Z",
        [
            "2027-03-14T06:00:00Z",
            "2027-03-14T07:00:00Z",
            "2027-03-14T08:00:00Z",
            "2027-03-14T09:00:00Z",
        ],
        id="new-york-spring-hourly",
    ),
    # Fall back: 2027-11-07 02:00 EDT (-04:00) → 01:00 EST (-05:00), at 06:00Z.
    # 01:30 happens twice; the first is EDT: 05:30Z.
    pytest.param(
        "America/New_York",
        "daily at 01:30",
        "2027-11-06T00:00:00Z",
        ["2027-11-06T05:30:00Z", "2027-11-07T05:30:00Z", "2027-11-08T06:30:00Z"],
        id="new-york-fall-daily-0130",
    ),
    # 02:30 exists once on the 7th, in EST.
    pytest.param(
        "America/New_York",
        "daily at 02:30",
        "2027-11-06T00:00:00Z",
        ["2027-11-06T06:30:00Z", "2027-11-07T07:30:00Z", "2027-11-08T07:30:00Z"],
        id="new-york-fall-daily-0230",
    ),
    # 01:00 EDT, 02:00 EST, 03:00 EST; never 06:00Z (01:00 EST, the second pass).
    pytest.param(
        "America/New_York",
        "hourly",
        "2027-11-07T04:30:00Z",
        ["2027-11-07T05:00:00Z", "2027-11-07T07:00:00Z", "2027-11-07T08:00:00Z"],
        id="new-york-fall-hourly",
    ),
    # Starting at 06:10Z = 01:10 EST (second pass): today's 01:30 fired at 05:30Z already.
    pytest.param(
        "America/New_York",
        "daily at 01:30",
        "2027-11-07T06:10:00Z",
        ["2027-11-08T06:30:00Z"],
        id="new-york-fall-daily-start-in-second-pass",
    ),
    # ---------------------------------------------------------------- Australia/Lord_Howe
    # DST ends: 2027-04-04 02:00 (+11:00) → 01:30 (+10:30), at 2027-04-03 15:00Z.
    # 01:30–01:59 happen twice; 01:45 fires at its first (+11:00) occurrence.
    pytest.param(
        "Australia/Lord_Howe",
        "daily at 01:45",
        "2027-04-02T00:00:00Z",
        ["2027-04-02T14:45:00Z", "2027-04-03T14:45:00Z", "2027-04-04T15:15:00Z"],
        id="lord-howe-end-daily-0145",
    ),
    # 01:30 (+11) = 14:30Z, 01:30 again (+10:30) never, 02:00 (+10:30) = 15:30Z, 02:30, 03:00.
    pytest.param(
        "Australia/Lord_Howe",
        "0,30 * * * *",
        "2027-04-03T14:00:00Z",
        [
            "2027-04-03T14:30:00Z",
            "2027-04-03T15:30:00Z",
            "2027-04-03T16:00:00Z",
            "2027-04-03T16:30:00Z",
        ],
        id="lord-howe-end-half-hourly",
    ),
    # Starting at 15:10Z = 01:40 (+10:30), the second pass: next is 02:00 (+10:30).
    pytest.param(
        "Australia/Lord_Howe",
        "0,30 * * * *",
        "2027-04-03T15:10:00Z",
        ["2027-04-03T15:30:00Z", "2027-04-03T16:00:00Z"],
        id="lord-howe-end-start-in-second-pass",
    ),
    # DST starts: 2027-10-03 02:00 (+10:30) → 02:30 (+11:00), at 2027-10-02 15:30Z.
    # 02:15 does not exist on the 3rd: it fires at the jump, 15:30Z.
    pytest.param(
        "Australia/Lord_Howe",
        "daily at 02:15",
        "2027-10-01T00:00:00Z",
        ["2027-10-01T15:45:00Z", "2027-10-02T15:30:00Z", "2027-10-03T15:15:00Z"],
        id="lord-howe-start-daily-0215",
    ),
    # 01:30 (+10:30) = 15:00Z; 02:00 (skipped → 15:30Z) and 02:30 (+11 = 15:30Z) fire once; 03:00, 03:30.
    pytest.param(
        "Australia/Lord_Howe",
        "0,30 * * * *",
        "2027-10-02T14:30:00Z",
        [
            "2027-10-02T15:00:00Z",
            "2027-10-02T15:30:00Z",
            "2027-10-02T16:00:00Z",
            "2027-10-02T16:30:00Z",
        ],
        id="lord-howe-start-half-hourly",
    ),
    # ---------------------------------------------------------------- Asia/Kolkata
    # No DST, always +05:30: 09:00 is 03:30Z on every day, including Europe's change days
    # (2027-03-28 and 2027-10-31).
    pytest.param(
        "Asia/Kolkata",
        "daily at 09:00",
        "2027-03-26T00:00:00Z",
        [
            "2027-03-26T03:30:00Z",
            "2027-03-27T03:30:00Z",
            "2027-03-28T03:30:00Z",
            "2027-03-29T03:30:00Z",
            "2027-03-30T03:30:00Z",
        ],
        id="kolkata-daily-0900-march",
    ),
    pytest.param(
        "Asia/Kolkata",
        "daily at 09:00",
        "2027-10-30T00:00:00Z",
        ["2027-10-30T03:30:00Z", "2027-10-31T03:30:00Z", "2027-11-01T03:30:00Z"],
        id="kolkata-daily-0900-october",
    ),
    # ---------------------------------------------------------------- UTC
    pytest.param(
        "UTC",
        "daily at 02:30",
        "2027-03-27T00:00:00Z",
        ["2027-03-27T02:30:00Z", "2027-03-28T02:30:00Z", "2027-03-29T02:30:00Z"],
        id="utc-daily-0230",
    ),
    pytest.param(
        "UTC",
        "hourly at minute 15",
        "2027-10-31T00:15:00Z",
        ["2027-10-31T01:15:00Z", "2027-10-31T02:15:00Z", "2027-10-31T03:15:00Z"],
        id="utc-hourly-at-15",
    ),
    # ---------------------------------------------------------------- weekdays in the zone
    # Asia/Tokyo is +09:00, no DST. Monday 2027-03-29 08:00 JST is still Sunday in UTC;
    # Saturday 2027-03-27 08:00 JST (Friday 23:00Z) must not fire.
    pytest.param(
        "Asia/Tokyo",
        "weekdays at 08:00",
        "2027-03-26T00:00:00Z",
        ["2027-03-28T23:00:00Z", "2027-03-29T23:00:00Z", "2027-03-30T23:00:00Z"],
        id="tokyo-weekdays-monday-is-sunday-utc",
    ),
    # Pacific/Auckland in February is NZDT, +13:00. Friday 2027-02-26 09:00 is Thursday 20:00Z,
    # Monday 2027-03-01 09:00 is Sunday 20:00Z; Saturday 09:00 (Friday 20:00Z) must not fire.
    pytest.param(
        "Pacific/Auckland",
        "weekdays at 09:00",
        "2027-02-25T00:00:00Z",
        ["2027-02-25T20:00:00Z", "2027-02-28T20:00:00Z", "2027-03-01T20:00:00Z"],
        id="auckland-weekdays-monday-is-sunday-utc",
    ),
    # America/Los_Angeles in June is PDT, -07:00. Friday 2027-06-04 20:00 is Saturday 03:00Z;
    # Sunday 20:00 (Monday 03:00Z) must not fire.
    pytest.param(
        "America/Los_Angeles",
        "weekdays at 20:00",
        "2027-06-04T12:00:00Z",
        ["2027-06-05T03:00:00Z", "2027-06-08T03:00:00Z", "2027-06-09T03:00:00Z"],
        id="los-angeles-weekdays-friday-is-saturday-utc",
    ),
    # Los Angeles falls back 2027-11-07 02:00 PDT (-07:00) → 01:00 PST (-08:00), at 09:00Z.
    # Sunday 23:30 is Monday in UTC: 06:30Z under PDT, 07:30Z under PST.
    pytest.param(
        "America/Los_Angeles",
        "weekly on sunday at 23:30",
        "2027-10-30T00:00:00Z",
        ["2027-11-01T06:30:00Z", "2027-11-08T07:30:00Z", "2027-11-15T07:30:00Z"],
        id="los-angeles-weekly-sunday-2330-fall",
    ),
    # Los Angeles springs forward 2027-03-14 02:00 PST (-08:00) → 03:00 PDT (-07:00), at 10:00Z.
    pytest.param(
        "America/Los_Angeles",
        "weekly on sunday at 23:30",
        "2027-03-06T00:00:00Z",
        ["2027-03-08T07:30:00Z", "2027-03-15T06:30:00Z", "2027-03-22T06:30:00Z"],
        id="los-angeles-weekly-sunday-2330-spring",
    ),
]


@pytest.mark.parametrize(("zone_name", "spec", "start", "expected"), INSTANT_TABLE)
def test_instants_across_real_transitions(
    zone_name: str, spec: str, start: str, expected: list[str]
) -> None:
    schedule = parse(spec, zone_name)
    after = at(start)
    found = schedule.upcoming(after, len(expected))
    assert [z(moment) for moment in found] == expected
    assert schedule.next_after(after) == at(expected[0])
    # instants() is the same stream, in strictly increasing order, strictly after the start.
    stream = schedule.instants(after)
    first = [next(stream) for _ in expected]
    assert first == found
    assert all(earlier < later for earlier, later in zip([after, *first], first, strict=False))


def test_spring_forward_is_the_jump_for_every_wall_time_in_the_gap() -> None:
    # Europe/Berlin 2027-03-28 02:00 CET → 03:00 CEST: every time 02:00–02:59 is 01:00Z.
    berlin = ZoneInfo("Europe/Berlin")
    for minute in (0, 1, 15, 30, 59):
        wall = datetime(2027, 3, 28, 2, minute)
        assert z(to_utc(wall, berlin)) == "2027-03-28T01:00:00Z", wall
    assert z(to_utc(datetime(2027, 3, 28, 2, 30, 45), berlin)) == "2027-03-28T01:00:00Z"
    assert z(to_utc(datetime(2027, 3, 28, 1, 59, 59), berlin)) == "2027-03-28T00:59:59Z"
    assert z(to_utc(datetime(2027, 3, 28, 3, 0), berlin)) == "2027-03-28T01:00:00Z"


@pytest.mark.parametrize(
    ("zone_name", "wall", "expected"),
    [
        # Berlin fall back 2027-10-31 03:00 CEST → 02:00 CET: first occurrence is CEST.
        pytest.param(
            "Europe/Berlin",
            datetime(2027, 10, 31, 2, 30),
            "2027-10-31T00:30:00Z",
            id="berlin-repeated",
        ),
        # New York fall back 2027-11-07 02:00 EDT → 01:00 EST: first occurrence is EDT.
        pytest.param(
            "America/New_York",
            datetime(2027, 11, 7, 1, 30),
            "2027-11-07T05:30:00Z",
            id="new-york-repeated",
        ),
        # New York spring forward 2027-03-14 02:00 EST → 03:00 EDT at 07:00Z.
        pytest.param(
            "America/New_York",
            datetime(2027, 3, 14, 2, 30),
            "2027-03-14T07:00:00Z",
            id="new-york-gap",
        ),
        # Lord Howe 2027-10-03 02:00 +10:30 → 02:30 +11:00 at 15:30Z (a 30-minute gap).
        pytest.param(
            "Australia/Lord_Howe",
            datetime(2027, 10, 3, 2, 15),
            "2027-10-02T15:30:00Z",
            id="lord-howe-gap",
        ),
        # Lord Howe 2027-04-04 02:00 +11:00 → 01:30 +10:30: first occurrence is +11:00.
        pytest.param(
            "Australia/Lord_Howe",
            datetime(2027, 4, 4, 1, 45),
            "2027-04-03T14:45:00Z",
            id="lord-howe-repeated",
        ),
        pytest.param(
            "Asia/Kolkata", datetime(2027, 3, 28, 2, 30), "2027-03-27T21:00:00Z", id="kolkata-plain"
        ),
        pytest.param("UTC", datetime(2027, 3, 28, 2, 30), "2027-03-28T02:30:00Z", id="utc-plain"),
    ],
)
def test_to_utc(zone_name: str, wall: datetime, expected: str) -> None:
    assert z(to_utc(wall, ZoneInfo(zone_name))) == expected


# ------------------------------------------------------------------------- once


@pytest.mark.parametrize(
    ("zone_name", "spec", "expected"),
    [
        # Berlin in June is CEST, +02:00.
        pytest.param(
            "Europe/Berlin", "once 2027-06-01T09:00", "2027-06-01T07:00:00Z", id="prefixed"
        ),
        pytest.param("Europe/Berlin", "2027-06-01T09:00", "2027-06-01T07:00:00Z", id="bare-iso"),
        pytest.param(
            "Europe/Berlin", "2027-06-01 09:00", "2027-06-01T07:00:00Z", id="bare-with-space"
        ),
        pytest.param(
            "Europe/Berlin", "ONCE: 2027-06-01T09:00", "2027-06-01T07:00:00Z", id="upper-with-colon"
        ),
        # Berlin 2027-03-28 02:00 CET → 03:00 CEST: 02:30 does not exist, fires at the jump.
        pytest.param(
            "Europe/Berlin",
            "once 2027-03-28T02:30",
            "2027-03-28T01:00:00Z",
            id="nonexistent-berlin",
        ),
        # New York 2027-03-14 02:00 EST → 03:00 EDT at 07:00Z.
        pytest.param(
            "America/New_York",
            "once 2027-03-14T02:30",
            "2027-03-14T07:00:00Z",
            id="nonexistent-new-york",
        ),
        # Berlin 2027-10-31 03:00 CEST → 02:00 CET: a repeated local time is its first occurrence.
        pytest.param(
            "Europe/Berlin", "once 2027-10-31T02:30", "2027-10-31T00:30:00Z", id="repeated-first"
        ),
        # With an explicit offset it is that instant, whatever the zone.
        pytest.param(
            "Europe/Berlin", "once 2027-06-01T09:00+05:00", "2027-06-01T04:00:00Z", id="offset"
        ),
        pytest.param(
            "Asia/Kolkata", "once 2027-06-01T09:00Z", "2027-06-01T09:00:00Z", id="offset-z"
        ),
        pytest.param(
            "America/New_York",
            "once 2027-03-14T02:30-08:00",
            "2027-03-14T10:30:00Z",
            id="offset-not-zone",
        ),
        # 02:30+02:00 is the first pass of Berlin's repeated hour on 2027-10-31.
        pytest.param(
            "Europe/Berlin",
            "once 2027-10-31T02:30+02:00",
            "2027-10-31T00:30:00Z",
            id="offset-first-pass",
        ),
        # 02:30+01:00 is the SECOND pass of Berlin's repeated hour: 01:30Z, an instant that exists.
        pytest.param(
            "Europe/Berlin",
            "once 2027-10-31T02:30+01:00",
            "2027-10-31T01:30:00Z",
            id="offset-second-pass",
        ),
    ],
)
def test_once_fires_exactly_one_instant(zone_name: str, spec: str, expected: str) -> None:
    schedule = parse(spec, zone_name)
    assert schedule.kind == "once"
    moment = at(expected)
    long_before = at("2027-01-01T00:00:00Z")
    assert [z(found) for found in schedule.upcoming(long_before, 5)] == [expected]
    assert list(schedule.instants(long_before)) == [moment]
    assert schedule.next_after(moment - timedelta(seconds=1)) == moment
    # Strictly after: the instant itself, and anything later, see nothing.
    assert list(schedule.instants(moment)) == []
    assert schedule.next_after(moment) is None
    assert schedule.upcoming(moment + timedelta(days=1), 3) == []


def test_once_is_never_refused_by_an_interval_floor() -> None:
    schedule = parse("once 2027-06-01T09:00", "Europe/Berlin")
    assert schedule.shortest_interval(at("2027-01-01T00:00:00Z")) is None
    check_interval(schedule, timedelta(days=365), start=at("2027-01-01T00:00:00Z"))


# ------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("spec", "expression"),
    [
        ("hourly", "0 * * * *"),
        ("hourly at minute 15", "15 * * * *"),
        ("Hourly at minute 5", "5 * * * *"),
        ("daily", "0 9 * * *"),
        ("daily at 09:00", "0 9 * * *"),
        ("daily at 7:05", "5 7 * * *"),
        ("daily at 23:59", "59 23 * * *"),
        ("weekdays", "0 9 * * 1-5"),
        ("weekdays at 09:00", "0 9 * * 1-5"),
        ("weekly on monday at 09:00", "0 9 * * 1"),
        ("Weekly on Friday at 17:30", "30 17 * * 5"),
        ("weekly on saturday", "0 9 * * 6"),
        ("weekly on sunday at 23:30", "30 23 * * 0"),
        ("  daily   at  06:00 ", "0 6 * * *"),
        ("0 9 * * 1-5", "0 9 * * 1-5"),
        ("cron 0 9 * * 1-5", "0 9 * * 1-5"),
        ("cron:  */30   *  * * *", "*/30 * * * *"),
    ],
)
def test_presets_and_cron_parse_to_cron(spec: str, expression: str) -> None:
    schedule = parse(spec, "Europe/Berlin")
    assert schedule.kind == "cron"
    assert schedule.expression == expression
    assert schedule.spec == spec
    assert schedule.zone == ZoneInfo("Europe/Berlin")
    assert schedule.describe() == f"{spec} (Europe/Berlin)"


@pytest.mark.parametrize(
    ("spec", "zone_name", "needles"),
    [
        pytest.param(
            "hourly",
            "Mars/Olympus",
            ["unknown time zone", "Mars/Olympus", "Europe/Berlin"],
            id="unknown-zone",
        ),
        pytest.param("hourly", "../../etc/passwd", ["unknown time zone"], id="path-as-zone"),
        pytest.param("hourly", "", ["unknown time zone"], id="empty-zone"),
        pytest.param(
            "cron 0 0 9 * * 1",
            "UTC",
            ["6 fields", "write 5", "0 9 * * 1-5"],
            id="six-field-cron-prefixed",
        ),
        pytest.param("0 0 9 * * 1", "UTC", ["has 6 fields", "write 5"], id="six-field-cron-bare"),
        pytest.param("cron 0 9 * *", "UTC", ["4 fields", "write 5"], id="four-field-cron"),
        pytest.param("61 * * * *", "UTC", ["61 * * * *", "minute"], id="minute-61"),
        pytest.param("0 24 * * *", "UTC", ["hour"], id="hour-24"),
        pytest.param("0 0 30 2 *", "UTC", ["day-of-month"], id="february-30"),
        pytest.param("* * * * 8", "UTC", ["day-of-week"], id="weekday-8"),
        pytest.param("weekly on funday", "UTC", ["funday", "monday", "sunday"], id="funday"),
        pytest.param("daily at 25:00", "UTC", ["25:00", "00:00 to 23:59"], id="hour-25"),
        pytest.param("weekdays at 09:60", "UTC", ["00:00 to 23:59"], id="minute-60"),
        pytest.param("hourly at minute 75", "UTC", ["75", "0 to 59"], id="minute-75"),
        pytest.param(
            "every tuesday",
            "UTC",
            ["every tuesday", "not a schedule", "daily at 09:00", "once 2026-12-01T09:00"],
            id="every-tuesday",
        ),
        pytest.param("", "UTC", ["not a schedule"], id="empty"),
        pytest.param(
            "once 2027-02-30T09:00",
            "UTC",
            ["2027-02-30T09:00", "not a date and time", "2026-12-01T09:00"],
            id="once-february-30",
        ),
        pytest.param(
            "once tomorrow", "UTC", ["tomorrow", "not a date and time"], id="once-tomorrow"
        ),
        pytest.param("2027-13-01T09:00", "UTC", ["not a date and time"], id="bare-month-13"),
    ],
)
def test_bad_specs_are_refused_with_a_helpful_message(
    spec: str, zone_name: str, needles: list[str]
) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse(spec, zone_name)
    message = str(caught.value)
    for needle in needles:
        assert needle in message, (needle, message)


def test_schedule_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        parse("hourly", "Nowhere/Special")


# ------------------------------------------------------------------------- intervals


def test_every_thirty_minutes_is_refused_naming_thirty_minutes() -> None:
    schedule = parse("*/30 * * * *", "Europe/Berlin")
    with pytest.raises(ScheduleError) as caught:
        check_interval(schedule, timedelta(hours=1), start=at("2027-06-01T00:00:00Z"))
    message = str(caught.value)
    assert "30 minutes" in message
    assert "'*/30 * * * *'" in message
    assert "is 1 hour" in message


def test_an_interval_equal_to_the_floor_passes() -> None:
    schedule = parse("*/30 * * * *", "Europe/Berlin")
    check_interval(schedule, timedelta(minutes=30), start=at("2027-06-01T00:00:00Z"))


@pytest.mark.parametrize(
    "start",
    [
        # Berlin 2027-03-28 02:00 CET → 03:00 CEST and 2027-10-31 03:00 CEST → 02:00 CET:
        # hourly is one hour apart on the wall clock on both days.
        pytest.param("2027-03-27T00:00:00Z", id="berlin-spring"),
        pytest.param("2027-10-30T00:00:00Z", id="berlin-fall"),
        pytest.param("2027-06-01T00:00:00Z", id="summer"),
    ],
)
def test_hourly_passes_a_one_hour_floor_across_dst(start: str) -> None:
    schedule = parse("0 * * * *", "Europe/Berlin")
    check_interval(schedule, timedelta(hours=1), start=at(start))
    found = schedule.shortest_interval(at(start))
    assert found is not None
    assert found[0] == timedelta(hours=1)


def test_the_interval_is_measured_on_the_wall_clock() -> None:
    # Berlin 2027-03-28 02:00 CET → 03:00 CEST: 01:30 CET is 00:30Z, 03:30 CEST is 01:30Z,
    # one real hour apart, but two hours apart as written.
    schedule = parse("30 1,3 * * *", "Europe/Berlin")
    assert [z(m) for m in schedule.upcoming(at("2027-03-28T00:00:00Z"), 2)] == [
        "2027-03-28T00:30:00Z",
        "2027-03-28T01:30:00Z",
    ]
    check_interval(schedule, timedelta(hours=2), start=at("2027-03-27T00:00:00Z"))
    with pytest.raises(ScheduleError, match="fires every 2 hours"):
        check_interval(schedule, timedelta(hours=3), start=at("2027-03-27T00:00:00Z"))


def test_nine_and_ten_is_refused_by_a_two_hour_floor_naming_one_hour() -> None:
    schedule = parse("0 9,10 * * *", "UTC")
    with pytest.raises(ScheduleError) as caught:
        check_interval(schedule, timedelta(hours=2), start=at("2027-06-01T00:00:00Z"))
    message = str(caught.value)
    assert "fires every 1 hour at its fastest" in message
    assert "2027-06-01 09:00 then 10:00" in message
    assert "is 2 hours" in message
    assert schedule.shortest_interval(at("2027-06-01T00:00:00Z")) == (
        timedelta(hours=1),
        datetime(2027, 6, 1, 9, 0),
    )


def test_daily_is_one_day_apart() -> None:
    schedule = parse("daily at 09:00", "America/New_York")
    check_interval(schedule, timedelta(days=1), start=at("2027-03-10T00:00:00Z"))
    with pytest.raises(ScheduleError, match="fires every 1 day at its fastest"):
        check_interval(schedule, timedelta(days=2), start=at("2027-03-10T00:00:00Z"))


def test_a_fast_schedule_that_first_fires_far_ahead_is_still_refused() -> None:
    # Every minute of 29 February: the next one after 2026-06-01 is 2028-02-29, 638 days ahead.
    schedule = parse("* * 29 2 *", "UTC")
    with pytest.raises(ScheduleError, match="1 minute"):
        check_interval(schedule, timedelta(hours=1), start=at("2026-06-01T00:00:00Z"))


# ------------------------------------------------------------------------- stagger


def test_stagger_offset_is_deterministic_and_within_the_window() -> None:
    window = timedelta(minutes=10)
    for index in range(200):
        trigger_id = f"trg_{index:04d}"
        offset = stagger_offset(trigger_id, window)
        assert offset == stagger_offset(trigger_id, window)
        assert timedelta(0) <= offset < window
        assert offset == timedelta(seconds=int(offset.total_seconds()))


def test_stagger_offset_spreads_different_ids() -> None:
    window = timedelta(hours=1)
    offsets = {stagger_offset(f"trigger-{index}", window) for index in range(100)}
    # 100 ids over 3600 possible seconds: collisions are rare, not the rule.
    assert len(offsets) >= 90
    assert max(offsets) - min(offsets) > timedelta(minutes=30)


@pytest.mark.parametrize(
    "window",
    [timedelta(0), timedelta(seconds=-30), timedelta(milliseconds=500), timedelta(seconds=1)],
)
def test_stagger_offset_is_zero_without_a_window_of_whole_seconds(window: timedelta) -> None:
    for trigger_id in ("a", "b", "trg_0001", "something-else"):
        assert stagger_offset(trigger_id, window) == timedelta(0)


# ------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90", timedelta(seconds=90)),
        (90, timedelta(seconds=90)),
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("1w", timedelta(weeks=1)),
        (" 2H ", timedelta(hours=2)),
        ("15 m", timedelta(minutes=15)),
        ("0", timedelta(0)),
    ],
)
def test_parse_duration(value: str | int, expected: timedelta) -> None:
    assert parse_duration(value, "ROUTINED_X") == expected


@pytest.mark.parametrize("value", ["", "abc", "1y", "-5m", "1.5h", "2h30m", "m", "15 minutes"])
def test_parse_duration_refuses_bad_input_naming_the_setting(value: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_duration(value, "ROUTINED_MIN_SCHEDULE_INTERVAL")
    message = str(caught.value)
    assert "ROUTINED_MIN_SCHEDULE_INTERVAL" in message
    assert repr(value) in message
    assert "15m" in message


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        (timedelta(minutes=30), "30 minutes"),
        (timedelta(hours=1), "1 hour"),
        (timedelta(days=1), "1 day"),
        (timedelta(hours=1, minutes=30), "1 hour 30 minutes"),
        (timedelta(days=7), "7 days"),
        (timedelta(minutes=1), "1 minute"),
        (timedelta(seconds=90), "1 minute 30 seconds"),
        (timedelta(days=1, hours=2, minutes=3, seconds=4), "1 day 2 hours 3 minutes 4 seconds"),
        (timedelta(0), "0 seconds"),
    ],
)
def test_format_duration(span: timedelta, expected: str) -> None:
    assert format_duration(span) == expected


# ------------------------------------------------------------------------- iso


def test_iso_is_utc_with_a_z() -> None:
    assert iso(datetime(2027, 3, 28, 1, 0, tzinfo=UTC)) == "2027-03-28T01:00:00Z"
    # 03:00 CEST (+02:00) is 01:00Z.
    berlin = datetime(2027, 3, 28, 3, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert iso(berlin) == "2027-03-28T01:00:00Z"
    # 09:00 IST (+05:30) is 03:30Z.
    assert (
        iso(datetime(2027, 6, 1, 9, 0, tzinfo=ZoneInfo("Asia/Kolkata"))) == "2027-06-01T03:30:00Z"
    )
