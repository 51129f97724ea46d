"""Time as routined speaks it: the clock passed to domain logic, instants in JSON,
spans in words. Pure: nothing here reads the clock but `utcnow`, the clock itself."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

# What domain logic takes instead of reading the time: tests pass a fixed one.
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, as every JSON answer shows instants."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def format_duration(span: timedelta) -> str:
    """`30 minutes`, `1 hour`, `1 hour 30 minutes`, `7 days`."""
    seconds = int(span.total_seconds())
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return " ".join(parts) or "0 seconds"
