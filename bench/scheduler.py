"""10,000 schedule triggers on one `routined scheduler`: fire lateness, and CPU while idle.

Targets: p99 lateness under 1 s, idle CPU under 2 % of one core.

Each phase gets a fresh store, filled in bulk with the rows `routined apply` would
write for its routines (a routine, a repository, one schedule trigger armed by
`routined.schedules.scheduler.arm`), spread over a few time zones. Then the real
`routined scheduler` runs as a subprocess until SIGTERM.

1. Lateness: every trigger fires every minute ("* * * * *") with a 60 s stagger,
   so the decisions spread evenly over each minute (10,000 → ~167 a second);
   overlap "allow", so every fire queues a run (nothing runs them). A decision's
   lateness is its `decided_at` minus its due time: the instant plus the
   trigger's stagger offset. `decided_at` is the clock reading a batch of up to
   50 decisions begins with, so a run becomes visible to workers up to one
   batch later than that. The scheduler's CPU is read from /proc meanwhile.
2. Idle: every trigger's next instant is hours away; once the scheduler has
   settled, its CPU is read from /proc over --idle-seconds, and its RSS.

    .venv/bin/python bench/scheduler.py [--triggers 10000] [--minutes 2] [--idle-seconds 60]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--quick] [--json]

With --database-url (an admin URL) each phase runs on a PostgreSQL database the
benchmark creates there and drops afterwards; by default on the embedded SQLite.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select

from benchkit import (
    TICKS,
    database,
    emit,
    machine,
    percentile,
    print_header,
    process_cpu,
    progress,
    store_name,
)
from routined.config import Settings
from routined.db import Store
from routined.ids import new_id
from routined.models import Fire, Repository, Routine, Run, Trigger
from routined.schedules.scheduler import arm
from routined.schedules.timing import stagger_offset
from routined.timeutil import format_duration

ROUTINED = str(Path(sys.executable).with_name("routined"))
ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Australia/Sydney",
)
STAGGER = timedelta(seconds=60)
EVERY_MINUTE = "* * * * *"
# Room for the scheduler to start before the first instant, so its startup is not
# counted as lateness.
STARTUP_MARGIN = timedelta(seconds=15)
# Slots decided after the window ends still count, if they come within this.
STRAGGLERS = timedelta(seconds=60)
SETTLE_SECONDS = 5.0
STOP_TIMEOUT = 30.0
IDLE_AHEAD = timedelta(hours=6)


def fill(store: Store, count: int, spec: Callable[[str], str], *, now: datetime, repo: str) -> None:
    """`count` routines as `routined apply` would create them, inserted in bulk."""
    routines: list[dict[str, Any]] = []
    repositories: list[dict[str, Any]] = []
    triggers: list[dict[str, Any]] = []
    for number in range(count):
        routine_id = new_id("rtn")
        zone_name = ZONES[number % len(ZONES)]
        trigger = Trigger(
            id=new_id("trig"),
            type="schedule",
            config={"spec": spec(zone_name), "timezone": zone_name},
        )
        arm(trigger, STAGGER, now=now)
        routines.append(
            {
                "id": routine_id,
                "name": f"bench-{number:06d}",
                "prompt": "Say hello.",
                "model": None,
                "created_at": now,
                "updated_at": now,
                "paused_at": None,
                "catch_up": "latest",
                "catch_up_window": 604_800,
                "overlap": "allow",
                "stagger": int(STAGGER.total_seconds()),
            }
        )
        repositories.append({"routine_id": routine_id, "position": 0, "url": repo})
        triggers.append(
            {
                "id": trigger.id,
                "routine_id": routine_id,
                "position": 0,
                "type": "schedule",
                "config": trigger.config,
                "created_at": now,
                "next_at": trigger.next_at,
                "due_at": trigger.due_at,
            }
        )
    with store.transaction() as session:
        session.execute(insert(Routine), routines)
        session.execute(insert(Repository), repositories)
        session.execute(insert(Trigger), triggers)


@dataclass(frozen=True)
class Sample:
    scheduler: float  # CPU seconds of the scheduler process so far
    machine: float  # CPU seconds of the whole machine, every core, busy so far
    steal: float  # seconds the hypervisor gave this machine's cores to someone else
    wall: float


def sample(pid: int) -> Sample:
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    busy = user + nice + system + irq + softirq
    return Sample(process_cpu(pid), busy / TICKS, steal / TICKS, time.monotonic())


def usage(before: Sample, after: Sample) -> dict[str, float]:
    """Percent of one core: the scheduler, everything else on the machine, and steal.

    A busy neighbour (tests, another benchmark) slows the scheduler, so it is
    reported beside the result rather than silently folded into it.
    """
    wall = after.wall - before.wall
    scheduler = after.scheduler - before.scheduler
    return {
        "seconds": wall,
        "cpu_s": scheduler,
        "cpu_percent": 100 * scheduler / wall,
        "others_percent": 100 * max(0.0, after.machine - before.machine - scheduler) / wall,
        "steal_percent": 100 * (after.steal - before.steal) / wall,
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def sleep_until(moment: datetime) -> None:
    remaining = (moment - datetime.now(UTC)).total_seconds()
    if remaining > 0:
        time.sleep(remaining)


class SchedulerProcess:
    """`routined scheduler` with its output in files, so nothing it prints can block it."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.stdout = logs / "scheduler.out"
        self.stderr = logs / "scheduler.err"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [ROUTINED, "scheduler"], env=env, stdout=out, stderr=err
            )
        self.pid = self.process.pid
        self.stop_seconds = 0.0
        self.killed = False

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while b"is running" not in self.stdout.read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"routined scheduler exited with {self.process.returncode}:\n{self.errors()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"routined scheduler did not start within {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT; note how long it took."""
        started = time.monotonic()
        self.process.terminate()
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
            self.killed = True
        self.stop_seconds = time.monotonic() - started
        return code

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")


@contextmanager
def running_scheduler(env: dict[str, str], logs: Path) -> Iterator[SchedulerProcess]:
    scheduler = SchedulerProcess(env, logs)
    try:
        scheduler.wait_ready()
        yield scheduler
    finally:
        if scheduler.process.poll() is None:
            scheduler.stop()


def scheduler_env(home: Path, url: str) -> dict[str, str]:
    # Every other ROUTINED_ setting at its default: that is what is measured.
    env = {key: value for key, value in os.environ.items() if not key.startswith("ROUTINED_")}
    env["ROUTINED_HOME"] = str(home)
    env["ROUTINED_DATABASE_URL"] = url
    return env


def lateness_phase(
    triggers: int, minutes: int, admin_url: str | None, root: Path
) -> dict[str, Any]:
    home = root / "lateness"
    home.mkdir()
    with database(admin_url, home, "scheduler_lateness") as url:
        store = Store(url)
        try:
            store.migrate()
            now = datetime.now(UTC)
            progress(f"lateness: filling {triggers} triggers ({EVERY_MINUTE}, stagger 60 s)")
            fill(store, triggers, lambda _zone: EVERY_MINUTE, now=now + STARTUP_MARGIN,
                 repo=str(root / "origin"))  # fmt: skip
            with store.transaction(readonly=True) as session:
                first = session.scalar(select(func.min(Trigger.next_at)))
            assert first is not None
            end = first + timedelta(minutes=minutes)
            expected = triggers * minutes
            with running_scheduler(scheduler_env(home, url), home) as scheduler:
                ready = datetime.now(UTC)
                progress(f"lateness: scheduler up; measuring {first:%H:%M:%S}–{end:%H:%M:%S} UTC")
                sleep_until(first)
                before = sample(scheduler.pid)
                sleep_until(end)
                cpu = usage(before, sample(scheduler.pid))
                rss = rss_mib(scheduler.pid)
                # A scheduler that fell behind is still deciding the window's slots.
                # Read-only: a reader that asked for SQLite's write lock would queue
                # behind the scheduler's batches.
                while True:
                    with store.transaction(readonly=True) as session:
                        decided = session.scalar(
                            select(func.count()).select_from(Fire).where(Fire.scheduled_at < end)
                        )
                    now = datetime.now(UTC)
                    if decided == expected or now > end + STRAGGLERS:
                        break
                    time.sleep(1)
                code = scheduler.stop()
            with store.transaction(readonly=True) as session:
                rows = session.execute(
                    select(Fire.trigger_id, Fire.scheduled_at, Fire.decided_at, Fire.outcome).where(
                        Fire.trigger_type == "schedule", Fire.scheduled_at < end
                    )
                ).all()
                queued = session.scalar(
                    select(func.count())
                    .select_from(Fire)
                    .join(Run, Run.id == Fire.run_id)
                    .where(Fire.scheduled_at < end, Run.status == "queued")
                )
        finally:
            store.dispose()
    lateness: list[float] = []
    by_minute: list[list[float]] = [[] for _ in range(minutes)]
    for trigger_id, scheduled_at, decided_at, _outcome in rows:
        assert trigger_id is not None and scheduled_at is not None
        due = scheduled_at + stagger_offset(trigger_id, STAGGER)
        late = (decided_at - due).total_seconds()
        lateness.append(late)
        by_minute[int((scheduled_at - first).total_seconds() // 60)].append(late)
    lateness.sort()
    # decided_at is when a batch began, so this counts each batch begun in the window.
    in_window = sum(1 for row in rows if row.decided_at < end)
    return {
        "spec": EVERY_MINUTE,
        "minutes": minutes,
        "expected": expected,
        "decided": len(rows),
        "outcomes": dict(Counter(str(row.outcome) for row in rows)),
        "runs_queued": queued,
        "scheduler_ready_before_first_instant_s": round((first - ready).total_seconds(), 1),
        "lateness_s": (
            {
                "p50": percentile(lateness, 0.50),
                "p90": percentile(lateness, 0.90),
                "p99": percentile(lateness, 0.99),
                "max": lateness[-1],
            }
            if lateness
            else None
        ),
        # Growing from minute to minute: the scheduler cannot keep up.
        "p99_by_minute_s": [percentile(sorted(m), 0.99) if m else None for m in by_minute],
        "decided_in_window": in_window,
        "decisions_per_s": in_window / cpu["seconds"],
        **cpu,
        "cpu_ms_per_decision": 1000 * cpu["cpu_s"] / max(1, in_window),
        "rss_mib": rss,
        "exit_code": code,
        "stop_seconds": scheduler.stop_seconds,
        "killed": scheduler.killed,
        "stderr": scheduler.errors(),
    }


def idle_phase(triggers: int, seconds: float, admin_url: str | None, root: Path) -> dict[str, Any]:
    home = root / "idle"
    home.mkdir()
    with database(admin_url, home, "scheduler_idle") as url:
        store = Store(url)
        try:
            store.migrate()
            now = datetime.now(UTC)

            def daily(zone_name: str) -> str:
                return f"daily at {(now + IDLE_AHEAD).astimezone(ZoneInfo(zone_name)):%H:%M}"

            progress(
                f"idle: filling {triggers} triggers (daily, {format_duration(IDLE_AHEAD)} ahead)"
            )
            fill(store, triggers, daily, now=now, repo=str(root / "origin"))
            with running_scheduler(scheduler_env(home, url), home) as scheduler:
                progress(
                    f"idle: scheduler up; settling {SETTLE_SECONDS:.0f} s, then {seconds:.0f} s"
                )
                time.sleep(SETTLE_SECONDS)
                before = sample(scheduler.pid)
                time.sleep(seconds)
                cpu = usage(before, sample(scheduler.pid))
                rss = rss_mib(scheduler.pid)
                code = scheduler.stop()
            with store.transaction(readonly=True) as session:
                decided = session.scalar(select(func.count()).select_from(Fire))
        finally:
            store.dispose()
    return {
        **cpu,
        "rss_mib": rss,
        "decided": decided,
        "exit_code": code,
        "stop_seconds": scheduler.stop_seconds,
        "killed": scheduler.killed,
        "stderr": scheduler.errors(),
    }


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def report(result: dict[str, Any]) -> None:
    late, idle = result["lateness"], result["idle"]
    print_header(result)
    print(f"store: {result['store']}; one `routined scheduler` process, poll interval "
          f"{result['poll_interval_s']} s")  # fmt: skip
    print(f"triggers: {result['triggers']:,} schedule triggers over {len(ZONES)} time zones "
          f"({', '.join(ZONES)})")  # fmt: skip
    print(f"lateness phase: {late['spec']!r}, stagger 60 s, overlap allow, {late['minutes']} min "
          f"→ {late['expected']:,} slots, ~{result['triggers'] / 60:,.0f} decisions/s; "
          f"scheduler up {late['scheduler_ready_before_first_instant_s']} s before the "
          "first instant")  # fmt: skip
    print(f"idle phase: every next instant {format_duration(IDLE_AHEAD)} ahead; "
          f"{SETTLE_SECONDS:.0f} s to settle, then {idle['seconds']:.0f} s measured")  # fmt: skip
    print()
    print("| measure | result | target |")
    print("|---|---:|---|")
    outcomes = ", ".join(f"{count:,} {name}" for name, count in sorted(late["outcomes"].items()))
    decided = f"{late['decided']:,} of {late['expected']:,} ({outcomes or 'none'})"
    print(f"| the window's slots decided (by {STRAGGLERS.seconds} s after it) | {decided} "
          "| all, fired |")  # fmt: skip
    print(f"| runs queued by them | {late['runs_queued']:,} | |")
    if late["lateness_s"] is not None:
        shown = late["lateness_s"]
        print(f"| lateness p50 | {milliseconds(shown['p50'])} | |")
        print(f"| lateness p90 | {milliseconds(shown['p90'])} | |")
        print(f"| lateness p99 | {milliseconds(shown['p99'])} | < 1,000 ms |")
        print(f"| lateness max | {milliseconds(shown['max'])} | |")
    by_minute = ", ".join("-" if value is None else milliseconds(value)
                          for value in late["p99_by_minute_s"])  # fmt: skip
    print(f"| lateness p99, minute by minute | {by_minute} | |")
    print(f"| decisions begun in the window | {late['decided_in_window']:,} "
          f"({late['decisions_per_s']:.0f}/s) | ~{result['triggers'] / 60:,.0f}/s |")  # fmt: skip
    print(f"| scheduler CPU while firing | {late['cpu_percent']:.1f} % of a core "
          f"({late['cpu_ms_per_decision']:.2f} ms per decision) | |")  # fmt: skip
    print(f"| scheduler RSS while firing | {late['rss_mib']:.0f} MiB | |")
    print(f"| scheduler CPU while idle | {idle['cpu_percent']:.2f} % of a core | < 2 % |")
    print(f"| scheduler RSS while idle | {idle['rss_mib']:.0f} MiB | |")
    for name, phase in (("firing", late), ("idle", idle)):
        print(f"| rest of the machine while {name} | {phase['others_percent']:.1f} % of a core "
              f"busy, {phase['steal_percent']:.1f} % stolen | |")  # fmt: skip
    for name, phase in (("firing", late), ("idle", idle)):
        stopped = (
            f"killed: still running {STOP_TIMEOUT:.0f} s after SIGTERM"
            if phase["killed"]
            else f"{phase['stop_seconds']:.1f} s"
        )
        print(f"| SIGTERM → exit, {name} | {stopped} | |")
    for phase in ("lateness", "idle"):
        errors = result[phase]["stderr"].strip()
        code = result[phase]["exit_code"]
        if errors or code != 0:
            print(f"\n{phase} scheduler exited with {code}; its stderr:\n{errors or '(empty)'}")
    if result["idle"]["decided"]:
        print(f"\nidle phase: {result['idle']['decided']} decisions made (expected none)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, help="schedule triggers (default 10000)")
    parser.add_argument("--minutes", type=int, help="length of the lateness phase (default 2)")
    parser.add_argument("--idle-seconds", type=float, help="idle CPU window (default 60)")
    parser.add_argument("--database-url", help="PostgreSQL admin URL; default: embedded SQLite")
    parser.add_argument("--quick", action="store_true", help="500 triggers, 1 minute, 10 s idle")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    options = parser.parse_args()
    quick = options.quick
    triggers: int = options.triggers or (500 if quick else 10_000)
    minutes: int = options.minutes or (1 if quick else 2)
    idle_seconds: float = options.idle_seconds or (10.0 if quick else 60.0)

    # Before the phases, so the load average shows what else the machine was doing.
    host = machine()
    with tempfile.TemporaryDirectory(prefix="routined-bench-") as folder:
        root = Path(folder)
        # Runs are never executed; the path only has to exist, as `apply` checks.
        (root / "origin").mkdir()
        lateness = lateness_phase(triggers, minutes, options.database_url, root)
        idle = idle_phase(triggers, idle_seconds, options.database_url, root)
    result = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": host,
        "store": store_name(options.database_url),
        "poll_interval_s": Settings.from_env({}).poll_interval,
        "triggers": triggers,
        "lateness": lateness,
        "idle": idle,
    }
    emit(result, as_json=options.json, report=report)


if __name__ == "__main__":
    main()
