"""The fire endpoint under sustained load, beside an empty endpoint of the same server.

Targets: p99 under 25 ms at 200 fires/s, and a most-fires-a-second at least half
the empty endpoint's requests a second.

One real `routined serve` (uvicorn, FastAPI, the store) runs with a routine that
has an API trigger, set up with the real CLI (`routined apply`, `routined
token`). A second process, this script with --generate, sends the requests on
loopback. Each round has four phases, and the order of fire and empty swaps from
round to round, so drift on the machine lands on both sides:

1. open loop at --rate requests a second: request i is due at t0 + i/rate and is
   sent then whatever came back before, over a pool of keep-alive connections
   (a new one opens when every open one is busy). Latency runs from when the
   request was due to its whole response, so a stall is charged to every
   request it delayed (no coordinated omission). Both `POST
   /v1/claude_code/routines/{trigger_id}/fire` and `GET /healthz`.
2. closed loop: --clients connections, each sending its next request when the
   previous one answered, for the most requests a second; both endpoints.

Each phase runs --warmup seconds unmeasured, then --duration seconds measured.
The generator (`bench/loadgen.py`, shared with `bench/webhook_ingest.py`) is a
small HTTP/1.1 client on asyncio streams rather than httpx, so that on a small
machine it takes little of the CPU the server would use: its own CPU, the
server's and PostgreSQL's are reported beside each phase. After a phase the next
waits until the server has stopped recording runs: requests the client gave up
on are still served.

Limits stay out of the way: the hourly caps and ROUTINED_MAX_QUEUED_RUNS are set
to 10,000,000, so every fire is accepted and queues a run. No run may execute an
agent meanwhile, and how the worker is kept from doing so is --worker:

- held (default, the faithful case): ROUTINED_WORKERS=1, and before the phases a
  run of a second routine takes the worker's only slot and keeps it: its
  repository is an HTTP origin on loopback that accepts the connection and never
  answers, so `git fetch` waits. That is a server at 200 fires/s in production:
  agent sessions last minutes, so every worker slot is busy, the queue only
  grows, and what the worker does meanwhile is wake on each fire, find no free
  slot, and beat a heartbeat every few seconds.
- failing: ROUTINED_WORKERS=1 and no ANTHROPIC_API_KEY, so the worker claims
  queued runs one after another and each fails at the start of its session,
  after its checkout (a `git clone --shared` of the local origin, or the standby
  one) and three transactions. A worst case: the worker churns through the queue
  on the same two cores and takes SQLite's write lock between fires. The runs it
  ended in each phase are reported.

Every accepted fire leaves a queued run, so the store grows phase by phase
(tens of thousands of runs in a default run); the runs in the store before each
phase are reported. Fires count runs only when the store may hold as many as a
cap (`db.rows_at_most`), which with caps of 10,000,000 it never does here: what
grows with the store is the cost of writing to it.

An empty endpoint answering in about 44 ms, with the server nearly idle, is the
server's doing, not the generator's: when routined's listening socket is made
without IPPROTO_TCP, asyncio leaves Nagle on for the connections it accepts, and
uvicorn writes a response's head and body separately, so the body waits for the
client's delayed ACK (40 ms on Linux).

--without-store measures a ceiling, not routined: the server runs with a fire's
store work (the thread hop's write, its transaction, the limit decision) replaced
by an answer at once, so the fire phases show what the endpoint could reach if
recording a fire cost nothing, beside the same empty endpoint.

    .venv/bin/python bench/fire_load.py [--rate 200] [--duration 20] [--warmup 3]
        [--rounds 3] [--clients 16] [--worker held|failing] [--without-store]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--quick] [--json]

With --database-url (an admin URL) the server runs on a PostgreSQL database the
benchmark creates there and drops afterwards; by default on the embedded SQLite.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

import loadgen
from benchkit import database, emit, machine, print_header, progress, store_name
from loadgen import (
    REQUEST_TIMEOUT,
    ROUTINED,
    Server,
    Target,
    fixed,
    make_origin,
    run_generator,
    stalled_origin,
    wait_until_held,
)
from routined.db import Store
from routined.models import Run

BETA = "experimental-cc-routine-2026-04-01"
HUGE = "10000000"


def generate(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target(
        host=spec["host"],
        port=spec["port"],
        request=fixed(spec["request"].encode()),
        expect=spec["expect"].encode(),
    )
    return loadgen.generate(target, spec)


# -- the server and its store ---------------------------------------------------


def server_env(home: Path, url: str, worker: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ROUTINED_")}
    env |= {
        "ROUTINED_HOME": str(home),
        "ROUTINED_DATABASE_URL": url,
        "ROUTINED_ROUTINE_HOURLY_CAP": HUGE,
        "ROUTINED_ACCOUNT_API_HOURLY_CAP": HUGE,
        "ROUTINED_MAX_QUEUED_RUNS": HUGE,
        "ROUTINED_WORKERS": "1",
        "ROUTINED_ACCEPTED_BETAS": BETA,
        # Rich wraps at 80 columns when it is not writing to a terminal.
        "COLUMNS": "300",
    }
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY_FILE", None)
    if worker == "failing":
        # Never reached by a run (each fails before its session), but valid.
        env["ANTHROPIC_BASE_URL"] = "http://127.0.0.1:9"
    return env


# `routined`, with a fire's recording replaced by an answer at once (--without-store).
WITHOUT_STORE = (
    sys.executable,
    "-c",
    "import sys\n"
    "import routined.http.fire as api\n"
    "from routined.cli import main\n"
    "api._record_fires = lambda store, requests, **_: ['session_' + '0' * 26] * len(requests)\n"
    "sys.argv[0] = 'routined'\n"
    "sys.exit(main())\n",
)


def run_counts(store: Store) -> dict[str, int]:
    # Read-only: on SQLite it takes no lock, so it cannot delay the server's writes.
    with store.transaction(readonly=True) as session:
        rows = session.execute(select(Run.status, func.count()).group_by(Run.status)).all()
    return {str(status): int(count) for status, count in rows}


def fire_request(host: str, port: int, trigger_id: str, token: str) -> str:
    body = '{"text": "load"}'
    return (
        f"POST /v1/claude_code/routines/{trigger_id}/fire HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "anthropic-version: 2023-06-01\r\n"
        f"anthropic-beta: {BETA}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"\r\n{body}"
    )


def empty_request(host: str, port: int) -> str:
    return f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"


def drain(store: Store, timeout: float = 600) -> float:
    """Seconds until the server has answered what it was sent: the client gives up on
    a request after REQUEST_TIMEOUT, but the server still serves it (and records its
    run), so an overloaded phase leaves work behind that the next must not meet."""
    started = time.monotonic()
    count = sum(run_counts(store).values())
    while time.monotonic() - started < timeout:
        time.sleep(1.0)
        now = sum(run_counts(store).values())
        if now == count:
            break
        count = now
    return time.monotonic() - started


def run_phase(spec: dict[str, Any]) -> dict[str, Any]:
    return run_generator(__file__, spec)


# -- orchestration and report ------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    server: Server
    store: Store
    host: str
    port: int
    requests: dict[str, tuple[str, str]]  # endpoint → (request, what a 200 answer holds)
    postgres: bool


def measure(setup: Setup, options: argparse.Namespace, endpoint: str, mode: str,
            warmup: float, duration: float) -> dict[str, Any]:  # fmt: skip
    """One phase from the generator process, with the store's runs before and after."""
    request, expect = setup.requests[endpoint]
    before = run_counts(setup.store)
    result = run_phase(
        {
            "host": setup.host,
            "port": setup.port,
            "request": request,
            "expect": expect,
            "mode": mode,
            "rate": options.rate,
            "clients": options.clients,
            "warmup": warmup,
            "duration": duration,
            "server_pid": setup.server.pid,
            "postgres": setup.postgres,
        }
    )
    after = run_counts(setup.store)
    drained = drain(setup.store)
    if setup.server.process.poll() is not None:
        raise RuntimeError(f"routined serve died:\n{setup.server.errors()}")
    ended = ("succeeded", "failed", "cancelled", "skipped")
    return {
        "endpoint": endpoint,
        "mode": mode,
        "runs_before": sum(before.values()),
        "queued_before": before.get("queued", 0),
        # The blocker's run is still preparing: it never counts as ended.
        "runs_ended_by_worker": sum(after.get(s, 0) - before.get(s, 0) for s in ended),
        "drain_s": drained,
        **result,
    }


