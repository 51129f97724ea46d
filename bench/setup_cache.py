"""Setup-script cache: how much sooner a run's agent starts when its setup script's
result is cached.

Whole runs, in this process, with the real pipeline: a routine whose setup script
makes a Python virtualenv (`python3 -m venv ~/.venv`, as many setup scripts
begin), the real sandbox and egress proxy, and the real Claude Code binary against
the scripted model on loopback. Each round runs the routine once with its cache
cleared (the script runs) and once with it cached (the home is restored), in
alternating order. Measured per run from the store's own events: from the moment
a worker took the run (`preparing`) to the moment the agent started (`running`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from benchkit import emit, machine, print_header, progress
from routined import runs
from routined.config import Settings
from routined.db import Store
from routined.environment import cache_folder
from routined.models import Routine, Run, RunEvent
from routined.routines.apply import apply as apply_routines
from routined.routines.load import parse_document
from routined.runs.worker import Worker
from routined.testing.fake_anthropic import FakeAnthropic, text
from routined.timeutil import utcnow

SCRIPT = "python3 -m venv ~/.venv\n~/.venv/bin/python -c 'import ssl, sqlite3, json'\n"
MARKER = "[bench:setup-cache]"


def make_origin(root: Path) -> Path:
    origin = root / "origin.git"
    seed = root / "seed"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(seed)], check=True)
    (seed / "README.md").write_text("# bench\n")
    for args in (
        ["add", "README.md"],
        ["commit", "-qm", "first"],
        ["push", "-q", "origin", "main"],
    ):
        subprocess.run(
            ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args],
            cwd=seed,
            check=True,
        )
    return origin


def apply(store: Store, origin: Path) -> None:
    document = {
        "routines": [
            {
                "name": "setup-bench",
                "prompt": f"Say done. {MARKER}",
                "repositories": [{"url": str(origin)}],
                "environment": {"network": "none", "setup_script": SCRIPT},
            }
        ]
    }
    spec = parse_document(document, source="bench", base=None, now=utcnow())
    with store.transaction() as session:
        apply_routines(session, spec, now=utcnow())


async def one_run(store: Store, settings: Settings) -> dict[str, Any]:
    with store.transaction() as session:
        routine = session.scalar(select(Routine))
        assert routine is not None
        run = runs.create(
            session, routine, trigger_type="manual", trigger_id=None, text=None,
            now=utcnow(), reason="bench",
        )  # fmt: skip
    await Worker(store, settings).run_claimed(run.id)
    with store.transaction() as session:
        ended = session.get(Run, run.id)
        assert ended is not None
        if ended.status != "succeeded":
            raise RuntimeError(f"run {run.id} ended {ended.status}: {ended.error}")
        events = list(session.scalars(select(RunEvent).where(RunEvent.run_id == run.id)))
    moved = {e.to_status: e.at for e in events if e.kind == "status"}
    kinds = {e.kind for e in events}
    return {
        "to_agent_s": (moved["running"] - moved["preparing"]).total_seconds(),
        "cached": "setup.cached" in kinds,
        "script_ran": "setup.output" in kinds,
    }


def benchmark(options: argparse.Namespace) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="routined-bench-") as folder,
        FakeAnthropic(api_key="sk-ant-bench") as fake,
    ):
        root = Path(folder)
        fake.script(MARKER, [[text("Done.")]])
        settings = Settings.from_env(
            {
                "ROUTINED_HOME": str(root / "home"),
                "ANTHROPIC_BASE_URL": fake.base_url,
                "ANTHROPIC_API_KEY": "sk-ant-bench",
            }
        )
        store = Store(f"sqlite:///{root / 'routined.db'}")
        store.migrate()
        apply(store, make_origin(root))
        with store.transaction() as session:
            routine_id = session.scalar(select(Routine.id))
        cache = cache_folder(settings.home, str(routine_id))
        progress("a first run, to warm the machine's caches")
        asyncio.run(one_run(store, settings))
        rounds = []
        for number in range(1, options.rounds + 1):
            order = ("cold", "cached") if number % 2 else ("cached", "cold")
            timings: dict[str, float] = {}
            for side in order:
                if side == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                elif not cache.exists():
                    asyncio.run(one_run(store, settings))  # the cold run of this round is next
                result = asyncio.run(one_run(store, settings))
                if (
                    result["cached"] != (side == "cached")
                    or result["script_ran"] == result["cached"]
                ):
                    raise RuntimeError(f"round {number}: the {side} run was not {side}: {result}")
                timings[side] = result["to_agent_s"]
            progress(
                f"round {number}: script ran {timings['cold']:.2f} s, "
                f"cached {timings['cached']:.2f} s to the agent's start"
            )
            rounds.append({"round": number, **timings})
        store.dispose()
    return {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": machine(),
        "script": SCRIPT,
        "rounds": rounds,
    }


def report(result: dict[str, Any]) -> None:
    print_header(result)
    print("setup script: " + result["script"].strip().replace("\n", "; ") + "\n")
    print("| round | script runs: s to the agent's start | cached: s | ratio |")
    print("|---:|---:|---:|---:|")
    for row in result["rounds"]:
        print(f"| {row['round']} | {row['cold']:.2f} | {row['cached']:.2f} "
              f"| {row['cold'] / row['cached']:.1f} |")  # fmt: skip
    cold = statistics.median(row["cold"] for row in result["rounds"])
    cached = statistics.median(row["cached"] for row in result["rounds"])
    ratio = statistics.median(row["cold"] / row["cached"] for row in result["rounds"])
    print(f"\nmedian: script runs {cold:.2f} s, cached {cached:.2f} s; ratio {ratio:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (order swaps)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    options = parser.parse_args()
    result = benchmark(options)
    emit(result, as_json=options.json, report=report)


if __name__ == "__main__":
    main()
