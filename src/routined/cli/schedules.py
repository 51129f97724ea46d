"""Commands about schedules and background roles: preview, scheduler, matcher."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from routined.cli.common import JsonFlag, app, fail, opened, out, print_json, settings
from routined.github import Matcher
from routined.schedule import ScheduleError, check_interval, iso, parse, zone
from routined.scheduler import Scheduler
from routined.wakeup import Loop
from routined.worker import utcnow


@app.command()
def preview(
    spec: Annotated[
        str,
        typer.Argument(
            help='A preset ("weekdays at 09:00"), a cron expression or "once 2026-12-01T09:00".'
        ),
    ],
    tz: Annotated[
        str | None, typer.Option("--tz", help="IANA time zone; default: ROUTINED_TIMEZONE.")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="Start after this time (ISO 8601; no offset: in --tz)."),
    ] = None,
    count: Annotated[int, typer.Option(min=1, max=1000, help="How many instants.")] = 10,
    as_json: JsonFlag = False,
) -> None:
    """Print the instants a schedule would fire at, to check it before saving it."""
    config = settings()
    zone_name = tz or config.timezone
    try:
        schedule = parse(spec, zone_name)
        after = _instant(start, schedule.zone) if start else utcnow()
    except ScheduleError as error:
        fail(str(error))
    instants = schedule.upcoming(after, count)
    if as_json:
        print_json(
            {
                "schedule": spec,
                "timezone": schedule.zone.key,
                "from": iso(after),
                "instants": [iso(moment) for moment in instants],
                "local": [moment.astimezone(schedule.zone).isoformat() for moment in instants],
            }
        )
    else:
        table = Table("UTC", f"Local ({schedule.zone.key})")
        for moment in instants:
            table.add_row(iso(moment), f"{moment.astimezone(schedule.zone):%a %Y-%m-%d %H:%M %Z}")
        out.print(table)
    # What `apply` would refuse, refused here too: that is what a preview is for.
    if not instants:
        fail(f"{spec!r} never fires after {iso(after)}; a once time must be in the future")
    try:
        check_interval(schedule, timedelta(seconds=config.min_schedule_interval), start=instants[0])
    except ScheduleError as error:
        fail(str(error))


def _instant(text: str, where: ZoneInfo) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ScheduleError(
            f"--from: {text!r} is not an ISO 8601 time such as 2027-03-27T00:00:00Z"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=where)).astimezone(UTC)


@app.command()
def scheduler() -> None:
    """Run only the scheduler: queue the runs of due schedules (no API, no worker).

    For deployments that split roles; `routined serve` includes a scheduler.
    """
    with opened() as (config, store):
        out.print(f"routined scheduler is running (time zone default {zone(config.timezone).key})")
        _run_alone(Scheduler(store, config, clock=utcnow))


@app.command()
def matcher() -> None:
    """Run only the GitHub matcher: decide recorded deliveries (no API, no worker).

    For deployments that split roles, with `routined serve --no-matcher`: deciding
    then takes no CPU from the process that answers GitHub.
    """
    with opened() as (config, store):
        out.print("routined matcher is running")
        _run_alone(Matcher(store, config, clock=utcnow))


def _run_alone(loop: Loop) -> None:
    """Run one background loop in the foreground until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(number, stop.set)
        await loop.run(stop)

    asyncio.run(main())
