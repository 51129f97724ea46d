"""Fire decisions: tables of real UTC instants, policies and runs in flight.

Every expected local time below was worked out by hand from the zone's
offsets (Europe/Berlin is UTC+2 in July; on 2027-03-28 at 01:00Z it springs
from 02:00 CET to 03:00 CEST; on 2027-10-31 at 01:00Z it falls back from
03:00 CEST to 02:00 CET), never by asking the module.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from routined.fires import (
    Decision,
    InFlight,
    Outcome,
    Plan,
    Policy,
    plan,
)
from routined.routines.policy import CatchUp, Overlap

BERLIN = ZoneInfo("Europe/Berlin")
GRACE = timedelta(minutes=5)

F = Outcome.FIRED
C = Outcome.CAUGHT_UP
S = Outcome.SKIPPED
M = Outcome.MISSED
Q = Outcome.COALESCED

ACTIVE = InFlight("run_active", "running", False)
QUEUED_SERIAL = InFlight("run_waiting", "queued", True)
QUEUED_PLAIN = InFlight("run_manual", "queued", False)


def utc(text: str) -> datetime:
    """An aware UTC instant from ISO text ending in Z."""
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0), text
    return moment


def decide(
    slots: Sequence[datetime],
    *,
    now: datetime,
    catch_up: CatchUp = CatchUp.LATEST,
    window: timedelta = timedelta(days=7),
    overlap: Overlap = Overlap.ALLOW,
    grace: timedelta = GRACE,
    paused: bool = False,
    in_flight: Sequence[InFlight] = (),
    offset: timedelta = timedelta(0),
    zone: ZoneInfo = BERLIN,
) -> Plan:
    result = plan(
        slots,
        now=now,
        zone=zone,
        policy=Policy(catch_up=catch_up, catch_up_window=window, overlap=overlap),
        grace=grace,
        paused=paused,
        in_flight=in_flight,
        offset=offset,
    )
    assert [d.slot for d in result.decisions] == list(slots), "one decision per slot, in order"
    return result


def check_reasons(decisions: Sequence[Decision], phrases: Sequence[Sequence[str]]) -> None:
    assert len(decisions) == len(phrases)
    for decision, wanted in zip(decisions, phrases, strict=True):
        for phrase in wanted:
            assert phrase in decision.reason, (phrase, decision.reason)


# An hourly schedule, July (Berlin = UTC+2); routined was down from 09:30Z.
H10 = utc("2027-07-01T10:00:00Z")  # 12:00 Europe/Berlin
H11 = utc("2027-07-01T11:00:00Z")  # 13:00
H12 = utc("2027-07-01T12:00:00Z")  # 14:00
H13 = utc("2027-07-01T13:00:00Z")  # 15:00
H14 = utc("2027-07-01T14:00:00Z")  # 16:00
H15 = utc("2027-07-01T15:00:00Z")  # 17:00
HOURS = [H10, H11, H12, H13, H14, H15]
BACK_AFTER_15 = utc("2027-07-01T15:02:00Z")  # H15 is 2 minutes old: on time
BACK_AT_1430 = utc("2027-07-01T14:30:00Z")  # H14 is 30 minutes old: late

MISSED_AT = [
    "missed at 2027-07-01 12:00 Europe/Berlin (10:00Z)",
    "missed at 2027-07-01 13:00 Europe/Berlin (11:00Z)",
    "missed at 2027-07-01 14:00 Europe/Berlin (12:00Z)",
    "missed at 2027-07-01 15:00 Europe/Berlin (13:00Z)",
    "missed at 2027-07-01 16:00 Europe/Berlin (14:00Z)",
]


@pytest.mark.parametrize(
    ("catch_up", "slots", "now", "outcomes", "phrases"),
    [
        pytest.param(
            CatchUp.LATEST, HOURS, BACK_AFTER_15,
            [M, M, M, M, M, F],
            [*[(m, "catch_up: latest", "most recent slot (2027-07-01 17:00 Europe/Berlin") for m in MISSED_AT],
             ("scheduled for 2027-07-01 17:00 Europe/Berlin (15:00Z)",)],
            id="latest-with-on-time-slot-fires-only-that",
        ),
        pytest.param(
            CatchUp.LATEST, HOURS[:5], BACK_AT_1430,
            [M, M, M, M, C],
            [*[(m, "catch_up: latest", "most recent slot (2027-07-01 16:00 Europe/Berlin") for m in MISSED_AT[:4]],
             (MISSED_AT[4], "30 minutes late", "catch_up: latest")],
            id="latest-all-late-catches-up-newest",
        ),
        pytest.param(
            CatchUp.SKIP, HOURS, BACK_AFTER_15,
            [M, M, M, M, M, F],
            [*[(m, "catch_up: skip") for m in MISSED_AT],
             ("scheduled for 2027-07-01 17:00 Europe/Berlin",)],
            id="skip-with-on-time-slot",
        ),
        pytest.param(
            CatchUp.SKIP, HOURS[:5], BACK_AT_1430,
            [M, M, M, M, M],
            [(m, "catch_up: skip") for m in MISSED_AT],
            id="skip-all-late",
        ),
        pytest.param(
            CatchUp.ALL, HOURS, BACK_AFTER_15,
            [C, C, C, C, C, F],
            [(MISSED_AT[0], "5 hours 2 minutes late", "catch_up: all"),
             (MISSED_AT[1], "4 hours 2 minutes late", "catch_up: all"),
             (MISSED_AT[2], "3 hours 2 minutes late", "catch_up: all"),
             (MISSED_AT[3], "2 hours 2 minutes late", "catch_up: all"),
             (MISSED_AT[4], "1 hour 2 minutes late", "catch_up: all"),
             ("scheduled for 2027-07-01 17:00 Europe/Berlin",)],
            id="all-with-on-time-slot",
        ),
        pytest.param(
            CatchUp.ALL, HOURS[:5], BACK_AT_1430,
            [C, C, C, C, C],
            [(MISSED_AT[0], "4 hours 30 minutes late", "catch_up: all"),
             (MISSED_AT[1], "3 hours 30 minutes late"),
             (MISSED_AT[2], "2 hours 30 minutes late"),
             (MISSED_AT[3], "1 hour 30 minutes late"),
             (MISSED_AT[4], "30 minutes late", "catch_up: all")],
            id="all-all-late",
        ),
    ],
)  # fmt: skip
def test_hourly_schedule_after_five_hours_down(
    catch_up: CatchUp,
    slots: list[datetime],
    now: datetime,
    outcomes: list[Outcome],
    phrases: list[tuple[str, ...]],
) -> None:
    result = decide(slots, now=now, catch_up=catch_up)
    assert [d.outcome for d in result.decisions] == outcomes
    assert [d.serial for d in result.decisions] == [False] * len(slots)  # overlap: allow
    assert result.cancel == []
    check_reasons(result.decisions, phrases)


# A daily 03:00 Europe/Berlin schedule across the spring-forward of 2027-03-28.
D26 = utc("2027-03-26T02:00:00Z")  # 03:00 CET
D27 = utc("2027-03-27T02:00:00Z")  # 03:00 CET
D28 = utc("2027-03-28T01:00:00Z")  # 03:00 CEST
DAYS = [D26, D27, D28]
AT_D26 = "missed at 2027-03-26 03:00 Europe/Berlin (02:00Z)"
AT_D27 = "missed at 2027-03-27 03:00 Europe/Berlin (02:00Z)"
AT_D28 = "missed at 2027-03-28 03:00 Europe/Berlin (01:00Z)"
TOO_OLD = "catch_up_window (2 days)"


@pytest.mark.parametrize(
    ("catch_up", "now", "outcomes", "phrases"),
    [
        # Back at 2027-03-28 12:00Z: D26 is 2 days 10 hours old, D27 1 day 10 hours, D28 11 hours.
        pytest.param(
            CatchUp.LATEST, utc("2027-03-28T12:00:00Z"), [M, M, C],
            [(AT_D26, TOO_OLD),
             (AT_D27, "catch_up: latest", "most recent slot (2027-03-28 03:00 Europe/Berlin"),
             (AT_D28, "11 hours late", "catch_up: latest")],
            id="latest",
        ),
        pytest.param(
            CatchUp.SKIP, utc("2027-03-28T12:00:00Z"), [M, M, M],
            [(AT_D26, TOO_OLD), (AT_D27, "catch_up: skip"), (AT_D28, "catch_up: skip")],
            id="skip",
        ),
        pytest.param(
            CatchUp.ALL, utc("2027-03-28T12:00:00Z"), [M, C, C],
            [(AT_D26, TOO_OLD),
             (AT_D27, "1 day 10 hours late", "catch_up: all"),
             (AT_D28, "11 hours late", "catch_up: all")],
            id="all",
        ),
        # Window boundary: exactly 2 days old is inside the window, 1 second more is not.
        pytest.param(
            CatchUp.ALL, utc("2027-03-28T02:00:00Z"), [C, C, C],
            [(AT_D26, "2 days late"), (AT_D27, "1 day late"), (AT_D28, "1 hour late")],
            id="all-exactly-at-window",
        ),
        pytest.param(
            CatchUp.ALL, utc("2027-03-28T02:00:01Z"), [M, C, C],
            [(AT_D26, TOO_OLD), (AT_D27, "1 day 1 second late"), (AT_D28, "1 hour 1 second late")],
            id="all-window-plus-one-second",
        ),
        pytest.param(
            CatchUp.LATEST, utc("2027-03-28T02:00:00Z"), [M, M, C],
            [(AT_D26, "catch_up: latest", "(2027-03-28 03:00 Europe/Berlin"),
             (AT_D27, "catch_up: latest", "(2027-03-28 03:00 Europe/Berlin"),
             (AT_D28, "1 hour late")],
            id="latest-exactly-at-window",
        ),
    ],
)  # fmt: skip
def test_daily_schedule_after_three_days_down_with_two_day_window(
    catch_up: CatchUp, now: datetime, outcomes: list[Outcome], phrases: list[tuple[str, ...]]
) -> None:
    result = decide(DAYS, now=now, catch_up=catch_up, window=timedelta(days=2))
    assert [d.outcome for d in result.decisions] == outcomes
    assert result.cancel == []
    check_reasons(result.decisions, phrases)
    for decision, wanted in zip(result.decisions, phrases, strict=True):
        if TOO_OLD not in wanted:
            assert "catch_up_window" not in decision.reason


def test_slots_older_than_window_are_missed_under_every_catch_up() -> None:
    for catch_up in CatchUp:
        result = decide(
            [D26], now=utc("2027-03-28T12:00:00Z"), catch_up=catch_up, window=timedelta(days=2)
        )
        assert [d.outcome for d in result.decisions] == [M], catch_up
        assert TOO_OLD in result.decisions[0].reason


@pytest.mark.parametrize(
    ("slots", "now", "grace", "offset", "catch_up", "outcomes", "phrases"),
    [
        pytest.param([H10], H10, GRACE, timedelta(0), CatchUp.LATEST, [F], [("scheduled for 2027-07-01 12:00 Europe/Berlin",)], id="at-slot"),
        pytest.param([H10], utc("2027-07-01T10:05:00Z"), GRACE, timedelta(0), CatchUp.LATEST, [F], [("scheduled for",)], id="exactly-at-grace"),
        pytest.param([H10], utc("2027-07-01T10:05:01Z"), GRACE, timedelta(0), CatchUp.LATEST, [C], [("5 minutes 1 second late", "catch_up: latest")], id="grace-plus-1s-latest"),
        pytest.param([H10], utc("2027-07-01T10:05:01Z"), GRACE, timedelta(0), CatchUp.SKIP, [M], [("catch_up: skip",)], id="grace-plus-1s-skip"),
        pytest.param([H10], utc("2027-07-01T10:05:01Z"), GRACE, timedelta(0), CatchUp.ALL, [C], [("catch_up: all",)], id="grace-plus-1s-all"),
        pytest.param([H10], H10, timedelta(0), timedelta(0), CatchUp.SKIP, [F], [("scheduled for",)], id="zero-grace-at-slot"),
        pytest.param([H10], utc("2027-07-01T10:00:01Z"), timedelta(0), timedelta(0), CatchUp.SKIP, [M], [("catch_up: skip",)], id="zero-grace-plus-1s"),
        # Stagger: the slot is due at instant + offset; lateness counts from there.
        pytest.param([H10], utc("2027-07-01T10:24:00Z"), GRACE, timedelta(0), CatchUp.SKIP, [M], [("catch_up: skip",)], id="no-offset-24-min-is-late"),
        pytest.param([H10], utc("2027-07-01T10:24:00Z"), GRACE, timedelta(minutes=20), CatchUp.SKIP, [F], [("scheduled for 2027-07-01 12:00 Europe/Berlin",)], id="offset-20-min-makes-it-on-time"),
        pytest.param([H10], utc("2027-07-01T10:25:00Z"), GRACE, timedelta(minutes=20), CatchUp.SKIP, [F], [("scheduled for",)], id="offset-exactly-at-grace"),
        pytest.param([H10], utc("2027-07-01T10:25:01Z"), GRACE, timedelta(minutes=20), CatchUp.SKIP, [M], [("catch_up: skip",)], id="offset-grace-plus-1s"),
        pytest.param(
            [utc("2027-07-01T08:00:00Z"), utc("2027-07-01T09:00:00Z"), H10], utc("2027-07-01T10:22:00Z"), GRACE, timedelta(minutes=20), CatchUp.LATEST,
            [M, M, F],
            [("missed at 2027-07-01 10:00 Europe/Berlin", "most recent slot (2027-07-01 12:00 Europe/Berlin"),
             ("missed at 2027-07-01 11:00 Europe/Berlin", "most recent slot (2027-07-01 12:00 Europe/Berlin"),
             ("scheduled for 2027-07-01 12:00 Europe/Berlin",)],
            id="offset-three-slots-newest-on-time",
        ),
    ],
)  # fmt: skip
def test_grace_and_stagger_boundaries(
    slots: list[datetime],
    now: datetime,
    grace: timedelta,
    offset: timedelta,
    catch_up: CatchUp,
    outcomes: list[Outcome],
    phrases: list[tuple[str, ...]],
) -> None:
    result = decide(slots, now=now, grace=grace, offset=offset, catch_up=catch_up)
    assert [d.outcome for d in result.decisions] == outcomes
    check_reasons(result.decisions, phrases)


# Overlap: catch_up all over H10, H11 (late) and H12 (on time at 12:01Z) wants three runs.
BATCH = [H10, H11, H12]
BATCH_NOW = utc("2027-07-01T12:01:00Z")
B10 = "missed at 2027-07-01 12:00 Europe/Berlin"
B11 = "missed at 2027-07-01 13:00 Europe/Berlin"
B12 = "scheduled for 2027-07-01 14:00 Europe/Berlin"


@pytest.mark.parametrize(
    ("overlap", "in_flight", "expected", "cancel"),
    [
        pytest.param(Overlap.ALLOW, (), [(C, False, (B10,)), (C, False, (B11,)), (F, False, (B12,))], [], id="allow-nothing-in-flight"),
        pytest.param(Overlap.ALLOW, (ACTIVE, QUEUED_SERIAL), [(C, False, (B10,)), (C, False, (B11,)), (F, False, (B12,))], [], id="allow-runs-in-flight"),
        pytest.param(Overlap.SKIP, (), [(C, True, (B10,)), (C, True, (B11,)), (F, True, (B12,))], [], id="skip-nothing-in-flight"),
        pytest.param(
            Overlap.SKIP, (ACTIVE,),
            [(S, None, (B10, "run_active", "overlap: skip")),
             (S, None, (B11, "run_active", "overlap: skip")),
             (S, None, (B12, "run_active is still running", "overlap: skip"))],
            [], id="skip-active-run",
        ),
        pytest.param(
            Overlap.SKIP, (QUEUED_PLAIN,),
            [(S, None, ("run_manual", "overlap: skip"))] * 2 + [(S, None, ("run_manual is still queued", "overlap: skip"))],
            [], id="skip-queued-run",
        ),
        pytest.param(Overlap.QUEUE_ONE, (), [(C, True, (B10,)), (C, True, (B11,)), (F, True, (B12,))], [], id="queue-one-nothing-in-flight"),
        pytest.param(
            Overlap.QUEUE_ONE, (ACTIVE,),
            [(Q, None, (B10, "run_active", "overlap: queue_one")),
             (Q, None, (B11, "run_active", "overlap: queue_one")),
             (F, True, (B12, "waits for run run_active"))],
            [], id="queue-one-active-run-newest-waits",
        ),
        pytest.param(
            Overlap.QUEUE_ONE, (ACTIVE, QUEUED_PLAIN),
            [(Q, None, ("overlap: queue_one",)), (Q, None, ("overlap: queue_one",)), (F, True, (B12, "waits for run run_active"))],
            [], id="queue-one-active-and-non-serial-queued",
        ),
        pytest.param(
            Overlap.QUEUE_ONE, (ACTIVE, QUEUED_SERIAL),
            [(Q, None, (B10, "merged into run_waiting", "overlap: queue_one")),
             (Q, None, (B11, "merged into run_waiting", "overlap: queue_one")),
             (Q, None, (B12, "merged into run_waiting", "overlap: queue_one"))],
            [], id="queue-one-serial-run-already-waiting",
        ),
        pytest.param(Overlap.CANCEL_PREVIOUS, (), [(C, True, (B10,)), (C, True, (B11,)), (F, True, (B12,))], [], id="cancel-previous-nothing-in-flight"),
        pytest.param(
            Overlap.CANCEL_PREVIOUS, (ACTIVE, QUEUED_SERIAL),
            # The scheduler adds what became of the cancelled runs to these reasons.
            [(C, True, (B10,)), (C, True, (B11,)), (F, True, (B12,))],
            ["run_active", "run_waiting"], id="cancel-previous-runs-in-flight",
        ),
    ],
)  # fmt: skip
def test_overlap_policies(
    overlap: Overlap,
    in_flight: tuple[InFlight, ...],
    expected: list[tuple[Outcome, bool | None, tuple[str, ...]]],
    cancel: list[str],
) -> None:
    result = decide(
        BATCH, now=BATCH_NOW, catch_up=CatchUp.ALL, overlap=overlap, in_flight=in_flight
    )
    assert [d.outcome for d in result.decisions] == [e[0] for e in expected]
    for decision, (_, serial, _) in zip(result.decisions, expected, strict=True):
        if serial is not None:  # serial only means something for a run that starts
            assert decision.serial is serial, decision
    assert result.cancel == cancel
    check_reasons(result.decisions, [e[2] for e in expected])
    if not in_flight:
        assert all("overlap" not in d.reason for d in result.decisions)


def test_allow_never_mentions_runs_in_flight() -> None:
    result = decide(
        BATCH, now=BATCH_NOW, catch_up=CatchUp.ALL, overlap=Overlap.ALLOW, in_flight=(ACTIVE,)
    )
    assert all("run_active" not in d.reason for d in result.decisions)


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        pytest.param((ACTIVE,), (C, "waits for run run_active"), id="active-run"),
        pytest.param(
            (ACTIVE, QUEUED_SERIAL), (Q, "merged into run_waiting"), id="serial-run-waiting"
        ),
    ],
)
def test_queue_one_with_one_caught_up_slot(
    in_flight: tuple[InFlight, ...], expected: tuple[Outcome, str]
) -> None:
    """Only the slot that catch_up latest keeps meets overlap; the missed one stays missed."""
    result = decide([H13, H14], now=BACK_AT_1430, overlap=Overlap.QUEUE_ONE, in_flight=in_flight)
    assert [d.outcome for d in result.decisions] == [M, expected[0]]
    assert "catch_up: latest" in result.decisions[0].reason
    assert expected[1] in result.decisions[1].reason
    if expected[0] is C:
        assert result.decisions[1].serial is True
    assert result.cancel == []


@pytest.mark.parametrize(
    ("slots", "now", "window", "in_flight", "outcomes", "phrases"),
    [
        pytest.param(
            DAYS, utc("2027-03-28T12:00:00Z"), timedelta(days=2), (),
            [M, C, C], [(TOO_OLD,), (AT_D27, "catch_up: all"), (AT_D28, "catch_up: all")],
            id="daily-nothing-in-flight",
        ),
        pytest.param(
            DAYS, utc("2027-03-28T12:00:00Z"), timedelta(days=2), (ACTIVE,),
            [M, S, S], [(TOO_OLD,), (AT_D27, "run_active", "overlap: skip"), (AT_D28, "run_active", "overlap: skip")],
            id="daily-run-in-flight",
        ),
        pytest.param(
            HOURS, BACK_AFTER_15, timedelta(days=7), (),
            [C, C, C, C, C, F], [(m,) for m in MISSED_AT] + [("scheduled for 2027-07-01 17:00 Europe/Berlin",)],
            id="hourly-nothing-in-flight",
        ),
        pytest.param(
            HOURS, BACK_AFTER_15, timedelta(days=7), (QUEUED_SERIAL,),
            [S] * 6, [(m, "run_waiting is still queued", "overlap: skip") for m in MISSED_AT] + [("scheduled for", "overlap: skip")],
            id="hourly-run-in-flight",
        ),
    ],
)  # fmt: skip
def test_catch_up_all_with_overlap_skip(
    slots: list[datetime],
    now: datetime,
    window: timedelta,
    in_flight: tuple[InFlight, ...],
    outcomes: list[Outcome],
    phrases: list[tuple[str, ...]],
) -> None:
    result = decide(
        slots,
        now=now,
        catch_up=CatchUp.ALL,
        window=window,
        overlap=Overlap.SKIP,
        in_flight=in_flight,
    )
    assert [d.outcome for d in result.decisions] == outcomes
    for decision in result.decisions:
        if decision.starts_run:
            assert decision.serial is True
    assert result.cancel == []
    check_reasons(result.decisions, phrases)


@pytest.mark.parametrize(
    ("catch_up", "overlap", "in_flight", "now"),
    [
        pytest.param(CatchUp.ALL, Overlap.ALLOW, (), BACK_AFTER_15, id="all-allow"),
        pytest.param(CatchUp.LATEST, Overlap.CANCEL_PREVIOUS, (ACTIVE, QUEUED_SERIAL), BACK_AFTER_15, id="cancel-previous-nothing-cancelled"),
        pytest.param(CatchUp.SKIP, Overlap.QUEUE_ONE, (ACTIVE,), BACK_AFTER_15, id="queue-one"),
        pytest.param(CatchUp.ALL, Overlap.SKIP, (), utc("2027-07-01T15:00:00Z"), id="every-slot-due-now"),
    ],
)  # fmt: skip
def test_paused_skips_every_slot(
    catch_up: CatchUp, overlap: Overlap, in_flight: tuple[InFlight, ...], now: datetime
) -> None:
    result = decide(
        HOURS, now=now, catch_up=catch_up, overlap=overlap, paused=True, in_flight=in_flight
    )
    assert [d.outcome for d in result.decisions] == [S] * len(HOURS)
    assert all("paused" in d.reason for d in result.decisions)
    assert not any(d.starts_run for d in result.decisions)
    assert result.cancel == []


@pytest.mark.parametrize(
    ("paused", "overlap", "in_flight"),
    [
        (False, Overlap.ALLOW, ()),
        (False, Overlap.CANCEL_PREVIOUS, (ACTIVE,)),
        (False, Overlap.QUEUE_ONE, (ACTIVE, QUEUED_SERIAL)),
        (True, Overlap.SKIP, (ACTIVE,)),
    ],
)
def test_no_slots_gives_empty_plan(
    paused: bool, overlap: Overlap, in_flight: tuple[InFlight, ...]
) -> None:
    result = decide([], now=BACK_AFTER_15, overlap=overlap, paused=paused, in_flight=in_flight)
    assert result == Plan([], [])


@pytest.mark.parametrize(
    ("outcome", "starts"),
    [
        (Outcome.FIRED, True),
        (Outcome.CAUGHT_UP, True),
        (Outcome.SKIPPED, False),
        (Outcome.MISSED, False),
        (Outcome.COALESCED, False),
        (Outcome.REFUSED, False),
    ],
)
def test_decision_starts_run(outcome: Outcome, starts: bool) -> None:
    assert Decision(H10, outcome, "why").starts_run is starts
    assert Decision(H10, outcome, "why", serial=True).starts_run is starts


@pytest.mark.parametrize(
    ("zone", "slot", "local"),
    [
        pytest.param("Europe/Berlin", "2027-03-28T00:59:00Z", "2027-03-28 01:59 Europe/Berlin (00:59Z)", id="berlin-before-spring-forward"),
        pytest.param("Europe/Berlin", "2027-03-28T01:00:00Z", "2027-03-28 03:00 Europe/Berlin (01:00Z)", id="berlin-after-spring-forward"),
        pytest.param("Europe/Berlin", "2027-10-31T00:30:00Z", "2027-10-31 02:30 Europe/Berlin (00:30Z)", id="berlin-first-0230"),
        pytest.param("Europe/Berlin", "2027-10-31T01:30:00Z", "2027-10-31 02:30 Europe/Berlin (01:30Z)", id="berlin-second-0230"),
        pytest.param("America/New_York", "2027-03-14T06:59:00Z", "2027-03-14 01:59 America/New_York (06:59Z)", id="new-york-before-spring-forward"),
        pytest.param("America/New_York", "2027-03-14T07:00:00Z", "2027-03-14 03:00 America/New_York (07:00Z)", id="new-york-after-spring-forward"),
        pytest.param("Asia/Kolkata", "2027-07-01T10:00:00Z", "2027-07-01 15:30 Asia/Kolkata (10:00Z)", id="kolkata-half-hour"),
        pytest.param("UTC", "2027-07-01T10:00:00Z", "2027-07-01 10:00 UTC (10:00Z)", id="utc"),
    ],
)  # fmt: skip
def test_reasons_show_local_time_in_the_zone(zone: str, slot: str, local: str) -> None:
    instant = utc(slot)
    on_time = decide([instant], now=instant + timedelta(minutes=1), zone=ZoneInfo(zone))
    assert f"scheduled for {local}" in on_time.decisions[0].reason
    late = decide(
        [instant], now=instant + timedelta(hours=2), catch_up=CatchUp.SKIP, zone=ZoneInfo(zone)
    )
    assert f"missed at {local}" in late.decisions[0].reason


@pytest.mark.parametrize(
    ("catch_up", "overlap", "in_flight", "now", "paused"),
    [
        pytest.param(CatchUp.SKIP, Overlap.ALLOW, (), utc("2027-03-28T01:01:00Z"), False, id="fired"),
        pytest.param(CatchUp.ALL, Overlap.ALLOW, (), utc("2027-03-28T12:00:00Z"), False, id="caught-up"),
        pytest.param(CatchUp.LATEST, Overlap.ALLOW, (), utc("2027-03-28T12:00:00Z"), False, id="missed-latest"),
        pytest.param(CatchUp.SKIP, Overlap.ALLOW, (), utc("2027-03-28T12:00:00Z"), False, id="missed-skip"),
        pytest.param(CatchUp.ALL, Overlap.ALLOW, (), utc("2027-03-31T12:00:00Z"), False, id="missed-window"),
        pytest.param(CatchUp.ALL, Overlap.SKIP, (ACTIVE,), utc("2027-03-28T12:00:00Z"), False, id="skipped-overlap"),
        pytest.param(CatchUp.ALL, Overlap.QUEUE_ONE, (ACTIVE,), utc("2027-03-28T12:00:00Z"), False, id="coalesced"),
        pytest.param(CatchUp.ALL, Overlap.QUEUE_ONE, (ACTIVE, QUEUED_SERIAL), utc("2027-03-28T12:00:00Z"), False, id="coalesced-behind-waiting"),
        pytest.param(CatchUp.ALL, Overlap.CANCEL_PREVIOUS, (ACTIVE,), utc("2027-03-28T12:00:00Z"), False, id="cancel-previous"),
        pytest.param(CatchUp.ALL, Overlap.ALLOW, (), utc("2027-03-28T12:00:00Z"), True, id="paused"),
    ],
)  # fmt: skip
def test_every_reason_shows_its_slots_local_time(
    catch_up: CatchUp,
    overlap: Overlap,
    in_flight: tuple[InFlight, ...],
    now: datetime,
    paused: bool,
) -> None:
    """D27 and D28 (03:00 Berlin on both sides of the spring-forward), whatever the outcome."""
    result = decide(
        [D27, D28], now=now, catch_up=catch_up, window=timedelta(days=2), overlap=overlap,
        in_flight=in_flight, paused=paused,
    )  # fmt: skip
    shown = {D27: "2027-03-27 03:00 Europe/Berlin", D28: "2027-03-28 03:00 Europe/Berlin"}
    for decision in result.decisions:
        assert shown[decision.slot] in decision.reason, decision