def benchmark(options: argparse.Namespace, rounds: int, warmup: float, duration: float) -> Any:
    with (
        tempfile.TemporaryDirectory(prefix="routined-bench-") as folder,
        contextlib.ExitStack() as stack,
    ):
        root = Path(folder)
        home = root / "home"
        home.mkdir()
        url = stack.enter_context(database(options.database_url, home, "fire_load"))
        origin = make_origin(root)
        routines = (
            "routines:\n"
            "  - {name: bench, prompt: 'Triage the report.', model: claude-sonnet-4-5, "
            f"repositories: [{{url: {origin}}}], triggers: [{{type: api}}]}}\n"
        )
        if options.worker == "held":
            stalled = stack.enter_context(stalled_origin())
            routines += (
                "  - {name: blocker, prompt: 'Wait.', "
                f"repositories: [{{url: '{stalled}'}}], triggers: [{{type: api}}]}}\n"
            )
        (root / "routines.yaml").write_text(routines)
        env = server_env(home, url, options.worker)
        cli = functools.partial(subprocess.run, env=env, check=True, capture_output=True)
        cli([ROUTINED, "apply", "-f", str(root / "routines.yaml")])
        issued = json.loads(cli([ROUTINED, "token", "bench", "--json"]).stdout)
        store = Store(url)
        stack.callback(store.dispose)
        server = Server(env, root, command=WITHOUT_STORE if options.without_store else (ROUTINED,))
        try:
            host, port = server.wait_ready()
            if options.worker == "held":
                cli([ROUTINED, "fire", "blocker"])
                wait_until_held(store)
            fire = fire_request(host, port, issued["trigger_id"], issued["token"])
            setup = Setup(
                server=server,
                store=store,
                host=host,
                port=port,
                requests={
                    "fire": (fire, "routine_fire"),
                    "empty": (empty_request(host, port), '"ok"'),
                },
                postgres=options.database_url is not None,
            )
            phases: list[dict[str, Any]] = []
            for number in range(1, rounds + 1):
                order = ("fire", "empty") if number % 2 else ("empty", "fire")
                for mode in ("rate", "closed"):
                    for endpoint in order:
                        load = (
                            f"{options.rate:g}/s"
                            if mode == "rate"
                            else f"{options.clients} clients"
                        )
                        progress(f"round {number}/{rounds}: {endpoint}, {load}")
                        phase = measure(setup, options, endpoint, mode, warmup, duration)
                        phases.append({"round": number, **phase})
            final = run_counts(store)
        finally:
            code = server.stop()
        errors = server.errors().strip()
    return phases, final, code, errors


