"""Limits: windows in the server's zone and the order in which caps apply (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from routined.limits import Counts, Limits, Plan, PlanError, decide, parse_plans, windows


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("zone", "now", "day_start", "day_end"),
    [
        ("UTC", "2026-11-28T22:15:00Z", "2026-11-28T00:00:00Z", "2026-11-29T00:00:00Z"),
        # Europe/Berlin, 2027-03-28: 02:00 CET → 03:00 CEST, a 23-hour day.
        ("Europe/Berlin", "2027-03-28T12:00:00Z", "2027-03-27T23:00:00Z", "2027-03-28T22:00:00Z"),
        # Europe/Berlin, 2027-10-31: 03:00 CEST → 02:00 CET, a 25-hour day.
        ("Europe/Berlin", "2027-10-31T12:00:00Z", "2027-10-30T22:00:00Z", "2027-10-31T23:00:00Z"),
        # Asia/Kolkata, +05:30 all year.
        ("Asia/Kolkata", "2026-11-28T20:00:00Z", "2026-11-28T18:30:00Z", "2026-11-29T18:30:00Z"),
    ],
)
def test_days_are_calendar_days_in_the_zone(
    zone: str, now: str, day_start: str, day_end: str
) -> None:
    found = windows(at(now), ZoneInfo(zone))
    assert (found.day_start, found.day_end) == (at(day_start), at(day_end))
    assert found.hour_end - found.hour_start == at("2026-01-01T01:00:00Z") - at(
        "2026-01-01T00:00:00Z"
    )


LIMITS = Limits(
    plans=parse_plans("pro:5,unlimited:none"),
    routine_hourly=30,
    account_api_hourly=100,
    zone=ZoneInfo("UTC"),
)
NOW = datetime(2026, 11, 28, 22, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "counts", "plan", "extra", "allowed", "says", "retry"),
    [
        ("api", Counts(4, 0, 0), "pro", False, True, "", None),
        ("api", Counts(5, 0, 0), "pro", False, False, "plan pro's limit of 5 a day", 6300),
        ("api", Counts(5, 0, 0), "pro", True, True, "extra usage is on", None),
        ("schedule", Counts(50, 0, 0), "unlimited", False, True, "", None),
        (
            "api",
            Counts(0, 100, 0),
            "unlimited",
            False,
            False,
            "ROUTINED_ACCOUNT_API_HOURLY_CAP",
            2700,
        ),
        (
            "manual",
            Counts(0, 100, 0),
            "unlimited",
            False,
            True,
            "",
            None,
        ),  # the API cap is for the API
        (
            "manual",
            Counts(0, 0, 30),
            "unlimited",
            False,
            False,
            "ROUTINED_ROUTINE_HOURLY_CAP",
            2700,
        ),
        ("schedule", Counts(0, 0, 30), "unlimited", False, True, "", None),  # by hand and API only
        # Extra usage does not lift the hourly caps.
        ("api", Counts(5, 0, 30), "pro", True, False, "ROUTINED_ROUTINE_HOURLY_CAP", 2700),
        # Both refuse: the wait is until the later reset, the day's.
        (
            "api",
            Counts(5, 0, 30),
            "pro",
            False,
            False,
            "this hour, its limit (ROUTINED_ROUTINE_HOURLY_CAP); account acme has started 5 runs today",
            6300,
        ),
    ],
)
def test_which_cap_applies(
    kind: str, counts: Counts, plan: str, extra: bool, allowed: bool, says: str, retry: int | None
) -> None:
    verdict = decide(
        kind,
        counts,
        account="acme",
        plan=LIMITS.plan(plan),
        extra_usage=extra,
        limits=LIMITS,
        now=NOW,
    )
    assert (verdict.allowed, verdict.retry_after) == (allowed, retry)
    assert says in verdict.reason


@pytest.mark.parametrize("text", ["", "pro", "pro:five", ":5"])
def test_bad_plan_lists_are_refused(text: str) -> None:
    with pytest.raises(PlanError):
        parse_plans(text)


def test_plans_parse() -> None:
    assert parse_plans("pro:5, unlimited:none") == {
        "pro": Plan("pro", 5),
        "unlimited": Plan("unlimited", None),
    }
