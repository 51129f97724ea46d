"""Schedules across real processes: `routined serve` firing on time, surviving a crash
across an instant, and two `routined scheduler` processes sharing one PostgreSQL store.

These wait for the wall clock where the behaviour is about the wall clock (an instant
must pass while the server is down); every other wait is on state, with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from routined.config import Settings
from routined.db import Store
from routined.ids import new_id
from routined.models import Fire, Repository, Routine, Run, Trigger
from tests.conftest import poll_until

ROUTINED = str(Path(sys.executable).with_name("routined"))
DEADLINE = 60.0


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "ROUTINED_HOME": str(settings.home),
        "ANTHROPIC_BASE_URL": settings.anthropic_base_url,
        "ANTHROPIC_API_KEY": settings.anthropic_api_key.reveal(),
        **extra,
    }
    env.pop("ROUTINED_PUBLIC_URL", None)
    return env


def start_server(env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [ROUTINED, "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert re.search(r"serving at http://", line), f"serve printed {line!r}"
    return process


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(timeout=30)


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        stop(process, signal.SIGKILL)


def apply(env: dict[str, str], path: Path, text: str) -> None:
    path.write_text(text)
    subprocess.run([ROUTINED, "apply", "-f", str(path)], env=env, check=True, capture_output=True)


def routine_yaml(origin: Path, name: str, trigger: str, extra: str = "") -> str:
    return (
        f"  - name: {name}\n"
        "    prompt: Say hello.\n"
        f"    repositories: [{{url: {origin}}}]\n"
        f"    triggers: [{trigger}]\n" + extra
    )


def test_a_once_trigger_starts_its_run_at_its_instant(
    settings: Settings, tmp_path: Path, origin: Path, servers: list[subprocess.Popen[str]]
) -> None:
    env = environment(settings)
    servers.append(start_server(env))
    # Applied while the server runs, from another process: the server must notice.
    # Far enough ahead for `apply` on a loaded machine; it refuses a past instant.
    instant = (datetime.now(UTC) + timedelta(seconds=10)).replace(microsecond=0)
    once = f"{{type: schedule, once: '{instant:%Y-%m-%dT%H:%M:%S}', timezone: UTC}}"
    apply(env, tmp_path / "r.yaml", "routines:\n" + routine_yaml(origin, "soon", once))
    store = Store(settings.database_url.reveal())
    try:

        def created() -> datetime | None:
            with store.transaction() as session:
                return session.scalar(select(Run.created_at))

        poll_until("the once run", lambda: created() is not None, seconds=30)
        started = created()
        assert started is not None
        lateness = (started - instant).total_seconds()
        # Never early; "within about a second" (the benchmark measures it precisely).
        assert 0 <= lateness < 2.0, f"run created {lateness:.3f} s after its instant"
        with store.transaction() as session:
            fire = session.scalar(select(Fire))
            assert fire is not None and (fire.outcome, fire.scheduled_at) == ("fired", instant)
            trigger = session.scalar(select(Trigger).where(Trigger.type == "schedule"))
            assert trigger is not None and trigger.next_at is None
    finally:
        store.dispose()


def test_a_crash_across_a_daily_instant_catches_up_once_under_latest_and_not_under_skip(
    settings: Settings, tmp_path: Path, origin: Path, servers: list[subprocess.Popen[str]]
) -> None:
    env = environment(settings, ROUTINED_SCHEDULE_GRACE="1")
    zone_name = "Europe/Berlin"
    servers.append(start_server(env))
    now = datetime.now(UTC)
    instant = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if instant - now < timedelta(seconds=12):
        instant += timedelta(minutes=1)  # time enough to apply and crash before it
    local = instant.astimezone(__import__("zoneinfo").ZoneInfo(zone_name))
    daily = f"{{type: schedule, schedule: 'daily at {local:%H:%M}', timezone: {zone_name}}}"
    apply(
        env,
        tmp_path / "r.yaml",
        "routines:\n"
        + routine_yaml(origin, "latest", daily, "    catch_up: latest\n")
        + routine_yaml(origin, "skip", daily, "    catch_up: skip\n"),
    )
    stop(servers[0], signal.SIGKILL)  # a crash, not a shutdown
    assert datetime.now(UTC) < instant, "the server was not down across the instant"
    time.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()) + 2.5)  # down across it
    servers.append(start_server(env))
    store = Store(settings.database_url.reveal())
    try:

        def decided() -> dict[str, tuple[str, str | None]]:
            with store.transaction() as session:
                rows = session.execute(
                    select(Routine.name, Fire.outcome, Fire.run_id).join(Routine)
                ).all()
            return {name: (outcome, run_id) for name, outcome, run_id in rows}

        poll_until("both decisions", lambda: len(decided()) == 2, DEADLINE)
        outcomes = decided()
        assert outcomes["latest"][0] == "caught_up" and outcomes["latest"][1] is not None
        assert outcomes["skip"] == ("missed", None)
        with store.transaction() as session:
            counted = session.execute(
                select(Routine.name, func.count(Run.id)).join(Run).group_by(Routine.name)
            ).all()
        assert dict(counted) == {"latest": 1}
    finally:
        store.dispose()


def test_two_schedulers_on_one_postgresql_store_fire_a_thousand_slots_once_each(
    postgres_url: str, tmp_path: Path, settings: Settings
) -> None:
    store = Store(postgres_url)
    store.migrate()
    count = 1000
    now = datetime.now(UTC)
    # Due, on time (within the default grace), and the only slot of each trigger.
    slot = now - timedelta(seconds=5)
    try:
        with store.transaction() as session:
            for number in range(count):
                routine = Routine(
                    id=new_id("rtn"), name=f"r{number:04d}", prompt="Go.", created_at=now,
                    updated_at=now, overlap="allow",
                )  # fmt: skip
                routine.repositories = [Repository(position=0, url=str(tmp_path))]
                routine.triggers = [
                    Trigger(
                        id=new_id("trig"),
                        position=0,
                        type="schedule",
                        created_at=now,
                        config={"spec": "hourly", "timezone": "UTC"},
                        next_at=slot,
                        due_at=slot,
                    )
                ]
                session.add(routine)
        env = environment(settings, ROUTINED_DATABASE_URL=postgres_url)
        schedulers = [
            subprocess.Popen(
                [ROUTINED, "scheduler"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:

            def decided() -> int:
                with store.transaction() as session:
                    return session.scalar(select(func.count(Fire.id))) or 0

            poll_until("a decision for every slot", lambda: decided() >= count, seconds=120)
        finally:
            outputs = []
            for process in schedulers:
                process.terminate()
                outputs.append(process.communicate(timeout=30))
        for (_stdout, stderr), process in zip(outputs, schedulers, strict=True):
            assert process.returncode == 0, stderr
            assert "Traceback" not in stderr, stderr
        with store.transaction() as session:
            runs = session.execute(select(Run.trigger_id)).scalars().all()
            fired = session.execute(select(Fire.trigger_id, Fire.outcome)).all()
        assert len(runs) == count and len(set(runs)) == count
        assert len(fired) == count and {outcome for _, outcome in fired} == {"fired"}
    finally:
        store.dispose()
