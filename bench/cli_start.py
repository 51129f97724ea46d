"""CLI start-up: how long `routined --version`, `routined list` and `routined runs` take,
beside `python -c pass`.

Target: each command under 300 ms, on a store of 1,000 runs.

The store is the embedded SQLite in a scratch ROUTINED_HOME, filled as `routined apply`
and finished runs would leave it: 20 routines, each with a schedule and an API trigger,
and 1,000 runs spread over them and over the past month (most succeeded with a pushed
branch, some failed with an error). Each command is the installed `routined` script
started as a user starts it, with its output read through a pipe; `python -c pass` is
the same interpreter doing nothing. Each round runs every command once, in an order
that rotates from round to round; the figure is the median over rounds of the wall time
from the start of the process to its exit, with the CPU time (user and system) it used
beside it, which a busy machine inflates less. Two untimed rounds come first: they write
the bytecode caches an installed package has (the environment's
PYTHONDONTWRITEBYTECODE is dropped for the commands) and warm the page cache.

    .venv/bin/python bench/cli_start.py [--rounds 20] [--runs 1000] [--routined CMD] [--json]

--routined names another way to start routined, e.g. `"python -m routined"` with
PYTHONPATH set to an older tree's `src`, to compare against it in the same conditions.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from benchkit import emit, machine, percentile, print_header, progress
from routined import runs
from routined.config import Settings
from routined.db import Store
from routined.models import Routine
from routined.routines.apply import apply
from routined.routines.load import parse_document
from routined.runs import RunStatus

ROUTINES = 20
TARGET_MS = 300


def fill(store: Store, run_count: int, now: datetime) -> None:
    """Routines as `routined apply` writes them, and `run_count` finished runs."""
    document = {
        "routines": [
            {
                "name": f"routine-{number:02d}",
                "prompt": "Tidy up the docs.",
                "repositories": [{"url": f"https://github.com/example/project-{number:02d}"}],
                "triggers": [
                    {"type": "schedule", "schedule": "weekdays at 09:00"},
                    {"type": "api"},
                ],
            }
            for number in range(ROUTINES)
        ]
    }
    spec = parse_document(document, source="bench", base=None, now=now)
    with store.transaction() as session:
        apply(session, spec, now=now)
    with store.transaction() as session:
        found = list(session.scalars(select(Routine).order_by(Routine.name)))
        created = []
        for number in range(run_count):
            routine = found[number % len(found)]
            at = now - timedelta(minutes=45 * (run_count - number))
            new = runs.new(
                routine, trigger_type="api", trigger_id=None, text=None, now=at, reason="bench"
            )
            failed = number % 7 == 0
            new.row.update(
                status=RunStatus.FAILED if failed else RunStatus.SUCCEEDED,
                started_at=at + timedelta(seconds=2),
                finished_at=at + timedelta(minutes=3),
                error="the agent ended without changes" if failed else None,
                branches=[]
                if failed
                else [
                    {
                        "repository": f"example/{routine.name}",
                        "branch": f"claude/tidy-docs-{number:04d}",
                        "sha": f"{number:040x}",
                        "files": 3,
                        "insertions": 40,
                        "deletions": 12,
                    }
                ],
            )
            created.append(new)
        runs.insert_all(session, created)


def commands(routined: list[str]) -> dict[str, list[str]]:
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "routined --version": [*routined, "--version"],
        "routined list": [*routined, "list"],
        "routined runs": [*routined, "runs"],
    }


def timed(argv: list[str], environment: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user and system) of one run of `argv`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=environment, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def benchmark(options: argparse.Namespace) -> dict[str, Any]:
    routined = (
        shlex.split(options.routined)
        if options.routined
        else [str(Path(sys.executable).with_name("routined"))]
    )
    with tempfile.TemporaryDirectory(prefix="routined-bench-") as folder:
        home = Path(folder) / "home"
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("ROUTINED_") and key != "PYTHONDONTWRITEBYTECODE"
        }
        environment.update(ROUTINED_HOME=str(home), COLUMNS="120")
        settings = Settings.from_env({"ROUTINED_HOME": str(home)})
        home.mkdir(mode=0o700)
        store = Store(settings.database_url.reveal())
        store.migrate()
        progress(f"filling the store: {ROUTINES} routines, {options.runs} runs")
        fill(store, options.runs, datetime.now(UTC))
        store.dispose()
        measured = commands(routined)
        names = list(measured)
        times: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for number in range(-2, options.rounds):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                elapsed, used = timed(measured[name], environment)
                if number >= 0:
                    times[name].append(elapsed)
                    cpu[name].append(used)
            if number >= 0 and (number + 1) % 5 == 0:
                progress(f"{number + 1} of {options.rounds} rounds")
    return {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": machine(),
        "routined": shlex.join(routined),
        "runs": options.runs,
        "rounds": options.rounds,
        "seconds": times,
        "cpu_seconds": cpu,
    }


def report(result: dict[str, Any]) -> None:
    print_header(result)
    print(f"routined: {result['routined']}")
    print(f"store: SQLite, {ROUTINES} routines, {result['runs']} runs; {result['rounds']} rounds\n")
    print("| command | median | p90 | ratio to `python -c pass` (medians) | CPU (median) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    medians = {name: statistics.median(values) for name, values in result["seconds"].items()}
    baseline = medians["python -c pass"]
    for name, values in result["seconds"].items():
        p90 = percentile(sorted(values), 0.9)
        used = statistics.median(result["cpu_seconds"][name])
        print(f"| `{name}` | {medians[name] * 1000:.0f} ms | {p90 * 1000:.0f} ms "
              f"| {medians[name] / baseline:.1f} | {used * 1000:.0f} ms |")  # fmt: skip
    over = [name for name in medians if medians[name] * 1000 >= TARGET_MS]
    print(
        f"\ntarget under {TARGET_MS} ms each: "
        + ("met" if not over else "not met by " + ", ".join(over))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (order rotates)")
    parser.add_argument("--runs", type=int, default=1000, help="runs in the store")
    parser.add_argument("--routined", help="how to start routined (default: the script)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    options = parser.parse_args()
    result = benchmark(options)
    emit(result, as_json=options.json, report=report)


if __name__ == "__main__":
    main()
