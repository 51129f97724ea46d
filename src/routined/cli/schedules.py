"""Commands about schedules and background roles: preview, scheduler, matcher."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from routined.cli.common import JsonFlag, app, fail, opened, out, print_json, settings
from routined.schedules.timing import ScheduleError, check_interval, parse, zone
from routined.timeutil import iso

if TYPE_CHECKING:
    from routined.wakeup import Loop


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
        after = _instant(start, schedule.zone) if start else datetime.now(UTC)
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
    from routined.schedules.scheduler import Scheduler
    from routined.timeutil import utcnow

    with opened() as (config, store):
        out.print(f"routined scheduler is running (time zone default {zone(config.timezone).key})")
        _run_alone(Scheduler(store, config, clock=utcnow))


@app.command()
def matcher(
    supervised: Annotated[
        bool,
        typer.Option(
            hidden=True,
            help="Started by `routined serve`: woken by lines on standard input, stopped "
            "by its end, telling of runs started by lines on standard output.",
        ),
    ] = False,
) -> None:
    """Run only the GitHub matcher: decide recorded deliveries (no API, no worker).

    `routined serve` starts one of its own; this is for deployments that split
    roles, beside `routined serve --no-matcher`.
    """
    from routined.db import Checkpointer
    from routined.github.matcher import Matcher
    from routined.timeutil import utcnow

    with opened(background_checkpoints=True) as (config, store):
        if not supervised:
            out.print("routined matcher is running")
        deciding = Matcher(
            store, config, clock=utcnow, on_run_created=_tell_server if supervised else lambda: None
        )
        loops: list[Loop] = [deciding]
        if store.is_sqlite and not supervised:  # the server checkpoints its store itself
            loops.append(Checkpointer(store, config, clock=utcnow))
        _run_alone(*loops, woken_by_input=deciding if supervised else None)


def _run_alone(*loops: Loop, woken_by_input: Loop | None = None) -> None:
    """Run background loops in the foreground until SIGINT or SIGTERM, or, with
    `woken_by_input`, until standard input ends; each line of it wakes that loop."""

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(number, stop.set)
        if woken_by_input is not None:
            threading.Thread(
                target=_read_input, args=(woken_by_input, running, stop), daemon=True
            ).start()
        await asyncio.gather(*(loop.run(stop) for loop in loops))

    asyncio.run(main())


def _read_input(woken: Loop, running: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    # Unbuffered: a thread blocked in a buffered read holds the buffer's lock, and
    # the interpreter aborts when it finds it held as it shuts down.
    while os.read(sys.stdin.fileno(), 4096):
        woken.wake()
    running.call_soon_threadsafe(stop.set)


def _tell_server() -> None:
    sys.stdout.write("\n")
    sys.stdout.flush()
