"""Schedule maths: when a schedule fires, as UTC instants. Pure: no store, no clock.

A schedule is a cron expression (presets are spelled as cron) or a single local
time, read in an IANA time zone. Occurrences are found on the zone's wall clock
and each one is converted to UTC on its own; spans are never added to local
times. Two rules make every wall-clock time map to exactly one instant:

- a time that does not exist (the clock jumps over it in spring) fires once at
  the next valid instant, the moment the clock jumps;
- a time that exists twice (the clock repeats it in autumn) fires once, at its
  first occurrence.

Several wall-clock times may map to the same instant (02:00 and 02:30 on a
spring-forward day both become 03:00): that instant fires once.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from routined.errors import BadInput
from routined.timeutil import format_duration

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_TIME = "09:00"
PRESETS_HELP = (
    '"hourly", "hourly at minute 15", "daily at 09:00", "weekdays at 09:00", '
    '"weekly on monday at 09:00", a 5-field cron expression such as "0 9 * * 1-5", '
    'or a local time such as "once 2026-12-01T09:00"'
)

_TIME = r"(?P<hour>\d{1,2}):(?P<minute>\d{2})"
_PRESETS = (
    (re.compile(r"hourly(?: at minute (?P<minute>\d{1,2}))?"), "hourly"),
    (re.compile(rf"daily(?: at {_TIME})?"), "daily"),
    (re.compile(rf"weekdays(?: at {_TIME})?"), "weekdays"),
    (re.compile(rf"weekly on (?P<day>[a-z]+)(?: at {_TIME})?"), "weekly"),
)
_CRON_LIKE = re.compile(r"[0-9*?][^ ]*( [^ ]+){2,}")
_DURATION = re.compile(r"(?P<number>\d+)\s*(?P<unit>s|m|h|d|w)?")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# How many occurrences to look at when measuring a schedule's shortest interval:
# more than a year of an hourly schedule, and a year of any slower one.
_INTERVAL_SAMPLE = 10_000
_INTERVAL_HORIZON = timedelta(days=400)


class ScheduleError(BadInput, ValueError):
    """A schedule that cannot be used; the message says why and what would work."""


@dataclass(frozen=True)
class Schedule:
    """When to fire: `cron` on the wall clock of `zone`, or `once` at a local time."""

    kind: Literal["cron", "once"]
    expression: str  # the cron expression, or the local time as ISO 8601
    zone: ZoneInfo
    spec: str  # as the user wrote it

    def instants(self, after: datetime) -> Iterator[datetime]:
        """Every instant (aware, UTC) strictly after `after`, in order."""
        if self.kind == "once":
            given = datetime.fromisoformat(self.expression)
            moment = given.astimezone(UTC) if given.tzinfo else to_utc(given, self.zone)
            if moment > after:
                yield moment
            return
        # Wall-clock times before `after`'s own never map after it: a time the
        # clock jumps over maps to the jump, and if `after` is before the jump
        # its wall time is before the gap too.
        local = after.astimezone(self.zone).replace(tzinfo=None)
        last = after
        try:
            for wall in CronSim(self.expression, local):
                moment = to_utc(wall, self.zone)
                if moment > last:
                    last = moment
                    yield moment
        except StopIteration:  # cronsim gives up after 50 years without a match
            return

    def next_after(self, after: datetime) -> datetime | None:
        return next(self.instants(after), None)

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        return list(itertools.islice(self.instants(after), max(count, 0)))

    def shortest_interval(self, start: datetime) -> tuple[timedelta, datetime] | None:
        """The shortest wall-clock gap between two fires from `start`, and where it begins.

        Measured on the wall clock, as the user wrote it: a schedule is not made
        faster by the hour a spring-forward day removes.
        """
        if self.kind == "once":
            return None
        local = start.astimezone(self.zone).replace(tzinfo=None)
        shortest: tuple[timedelta, datetime] | None = None
        previous: datetime | None = None
        first: datetime | None = None
        try:
            for count, wall in enumerate(CronSim(self.expression, local)):
                # The horizon runs from the first fire, which may be years away
                # (a schedule for 29 February).
                first = first or wall
                if previous is not None:
                    gap = wall - previous
                    if shortest is None or gap < shortest[0]:
                        shortest = (gap, previous)
                    if gap <= timedelta(minutes=1):
                        break  # nothing is shorter
                previous = wall
                if count >= _INTERVAL_SAMPLE or wall - first > _INTERVAL_HORIZON:
                    break
        except StopIteration:
            pass
        return shortest

    def describe(self) -> str:
        return f"{self.spec} ({self.zone.key})"


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin or UTC"
        ) from None


def parse(spec: str, zone_name: str) -> Schedule:
    """A schedule from a preset, a 5-field cron expression or `once <local time>`."""
    where = zone(zone_name)
    text = " ".join(spec.split())
    lowered = text.lower()
    if lowered.startswith("once"):
        return once(text[4:].strip(" :"), zone_name, spec=spec)
    if lowered.startswith("cron"):
        return cron(text[4:].strip(" :"), zone_name, spec=spec)
    for pattern, preset in _PRESETS:
        match = pattern.fullmatch(lowered)
        if match is not None:
            return Schedule("cron", _preset_cron(preset, match), where, spec)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ].*", text):
        return once(text, zone_name, spec=spec)
    if _CRON_LIKE.fullmatch(text):
        return cron(text, zone_name, spec=spec)  # explains a wrong number of fields
    raise ScheduleError(f"{spec!r} is not a schedule; write one of: {PRESETS_HELP}")


def cron(expression: str, zone_name: str, *, spec: str | None = None) -> Schedule:
    fields = expression.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"cron {expression!r} has {len(fields)} fields; write 5: minute hour "
            "day-of-month month day-of-week, such as '0 9 * * 1-5'"
        )
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as error:
        raise ScheduleError(f"cron {expression!r}: {str(error).lower()}") from None
    return Schedule("cron", " ".join(fields), zone(zone_name), spec or expression)


def once(local_time: str, zone_name: str, *, spec: str | None = None) -> Schedule:
    """A single local time such as 2026-12-01T09:00; with an offset it is that instant."""
    where = zone(zone_name)
    try:
        moment = datetime.fromisoformat(local_time)
    except ValueError:
        raise ScheduleError(
            f"once: {local_time!r} is not a date and time; write it like 2026-12-01T09:00"
        ) from None
    # With an offset it names one instant, even inside a repeated hour: keep it whole.
    return Schedule("once", moment.isoformat(), where, spec or f"once {local_time}")


def _preset_cron(preset: str, match: re.Match[str]) -> str:
    groups = match.groupdict()
    if preset == "hourly":
        minute = int(groups.get("minute") or 0)
        if minute > 59:
            raise ScheduleError(f"hourly at minute {minute}: the minute is 0 to 59")
        return f"{minute} * * * *"
    hour = int(groups.get("hour") or DEFAULT_TIME[:2])
    minute = int(groups.get("minute") or DEFAULT_TIME[3:])
    if hour > 23 or minute > 59:
        raise ScheduleError(f"{match.group(0)!r}: the time is 00:00 to 23:59")
    if preset == "daily":
        return f"{minute} {hour} * * *"
    if preset == "weekdays":
        return f"{minute} {hour} * * 1-5"
    day = groups["day"]
    if day not in WEEKDAYS:
        raise ScheduleError(f"weekly on {day!r}: the day is one of {', '.join(WEEKDAYS)}")
    return f"{minute} {hour} * * {(WEEKDAYS.index(day) + 1) % 7}"


def to_utc(wall: datetime, where: ZoneInfo) -> datetime:
    """The instant a wall-clock time in `where` fires at (see the module's rules)."""
    first = wall.replace(tzinfo=where, fold=0)
    moment = first.astimezone(UTC)
    if moment.astimezone(where).replace(tzinfo=None) == wall:
        return moment  # exists; fold=0 is its first occurrence if it repeats
    # It falls in a gap. Read with the offset after the jump it lies before the
    # jump, read with the offset before it lies after: find the jump in between.
    early, late = sorted((wall.replace(tzinfo=where, fold=1).astimezone(UTC), moment))
    before = early.astimezone(where).utcoffset()
    while late - early > timedelta(seconds=1):
        middle = early + (late - early) / 2
        if middle.astimezone(where).utcoffset() == before:
            early = middle
        else:
            late = middle
    return late.replace(microsecond=0)


def stagger_offset(trigger_id: str, window: timedelta) -> timedelta:
    """A fixed delay in [0, window) for one trigger, the same on every server."""
    seconds = int(window.total_seconds())
    if seconds <= 0:
        return timedelta(0)
    digest = int.from_bytes(hashlib.sha256(trigger_id.encode()).digest()[:8], "big")
    return timedelta(seconds=digest % seconds)


def parse_duration(value: str | int, what: str) -> timedelta:
    """`90`, `90s`, `15m`, `2h`, `7d` or `1w`."""
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.fullmatch(value.strip().lower())
        if match is None:
            raise ScheduleError(
                f"{what}: {value!r} is not a duration; write it like 90s, 15m, 2h or 7d"
            )
        seconds = int(match["number"]) * _UNIT_SECONDS[match["unit"] or "s"]
    if abs(seconds) > _LONGEST:
        raise ScheduleError(f"{what}: {value!r} is longer than any duration routined keeps")
    return timedelta(seconds=seconds)


# Longer than any window or stagger routined accepts, and well inside timedelta's range.
_LONGEST = 100 * 365 * 86400


def check_interval(schedule: Schedule, minimum: timedelta, *, start: datetime) -> None:
    """Refuse a schedule that fires more often than `minimum`, naming what it computed."""
    found = schedule.shortest_interval(start)
    if found is None or found[0] >= minimum:
        return
    gap, at = found
    raise ScheduleError(
        f"{schedule.spec!r} fires every {format_duration(gap)} at its fastest "
        f"({at:%Y-%m-%d %H:%M} then {at + gap:%H:%M}); the minimum interval between "
        f"fires is {format_duration(minimum)} (ROUTINED_MIN_SCHEDULE_INTERVAL)"
    )
