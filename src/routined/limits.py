"""Plans and usage limits: how many runs an account and a routine may start, decided
from counts alone (no store) so that every door asks one pure `decide`.

Limits count runs in fixed windows (the clock hour, the calendar day in
`ROUTINED_TIMEZONE`), so a refusal can say when the window resets; `routined.usage`
counts the runs in the store and reports what is used and what remains.

- A plan bounds an account's runs a day (every kind of run, except those its
  gate skipped); an account with `extra_usage` may go past it.
- Each routine may start `ROUTINED_ROUTINE_HOURLY_CAP` runs an hour by hand and
  over the API together; each account `ROUTINED_ACCOUNT_API_HOURLY_CAP` over the
  API.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from routined.config import Settings
from routined.errors import BadInput
from routined.schedules.timing import to_utc
from routined.timeutil import format_duration, iso

DEFAULT_PLANS = "pro:5,max:15,team:25,enterprise:25,unlimited:none"
LIMITED_KINDS = frozenset({"api", "manual"})


class PlanError(BadInput, ValueError):
    """A plan list or plan name routined cannot use."""


@dataclass(frozen=True)
class Plan:
    name: str
    runs_per_day: int | None  # None: no daily limit


def parse_plans(text: str) -> dict[str, Plan]:
    """`pro:5,max:15,unlimited:none` → plans by name."""
    plans: dict[str, Plan] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, limit = item.partition(":")
        name, limit = name.strip(), limit.strip().lower()
        if not name or not (limit.isdigit() or limit == "none"):
            raise PlanError(
                f"{item!r} is not a plan; write NAME:RUNS_PER_DAY or NAME:none, such as pro:5"
            )
        plans[name] = Plan(name, None if limit == "none" else int(limit))
    if not plans:
        raise PlanError("no plans; give at least one, such as unlimited:none")
    return plans


@dataclass(frozen=True)
class Limits:
    plans: Mapping[str, Plan]
    routine_hourly: int  # runs by hand and over the API, per routine
    account_api_hourly: int  # runs over the API, per account
    zone: ZoneInfo  # where days begin

    @classmethod
    @functools.cache  # settings are frozen; parsing plans on every decision was waste
    def of(cls, settings: Settings) -> Limits:
        return cls(
            plans=parse_plans(settings.plans),
            routine_hourly=settings.routine_hourly_cap,
            account_api_hourly=settings.account_api_hourly_cap,
            zone=ZoneInfo(settings.timezone),
        )

    def lowest_cap(self, plan_name: str) -> int:
        """The lowest cap the runs of an account on this plan are counted against:
        while the store holds fewer runs than this, no count is needed (`usage.count`)."""
        plan = self.plans.get(plan_name)
        daily = [] if plan is None or plan.runs_per_day is None else [plan.runs_per_day]
        return min(self.routine_hourly, self.account_api_hourly, *daily)

    def plan(self, name: str) -> Plan:
        try:
            return self.plans[name]
        except KeyError:
            known = ", ".join(self.plans)
            raise PlanError(f"unknown plan {name!r}; the plans are: {known}") from None


@dataclass(frozen=True)
class Windows:
    hour_start: datetime
    hour_end: datetime
    day_start: datetime
    day_end: datetime


def windows(now: datetime, zone: ZoneInfo) -> Windows:
    """The clock hour and the calendar day (in `zone`) that `now` falls in, in UTC."""
    hour_start = now.replace(minute=0, second=0, microsecond=0)
    day_start, day_end = _day(now.astimezone(zone).date(), zone)
    return Windows(
        hour_start=hour_start,
        hour_end=hour_start + timedelta(hours=1),
        day_start=day_start,
        day_end=day_end,
    )


@functools.lru_cache(maxsize=64)
def _day(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """Where a calendar day in `zone` begins and ends, in UTC; kept, as every limit
    check needs today's."""
    # Midnights are found on the wall clock and converted on their own: a day
    # with a daylight saving change is 23 or 25 hours long.
    midnight = datetime.combine(day, time())
    return to_utc(midnight, zone), to_utc(midnight + timedelta(days=1), zone)


@dataclass(frozen=True)
class Counts:
    account_today: int  # runs of the account's routines today
    account_api_hour: int  # of those, over the API this hour
    routine_hour: int  # the routine's runs by hand or over the API this hour


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str  # why it was refused, or a note on an allowance ("" for none)
    retry_after: int | None = None  # seconds until the window that refused resets


def decide(
    kind: str,
    counts: Counts,
    *,
    account: str,
    plan: Plan,
    extra_usage: bool,
    limits: Limits,
    now: datetime,
) -> Verdict:
    """Whether one more run of `kind` (api, manual, schedule) may start now.

    Every limit that refuses is named; the wait is until the last of their
    windows resets, so a client that waits that long is not refused again.
    """
    window = windows(now, limits.zone)
    refusing: list[tuple[str, datetime]] = []
    if kind == "api" and counts.account_api_hour >= limits.account_api_hourly:
        refusing.append(
            (
                f"account {account} has started {counts.account_api_hour} runs over the API "
                "this hour, its limit (ROUTINED_ACCOUNT_API_HOURLY_CAP)",
                window.hour_end,
            )
        )
    if kind in LIMITED_KINDS and counts.routine_hour >= limits.routine_hourly:
        refusing.append(
            (
                f"the routine has started {counts.routine_hour} runs by hand and over the API "
                "this hour, its limit (ROUTINED_ROUTINE_HOURLY_CAP)",
                window.hour_end,
            )
        )
    note = ""
    if plan.runs_per_day is not None and counts.account_today >= plan.runs_per_day:
        used = f"account {account} has started {counts.account_today} runs today"
        if extra_usage:
            note = (
                f"account {account} has reached plan {plan.name}'s {plan.runs_per_day} runs "
                "today: extra usage is on"
            )
        else:
            refusing.append(
                (f"{used}, plan {plan.name}'s limit of {plan.runs_per_day} a day", window.day_end)
            )
    if refusing:
        return _refused("; ".join(why for why, _ in refusing), max(r for _, r in refusing), now)
    return Verdict(True, note)


def _refused(why: str, resets: datetime, now: datetime) -> Verdict:
    seconds = max(1, math.ceil((resets - now).total_seconds()))
    wait = format_duration(timedelta(seconds=seconds))
    return Verdict(False, f"{why}; it resets at {iso(resets)} (in {wait})", seconds)