def median_of(phases: list[dict[str, Any]], endpoint: str, mode: str, key: str) -> float:
    values: list[float] = []
    for phase in phases:
        if phase["endpoint"] == endpoint and phase["mode"] == mode:
            value = phase["latency_ms"][key[8:]] if key.startswith("latency.") else phase[key]
            if value is not None:
                values.append(value)
    return statistics.median(values) if values else math.nan


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def report(result: dict[str, Any]) -> None:
    phases = result["phases"]
    print_header(result)
    print(f"store: {result['store']}; one `routined serve` (uvicorn, httptools, uvloop)")
    print(f"worker: {result['worker']} (ROUTINED_WORKERS=1); limits and queue cap 10,000,000")
    if result["without_store"]:
        print("--without-store: fires are answered without being recorded; a ceiling, not routined")
    print(f"load: a second process on loopback; open loop at {result['rate']:g}/s, closed loop "
          f"with {result['clients']} clients; {result['warmup']:g} s warm-up + "
          f"{result['duration']:g} s measured per phase; {result['rounds']} rounds, "
          "fire and empty alternating")  # fmt: skip
    postgres = result["store"].startswith("PostgreSQL")
    print()
    print(
        "| round | endpoint | load | accepted/s | not 200 | p50 ms | p90 ms | p99 ms | max ms "
        f"| server CPU | client CPU |{' PostgreSQL CPU |' if postgres else ''} runs before "
        "| ended by worker | drain s |"
    )
    print("|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (3 + postgres))
    for phase in phases:
        load = (
            f"{result['rate']:g}/s open" if phase["mode"] == "rate" else
            f"{result['clients']} closed"
        )  # fmt: skip
        failed = {k: v for k, v in phase["statuses"].items() if k != "200"}
        shown = ", ".join(f"{v} × {k}" for k, v in sorted(failed.items())) or "0"
        latency = phase["latency_ms"]
        print(f"| {phase['round']} | {phase['endpoint']} | {load} | {phase['ok_per_s']:,.1f} "
              f"| {shown} | {ms(latency['p50'])} | {ms(latency['p90'])} | {ms(latency['p99'])} "
              f"| {ms(latency['max'])} | {phase['server_cpu_percent']:.0f} % "
              f"| {phase['client_cpu_percent']:.0f} % |"
              + (f" {phase['postgres_cpu_percent']:.0f} % |" if postgres else "")
              + f" {phase['runs_before']:,} | {phase['runs_ended_by_worker']:,} "
              f"| {phase['drain_s']:.0f} |")  # fmt: skip
    print()
    lag = max((p["send_lag_ms_p99"] for p in phases if p["send_lag_ms_p99"] is not None), default=0)
    print("accepted/s: 200 answers that arrived within the measured window, a second. Latency "
          "and not 200: open loop, the requests due in the window, from when each was due "
          f"(timeout: no answer within {REQUEST_TIMEOUT:g} s); closed loop, the requests "
          "answered in the window. CPU: percent of one core. runs before: runs in the store "
          "when the phase began. drain s: how long after the phase runs kept being recorded "
          "(requests the client had given up on). The generator began each request within "
          f"{lag:.1f} ms of its due time (p99, worst phase).")  # fmt: skip
    print()
    rate = f"{result['rate']:g}/s"

    def both(mode: str, key: str) -> tuple[float, float]:
        return median_of(phases, "fire", mode, key), median_of(phases, "empty", mode, key)

    fire_p99 = both("rate", "latency.p99")[0]
    fire_max, empty_max = both("closed", "ok_per_s")
    ratio = fire_max / empty_max if empty_max else math.nan
    rows: list[tuple[str, tuple[float, float], str]] = [
        (f"p50 at {rate} (ms)", both("rate", "latency.p50"), ""),
        (f"p90 at {rate} (ms)", both("rate", "latency.p90"), ""),
        (f"p99 at {rate} (ms)", both("rate", "latency.p99"),
         "" if result["without_store"] else
         f"fire < 25 ms: {'met' if fire_p99 < 25 else 'missed'}"),
        (f"accepted at {rate} (per s)", both("rate", "ok_per_s"), rate),
        (f"most per s, {result['clients']} clients", (fire_max, empty_max),
         f"ceiling without the store ({ratio:.2f})" if result["without_store"] else
         f"fire ≥ half of empty: {'met' if ratio >= 0.5 else 'missed'} ({ratio:.2f})"),
        ("p50 at most per s (ms)", both("closed", "latency.p50"), ""),
        ("p99 at most per s (ms)", both("closed", "latency.p99"), ""),
    ]  # fmt: skip
    print(f"| median of {result['rounds']} rounds | fire | empty | target |")
    print("|---|---:|---:|---|")
    for label, (fire, empty), target in rows:
        print(f"| {label} | {fire:,.1f} | {empty:,.1f} | {target} |")
    print()
    final = ", ".join(f"{count:,} {status}" for status, count in sorted(result["runs"].items()))
    print(f"runs in the store at the end: {final}")
    # routined serve ends by raising the SIGTERM it caught again, once all has stopped.
    if result["server_exit_code"] not in (0, -15) or result["server_stderr"]:
        tail = result["server_stderr"][-2000:] or "(empty)"
        print(f"\nroutined serve exited with {result['server_exit_code']}; its stderr "
              f"(last 2,000 characters):\n{tail}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests a second")
    parser.add_argument("--duration", type=float, help="measured seconds a phase (default 20)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds first (default 3)")
    parser.add_argument("--rounds", type=int, help="rounds of the four phases (default 3)")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop connections")
    parser.add_argument("--worker", choices=("held", "failing"), default="held",
                        help="how runs are kept from executing agents (see above)")  # fmt: skip
    parser.add_argument("--database-url", help="PostgreSQL admin URL; default: embedded SQLite")
    parser.add_argument("--without-store", action="store_true",
                        help="a ceiling: fires answered without recording (see above)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="1 round of 5 s phases")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.generate:
        # The load generator: a spec on stdin, its measurements on stdout.
        print(json.dumps(generate(json.load(sys.stdin))))
        return
    quick = options.quick
    duration: float = options.duration or (5.0 if quick else 20.0)
    warmup: float = options.warmup if options.warmup is not None else (1.0 if quick else 3.0)
    rounds: int = options.rounds or (1 if quick else 3)

    # Before the phases, so the load average shows what else the machine was doing.
    host = machine()
    phases, final, code, errors = benchmark(options, rounds, warmup, duration)
    result = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": host,
        "store": store_name(options.database_url),
        "worker": options.worker,
        "without_store": options.without_store,
        "rate": options.rate,
        "clients": options.clients,
        "warmup": warmup,
        "duration": duration,
        "rounds": rounds,
        "phases": phases,
        "runs": final,
        "server_exit_code": code,
        "server_stderr": errors,
    }
    emit(result, as_json=options.json, report=report)


if __name__ == "__main__":
    main()
