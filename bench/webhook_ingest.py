"""GitHub webhook deliveries under sustained load, against 1,000 GitHub routines.

Target: p99 time to answer under 50 ms at 500 deliveries/s.

One real `routined serve` (uvicorn, FastAPI, the store, and the GitHub matcher
deciding deliveries after they are answered, as in production) runs with 1,000
routines set up with the real CLI (`routined apply`): 100 repositories with ten
routines each, every one with a `type: github` trigger on its repository. A
second process, this script with --generate, sends signed deliveries to `POST
/webhooks/github` on loopback with the load generator of `bench/loadgen.py`
(the one `bench/fire_load.py` uses), each round in two phases:

1. open loop at --rate deliveries a second: delivery i is due at t0 + i/rate and
   is sent then whatever came back before; time to answer runs from when it was
   due to its whole response (no coordinated omission).
2. closed loop: --clients connections, each sending its next delivery when the
   previous one was answered, for the most deliveries a second.

Each phase runs --warmup seconds unmeasured, then --duration seconds measured.

The deliveries are the real example payloads in tests/fixtures/github-webhooks/
(octokit/webhooks: pull requests of 28-31 KB, pushes, issues, comments, check
and workflow runs, releases), in a fixed mix (`MIX`), each with its
`repository.full_name` set to one of the 100 repositories, serialised again and
signed with HMAC-SHA256 over the bytes sent. Each delivery has an
`X-GitHub-Delivery` of its own, so none is a redelivery (a 202 answering
"duplicate" would count as not accepted). Bodies and signatures are built
before the phase; a delivery's head is put together as it is sent.

Each delivery is matched against its repository's ten triggers (`ROUTINES`):
most skip on their events or filters, a release is matched but skipped because
its payload names no installation of the app, and two kinds fire: every
`pull_request.opened` into master labelled bug, and every
`pull_request.synchronize` by codertocat, whose trigger supersedes the pull
request's previous run (concurrency cancel_previous): 10.6 % of deliveries start a
run. The GitHub hourly caps (ROUTINED_GITHUB_ROUTINE_HOURLY_CAP and
ROUTINED_GITHUB_ACCOUNT_HOURLY_CAP) and ROUTINED_MAX_QUEUED_RUNS are set to
10,000,000, so every match that should fire does: with the defaults (30 and 100
runs an hour) all but the first 100 would be dropped by the caps within a
second. No run executes an agent: the worker's only slot (ROUTINED_WORKERS=1) is
held by a run of another routine whose repository never answers, as in
fire_load.py's --worker held.

The matcher decides deliveries after the answer, in a process of its own that
`routined serve` starts (so that it computes on the other core), and shares the
store with the receiver: on SQLite they take turns to write. For each phase the
report says how many deliveries were received, how many the matcher had decided
by the end of the load, and how long it then took to decide the rest (drain);
the next phase starts only once every delivery is decided. `--matcher` says what
decides: `serve` the matcher process of `routined serve` (the default), `apart`
a `routined matcher` started on its own beside `routined serve --no-matcher` (a
split deployment), or `off` (`routined serve --no-matcher` alone: a diagnosis of
the receiver; deliveries stay undecided). The server CPU reported is the serving
process's alone, never the matcher's.

    .venv/bin/python bench/webhook_ingest.py [--rate 500] [--duration 10] [--warmup 3]
        [--rounds 3] [--clients 16] [--matcher serve|apart|off]
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
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
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
    make_origin,
    run_generator,
    stalled_origin,
    wait_until_held,
)
from routined.db import Store
from routined.github.webhooks import sign
from routined.models import Fire, Run, WebhookDelivery

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "github-webhooks"
HUGE = "10000000"
SECRET = "bench-webhook-secret"  # noqa: S105 - a benchmark's, on loopback
REPOSITORIES = 100
DRAIN_TIMEOUT = 900.0
# What is delivered: (event, fixture under FIXTURES, weight out of 20).
MIX: tuple[tuple[str, str, int], ...] = (
    ("pull_request", "pull_request/opened.payload.json", 1),
    ("pull_request", "pull_request/synchronize.payload.json", 1),
    ("pull_request", "pull_request/closed.payload.json", 2),
    ("pull_request", "pull_request/labeled.payload.json", 2),
    ("pull_request", "pull_request/reopened.payload.json", 1),
    ("pull_request", "pull_request/ready_for_review.payload.json", 1),
    ("push", "push/with-new-branch.payload.json", 4),
    ("issues", "issues/opened.payload.json", 2),
    ("issues", "issues/labeled.payload.json", 1),
    ("issue_comment", "issue_comment/created.payload.json", 2),
    ("check_run", "check_run/completed.payload.json", 1),
    ("workflow_run", "workflow_run/completed.payload.json", 1),
    ("release", "release/published.payload.json", 1),
)
# The ten routines of every repository: (name, the trigger without its repository).
ROUTINES: tuple[tuple[str, dict[str, Any]], ...] = (
    # Fires on every pull_request.opened of the mix (base master, labelled bug).
    ("review-opened", {
        "events": ["pull_request.opened"],
        "filters": [
            {"field": "base_branch", "op": "equals", "value": "master"},
            {"field": "labels", "op": "one_of", "value": ["bug", "security"]},
        ],
    }),
    ("review-main", {
        "events": ["pull_request.opened", "pull_request.synchronize"],
        "filters": [{"field": "base_branch", "op": "equals", "value": "main"}],
    }),
    ("merged-notes", {
        "events": ["pull_request.closed"],
        "filters": [{"field": "is_merged", "op": "equals", "value": True}],
    }),
    ("push-main", {
        "events": ["push"],
        "filters": [{"field": "branch", "op": "equals", "value": "main"}],
    }),
    ("triage-security", {
        "events": ["issues.opened", "issues.labeled"],
        "filters": [{"field": "labels", "op": "one_of", "value": ["security"]}],
    }),
    ("comment-command", {
        "events": ["issue_comment.created"],
        "filters": [{"field": "body", "op": "starts_with", "value": "/claude"}],
    }),
    # Matched by every release, skipped: the fixture names no installation.
    ("release-notes", {"events": ["release.published"]}),
    ("label-review", {
        "events": ["pull_request.labeled"],
        "filters": [{"field": "labels", "op": "one_of", "value": ["needs-review"]}],
    }),
    ("fix-ci", {
        "events": ["check_run.completed", "workflow_run.completed"],
        "filters": [{"field": "head_branch", "op": "starts_with", "value": "claude/"}],
    }),
    # Fires on every pull_request.synchronize of the mix, superseding the last one.
    ("update-pr", {
        "events": ["pull_request.synchronize"],
        "filters": [
            {"field": "author", "op": "one_of", "value": ["codertocat"]},
            {"field": "is_draft", "op": "equals", "value": False},
        ],
        "concurrency": {"key": "pr-{{pull_request.number}}", "policy": "cancel_previous"},
    }),
)  # fmt: skip
SCHEDULE_LENGTH = 10007  # the (repository, payload) sequence repeats after this many


def repository(number: int) -> str:
    return f"bench-org-{number // 10}/service-{number:03d}"


# -- the load generator (a process of its own) ---------------------------------


def deliveries(spec: dict[str, Any]) -> Callable[[int], bytes]:
    """Request i: the i-th of a fixed random sequence of (repository, payload), signed,
    with a delivery id of its own. The signed bodies are built here, beforehand."""
    host = f"{spec['host']}:{spec['port']}"
    secret = spec["secret"].encode()
    fixtures = [(event, json.loads((FIXTURES / path).read_bytes())) for event, path, _ in MIX]
    # Per (repository, payload): the head up to the delivery id, and the rest with the body.
    parts: list[list[tuple[bytes, bytes]]] = []
    for number in range(spec["repositories"]):
        row = []
        for event, payload in fixtures:
            payload["repository"]["full_name"] = repository(number)
            body = json.dumps(payload).encode()
            before = (
                "POST /webhooks/github HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                "User-Agent: GitHub-Hookshot/bench\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"X-GitHub-Event: {event}\r\n"
                "X-GitHub-Hook-ID: 1\r\n"
                f"X-Hub-Signature-256: {sign(secret, body)}\r\n"
                "X-GitHub-Delivery: "
            )
            row.append((before.encode(), b"\r\n\r\n" + body))
        parts.append(row)
    chooser = random.Random(spec["seed"])
    weights = [weight for _, _, weight in MIX]
    schedule = [
        parts[chooser.randrange(len(parts))][chooser.choices(range(len(MIX)), weights)[0]]
        for _ in range(SCHEDULE_LENGTH)
    ]
    prefix = spec["prefix"]

    def request(number: int) -> bytes:
        before, after = schedule[number % SCHEDULE_LENGTH]
        return b"".join((before, f"{prefix}-{number:08d}".encode(), after))

    return request


def generate(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target(
        host=spec["host"],
        port=spec["port"],
        request=deliveries(spec),
        expect=b'"received"',
        ok="202",
    )
    started = time.monotonic()
    result = loadgen.generate(target, spec)
    return {**result, "load_s": time.monotonic() - started}


# -- the server and its store ---------------------------------------------------


def routines_file(origin: Path, stalled: str) -> str:
    routines: list[dict[str, Any]] = []
    for number in range(REPOSITORIES):
        for name, trigger in ROUTINES:
            routines.append(
                {
                    "name": f"{name}-{number:03d}",
                    "prompt": "Look at the event.",
                    "repositories": [{"url": str(origin)}],
                    "triggers": [{"type": "github", "repository": repository(number), **trigger}],
                }
            )
    routines.append(
        {
            "name": "blocker",
            "prompt": "Wait.",
            "repositories": [{"url": stalled}],
            "triggers": [{"type": "api"}],
        }
    )
    return json.dumps({"routines": routines}, indent=1)  # JSON is YAML


def server_env(home: Path, url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ROUTINED_")}
    env |= {
        "ROUTINED_HOME": str(home),
        "ROUTINED_DATABASE_URL": url,
        "ROUTINED_GITHUB_WEBHOOK_SECRET": SECRET,
        "ROUTINED_GITHUB_ROUTINE_HOURLY_CAP": HUGE,
        "ROUTINED_GITHUB_ACCOUNT_HOURLY_CAP": HUGE,
        "ROUTINED_ROUTINE_HOURLY_CAP": HUGE,
        "ROUTINED_ACCOUNT_API_HOURLY_CAP": HUGE,
        "ROUTINED_MAX_QUEUED_RUNS": HUGE,
        "ROUTINED_WORKERS": "1",
        "COLUMNS": "300",
    }
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY_FILE", None)
    return env


@dataclass(frozen=True)
class Counts:
    deliveries: int
    undecided: int
    runs: int  # started by GitHub deliveries


def counts(store: Store) -> Counts:
    # Read-only: on SQLite it takes no lock, so it cannot delay the server's writes.
    with store.transaction(readonly=True) as session:
        total = session.scalar(select(func.count()).select_from(WebhookDelivery)) or 0
        undecided = (
            session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.processed_at.is_(None))
            )
            or 0
        )
        runs = (
            session.scalar(
                select(func.count()).select_from(Run).where(Run.trigger_type == "github")
            )
            or 0
        )
    return Counts(total, undecided, runs)


def drain(store: Store, timeout: float = DRAIN_TIMEOUT) -> tuple[float, Counts]:
    """Seconds until every delivery is decided and none arrives any more (the client
    gives up on a request after REQUEST_TIMEOUT, but the server still records it)."""
    started = time.monotonic()
    last = counts(store)
    while time.monotonic() - started < timeout:
        if last.undecided == 0:
            break
        time.sleep(0.25)
        last = counts(store)
    settled = time.monotonic() - started
    while time.monotonic() - started < timeout:
        time.sleep(1.0)
        now = counts(store)
        if now.deliveries == last.deliveries and now.undecided == 0:
            break
        last = now
    return settled, counts(store)


def settled(store: Store, timeout: float = DRAIN_TIMEOUT) -> Counts:
    """The counts once deliveries have stopped arriving (without a matcher)."""
    started = time.monotonic()
    last = counts(store)
    while time.monotonic() - started < timeout:
        time.sleep(1.0)
        now = counts(store)
        if now.deliveries == last.deliveries:
            break
        last = now
    return last


@contextlib.contextmanager
def matcher_process(env: dict[str, str], logs: Path) -> Iterator[None]:
    """`routined matcher` in a process of its own, for the length of the block."""
    with (logs / "matcher.out").open("wb") as out, (logs / "matcher.err").open("wb") as err:
        process = subprocess.Popen([ROUTINED, "matcher"], env=env, stdout=out, stderr=err)
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- orchestration and report ------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    server: Server
    store: Store
    host: str
    port: int
    postgres: bool
    matcher: bool


def measure(setup: Setup, options: argparse.Namespace, mode: str, warmup: float,
            duration: float) -> dict[str, Any]:  # fmt: skip
    before = counts(setup.store)
    if before.undecided and setup.matcher:
        raise RuntimeError(f"{before.undecided} deliveries still undecided before the phase")
    result = run_generator(
        __file__,
        {
            "host": setup.host,
            "port": setup.port,
            "secret": SECRET,
            "repositories": REPOSITORIES,
            "seed": options.seed,
            "prefix": uuid.uuid4().hex[:16],
            "mode": mode,
            "rate": options.rate,
            "clients": options.clients,
            "warmup": warmup,
            "duration": duration,
            "server_pid": setup.server.pid,
            "postgres": setup.postgres,
        },
    )
    after = counts(setup.store)
    drained, final = drain(setup.store) if setup.matcher else (0.0, settled(setup.store))
    if setup.server.process.poll() is not None:
        raise RuntimeError(f"routined serve died:\n{setup.server.errors()}")
    received = after.deliveries - before.deliveries
    decided = received - (after.undecided - before.undecided)
    return {
        "mode": mode,
        "deliveries_before": before.deliveries,
        "received": received,
        "decided_by_end": decided,
        "backlog_at_end": after.undecided,
        "matcher_per_s": decided / result["load_s"],
        "drain_s": drained,
        "received_after_end": final.deliveries - after.deliveries,
        "runs_started": final.runs - before.runs,
        **result,
    }


def outcome_counts(store: Store) -> dict[str, int]:
    with store.transaction(readonly=True) as session:
        rows = session.execute(select(Fire.outcome, func.count()).group_by(Fire.outcome)).all()
    return {str(outcome): int(count) for outcome, count in rows}


def run_counts(store: Store) -> dict[str, int]:
    with store.transaction(readonly=True) as session:
        rows = session.execute(select(Run.status, func.count()).group_by(Run.status)).all()
    return {str(status): int(count) for status, count in rows}


def benchmark(options: argparse.Namespace, rounds: int, warmup: float, duration: float) -> Any:
    with (
        tempfile.TemporaryDirectory(prefix="routined-bench-") as folder,
        contextlib.ExitStack() as stack,
    ):
        root = Path(folder)
        home = root / "home"
        home.mkdir()
        url = stack.enter_context(database(options.database_url, home, "webhook_ingest"))
        origin = make_origin(root, "the webhook ingest benchmark")
        stalled = stack.enter_context(stalled_origin())
        (root / "routines.yaml").write_text(routines_file(origin, stalled))
        env = server_env(home, url)
        cli = functools.partial(subprocess.run, env=env, check=True, capture_output=True)
        progress(f"applying {REPOSITORIES * len(ROUTINES) + 1:,} routines")
        cli([ROUTINED, "apply", "-f", str(root / "routines.yaml")])
        store = Store(url)
        stack.callback(store.dispose)
        matcher = options.matcher != "off"
        server = Server(env, root, () if options.matcher == "serve" else ("--no-matcher",))
        if options.matcher == "apart":
            stack.enter_context(matcher_process(env, root))
        try:
            host, port = server.wait_ready()
            cli([ROUTINED, "fire", "blocker"])
            wait_until_held(store)
            setup = Setup(server, store, host, port, options.database_url is not None, matcher)
            phases: list[dict[str, Any]] = []
            for number in range(1, rounds + 1):
                for mode in ("rate", "closed"):
                    load = f"{options.rate:g}/s" if mode == "rate" else f"{options.clients} clients"
                    progress(f"round {number}/{rounds}: {load}")
                    phase = measure(setup, options, mode, warmup, duration)
                    progress(
                        f"  {phase['ok_per_s']:,.0f} accepted/s, p99 "
                        f"{ms(phase['latency_ms']['p99'])} ms; drained in {phase['drain_s']:.0f} s"
                    )
                    phases.append({"round": number, **phase})
            outcomes = outcome_counts(store)
            final = run_counts(store)
        finally:
            code = server.stop()
        errors = server.errors().strip()
    return phases, outcomes, final, code, errors


def median_of(phases: list[dict[str, Any]], mode: str, key: str) -> float:
    values: list[float] = []
    for phase in phases:
        if phase["mode"] == mode:
            value = phase["latency_ms"][key[8:]] if key.startswith("latency.") else phase[key]
            if value is not None:
                values.append(value)
    return statistics.median(values) if values else math.nan


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def report(result: dict[str, Any]) -> None:
    phases = result["phases"]
    print_header(result)
    where = {
        "serve": "with its GitHub matcher process)",
        "apart": "--no-matcher) and `routined matcher` started apart",
        "off": "--no-matcher) and no matcher: the receiver alone",
    }[result["matcher"]]
    print(f"store: {result['store']}; one `routined serve` (uvicorn, httptools, uvloop, "
          + where)  # fmt: skip
    print(f"routines: {REPOSITORIES * len(ROUTINES):,} with a GitHub trigger, "
          f"{len(ROUTINES)} on each of {REPOSITORIES} repositories; GitHub caps and queue cap "
          "10,000,000; worker held (ROUTINED_WORKERS=1)")  # fmt: skip
    print(f"load: a second process on loopback; open loop at {result['rate']:g}/s, closed loop "
          f"with {result['clients']} clients; {result['warmup']:g} s warm-up + "
          f"{result['duration']:g} s measured per phase; {result['rounds']} rounds")  # fmt: skip
    postgres = result["store"].startswith("PostgreSQL")
    print()
    print(
        "| round | load | accepted/s | not 202 | p50 ms | p90 ms | p99 ms | max ms "
        f"| server CPU | client CPU |{' PostgreSQL CPU |' if postgres else ''} deliveries "
        "before | received | decided by end | matcher /s | drain s | runs started |"
    )
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (6 + postgres))
    for phase in phases:
        load = (
            f"{result['rate']:g}/s open" if phase["mode"] == "rate" else
            f"{result['clients']} closed"
        )  # fmt: skip
        failed = {k: v for k, v in phase["statuses"].items() if k != "202"}
        shown = ", ".join(f"{v} × {k}" for k, v in sorted(failed.items())) or "0"
        latency = phase["latency_ms"]
        share = 100 * phase["decided_by_end"] / phase["received"] if phase["received"] else 100
        print(f"| {phase['round']} | {load} | {phase['ok_per_s']:,.1f} "
              f"| {shown} | {ms(latency['p50'])} | {ms(latency['p90'])} | {ms(latency['p99'])} "
              f"| {ms(latency['max'])} | {phase['server_cpu_percent']:.0f} % "
              f"| {phase['client_cpu_percent']:.0f} % |"
              + (f" {phase['postgres_cpu_percent']:.0f} % |" if postgres else "")
              + f" {phase['deliveries_before']:,} | {phase['received']:,} "
              f"| {phase['decided_by_end']:,} ({share:.0f} %) | {phase['matcher_per_s']:,.0f} "
              f"| {phase['drain_s']:.1f} | {phase['runs_started']:,} |")  # fmt: skip
    print()
    lag = max((p["send_lag_ms_p99"] for p in phases if p["send_lag_ms_p99"] is not None), default=0)
    print("accepted/s: 202 \"received\" answers that arrived within the measured window, a "
          "second. Latency and not 202: open loop, the deliveries due in the window, from when "
          f"each was due (timeout: no answer within {REQUEST_TIMEOUT:g} s); closed loop, the "
          "deliveries answered in the window. CPU: percent of one core, over the measured "
          "window. received: deliveries recorded during the phase (warm-up included); decided "
          "by end: of those, decided by the matcher when the load stopped; matcher /s: "
          "deliveries decided a second while the load ran; drain s: how long the matcher then "
          "took to decide the rest. The generator began each delivery within "
          f"{lag:.1f} ms of its due time (p99, worst phase).")  # fmt: skip
    print()
    rate = f"{result['rate']:g}/s"
    p99 = median_of(phases, "rate", "latency.p99")
    rows: list[tuple[str, float, str]] = [
        (f"p50 at {rate} (ms)", median_of(phases, "rate", "latency.p50"), ""),
        (f"p90 at {rate} (ms)", median_of(phases, "rate", "latency.p90"), ""),
        (f"p99 at {rate} (ms)", p99, f"< 50 ms: {'met' if p99 < 50 else 'missed'}"),
        (f"accepted at {rate} (per s)", median_of(phases, "rate", "ok_per_s"), rate),
        (f"matcher at {rate} (decided per s)", median_of(phases, "rate", "matcher_per_s"), ""),
        (f"drain after {rate} (s)", median_of(phases, "rate", "drain_s"), ""),
        (f"most per s, {result['clients']} clients", median_of(phases, "closed", "ok_per_s"), ""),
        ("p50 at most per s (ms)", median_of(phases, "closed", "latency.p50"), ""),
        ("p99 at most per s (ms)", median_of(phases, "closed", "latency.p99"), ""),
        ("matcher at most per s (decided per s)", median_of(phases, "closed", "matcher_per_s"),
         ""),
        ("drain after most per s (s)", median_of(phases, "closed", "drain_s"), ""),
    ]  # fmt: skip
    print(f"| median of {result['rounds']} rounds | value | target |")
    print("|---|---:|---|")
    for label, value, target in rows:
        print(f"| {label} | {value:,.1f} | {target} |")
    print()
    decided = ", ".join(f"{count:,} {name}" for name, count in sorted(result["fires"].items()))
    print(f"decisions (one per trigger of a delivery's repository): {decided}")
    final = ", ".join(f"{count:,} {status}" for status, count in sorted(result["runs"].items()))
    print(f"runs in the store at the end: {final}")
    # uvicorn ends by raising the SIGTERM it caught again, once it has shut down.
    if result["server_exit_code"] not in (0, -15) or result["server_stderr"]:
        tail = result["server_stderr"][-2000:] or "(empty)"
        print(f"\nroutined serve exited with {result['server_exit_code']}; its stderr "
              f"(last 2,000 characters):\n{tail}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop deliveries a second")
    parser.add_argument("--duration", type=float, help="measured seconds a phase (default 10)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds first (default 3)")
    parser.add_argument("--rounds", type=int, help="rounds of the two phases (default 3)")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop connections")
    parser.add_argument("--seed", type=int, default=1, help="of the deliveries' sequence")
    parser.add_argument("--matcher", choices=("serve", "apart", "off"), default="serve",
                        help="serve's own process, one started apart, or none")  # fmt: skip
    parser.add_argument("--database-url", help="PostgreSQL admin URL; default: embedded SQLite")
    parser.add_argument("--quick", action="store_true", help="1 round of 5 s phases")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.generate:
        # The load generator: a spec on stdin, its measurements on stdout.
        print(json.dumps(generate(json.load(sys.stdin))))
        return
    quick = options.quick
    duration: float = options.duration or (5.0 if quick else 10.0)
    warmup: float = options.warmup if options.warmup is not None else (1.0 if quick else 3.0)
    rounds: int = options.rounds or (1 if quick else 3)

    # Before the phases, so the load average shows what else the machine was doing.
    host = machine()
    phases, fires, final, code, errors = benchmark(options, rounds, warmup, duration)
    result = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": host,
        "store": store_name(options.database_url),
        "rate": options.rate,
        "clients": options.clients,
        "warmup": warmup,
        "duration": duration,
        "rounds": rounds,
        "matcher": options.matcher,
        "phases": phases,
        "fires": fires,
        "runs": final,
        "server_exit_code": code,
        "server_stderr": errors,
    }
    emit(result, as_json=options.json, report=report)


if __name__ == "__main__":
    main()
