"""What the benchmarks share: progress lines, percentiles, process CPU, a scratch
PostgreSQL database, and the description of the machine a result came from."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

TICKS = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value at least `fraction` of the values do not exceed."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def process_cpu(pid: int) -> float:
    """CPU seconds a process (every thread) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime, fields 14 and 15 of proc(5); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / TICKS


def admin_engine(admin_url: str) -> Engine:
    url = make_url(admin_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return create_engine(url, isolation_level="AUTOCOMMIT")


@contextmanager
def database(admin_url: str | None, home: Path, name: str) -> Iterator[str]:
    """The store's URL: SQLite in `home`, or a PostgreSQL database made for the run."""
    if admin_url is None:
        yield f"sqlite:///{home / 'routined.db'}"
        return
    name = f"routined_bench_{name}_{os.getpid()}"
    engine = admin_engine(admin_url)
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield engine.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            # FORCE: a process killed mid-transaction may leave a session behind.
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def machine() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "load_average_before": os.getloadavg(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def print_header(result: dict[str, Any]) -> None:
    """The date and machine lines every report starts with."""
    host = result["machine"]
    load = ", ".join(f"{value:.2f}" for value in host["load_average_before"])
    print(f"date: {result['date']}")
    print(f"machine: {host['cpu']}, {host['cores']} cores, {host['system']}, "
          f"Python {host['python']}; load average before the run {load}")  # fmt: skip


def emit(
    result: dict[str, Any], *, as_json: bool, report: Callable[[dict[str, Any]], None]
) -> None:
    """Print a benchmark's result: as JSON, or as its report's tables."""
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


def store_name(admin_url: str | None) -> str:
    if admin_url is None:
        return "SQLite (embedded)"
    with admin_engine(admin_url).connect() as connection:
        version = connection.execute(text("SHOW server_version")).scalar()
    return f"PostgreSQL {version}"
