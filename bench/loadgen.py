"""The HTTP load generator the server benchmarks share, and the `routined serve` they load.

A small HTTP/1.1 client on asyncio streams rather than httpx, so that on a small
machine it takes little of the CPU the server would use. It runs in a process of
its own (the benchmark script again, with --generate, see `run_generator`), and
reports its own CPU, the server's and PostgreSQL's beside each phase.

- `open_loop`: request i is due at t0 + i/rate and is sent then whatever came back
  before, over a pool of keep-alive connections (a new one opens when every open
  one is busy). Latency runs from when the request was due to its whole response,
  so a stall is charged to every request it delayed (no coordinated omission).
- `closed_loop`: a number of connections, each sending its next request when the
  previous one answered, for the most requests a second.

Each phase runs `warmup` seconds unmeasured, then `duration` seconds measured.
What is sent is `Target.request(i)` for the i-th request of the phase (numbered
from 0, across every connection), so requests may differ; build them before the
phase so that the generator's own CPU stays small.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from benchkit import percentile, process_cpu
from routined.db import Store
from routined.models import Routine, Run

ROUTINED = str(Path(sys.executable).with_name("routined"))
REQUEST_TIMEOUT = 30.0
# Open loop: past this many connections a due request waits for one to free up
# (and its latency shows it) rather than the generator opening without bound.
MAX_CONNECTIONS = 256
# uvicorn closes a keep-alive connection idle for 5 s; one idle for less than this
# is reused, an older one closed, so no request meets a connection the server is
# closing at that moment.
IDLE_REUSE = 2.0
STOP_TIMEOUT = 30.0


# -- the load generator (a process of its own) ---------------------------------


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    request: Callable[[int], bytes]  # the whole HTTP/1.1 request numbered i, sent as is
    expect: bytes  # in every successful response's body
    ok: str = "200"  # the status of a successful response


def fixed(request: bytes) -> Callable[[int], bytes]:
    """The same request every time."""
    return lambda number: request


@dataclass(frozen=True)
class CpuSample:
    server: float  # CPU seconds of the server process, every thread
    client: float  # CPU seconds of this generator
    postgres: float  # CPU seconds of PostgreSQL's processes (0 on SQLite)
    wall: float


def postgres_cpu() -> float:
    """PostgreSQL's share, from its processes: this machine's /proc/stat totals lose
    ticks (they can read lower than one process's own), so they are not used."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += process_cpu(int(entry.name))
            except OSError:
                continue  # it exited meanwhile
    return total


def cpu_sample(server_pid: int, postgres: bool) -> CpuSample:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return CpuSample(
        server=process_cpu(server_pid),
        client=own.ru_utime + own.ru_stime,
        postgres=postgres_cpu() if postgres else 0.0,
        wall=time.monotonic(),
    )


def cpu_percent(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Percent of one core."""
    wall = after.wall - before.wall
    return {
        "server_cpu_percent": 100 * (after.server - before.server) / wall,
        "client_cpu_percent": 100 * (after.client - before.client) / wall,
        "postgres_cpu_percent": 100 * (after.postgres - before.postgres) / wall,
    }


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = asyncio.get_running_loop().time()

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        # Requests are one small write each; Nagle would hold the next one back.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def exchange(self, target: Target, number: int) -> tuple[str, bool]:
        """Send request `number`, read the whole response: its outcome, and whether to reuse."""
        self.writer.write(target.request(number))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head[9:12].decode()
        lowered = head.lower()
        found = re.search(rb"\r\ncontent-length: *(\d+)", lowered)
        if found is None:
            return "no-length", False
        body = await self.reader.readexactly(int(found.group(1)))
        if status == target.ok and target.expect not in body:
            status = f"{status}-bad-body"
        self.used = asyncio.get_running_loop().time()
        return status, b"\r\nconnection: close" not in lowered

    def close(self) -> None:
        self.writer.close()


async def send(
    target: Target, number: int, connection: Connection | None, deadline: float
) -> tuple[str, Connection | None]:
    """Request `number` on `connection` (or a new one); the outcome and the connection to keep."""
    reusable = False
    try:
        async with asyncio.timeout_at(deadline):
            if connection is None:
                connection = await Connection.open(target)
            outcome, reusable = await connection.exchange(target, number)
    except TimeoutError:
        outcome = "timeout"
    except (asyncio.IncompleteReadError, ConnectionError):
        outcome = "connection-lost"
    except OSError:
        outcome = "connect-error"
    if not reusable and connection is not None:
        connection.close()
        connection = None
    return outcome, connection


@dataclass
class Outcomes:
    """The measured requests: due in the window (open loop) or answered in it (closed)."""

    latencies: list[float]
    statuses: Counter[str]  # what each measured request got, "timeout" if nothing in time
    lags: list[float]  # how late the generator began each (open loop)
    accepted: int = 0  # successes that arrived within the window, whenever they were due


def summary(outcomes: Outcomes, seconds: float, cpu: dict[str, float]) -> dict[str, Any]:
    ordered = sorted(outcomes.latencies)
    lags = sorted(outcomes.lags)
    return {
        "seconds": seconds,
        "requests": sum(outcomes.statuses.values()),
        "statuses": dict(outcomes.statuses),
        "ok_per_s": outcomes.accepted / seconds,
        "latency_ms": {
            name: 1000 * percentile(ordered, fraction) if ordered else None
            for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
        "send_lag_ms_p99": 1000 * percentile(lags, 0.99) if lags else None,
        **cpu,
    }


Sampler = Callable[[], CpuSample]


async def measure_cpu(window: tuple[float, float], sample: Sampler) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(window[0] - loop.time())
    before = sample()
    await asyncio.sleep(window[1] - loop.time())
    return cpu_percent(before, sample())


async def open_loop(
    target: Target, rate: float, warmup: float, duration: float, sample: Sampler
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    idle: list[Connection] = []
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    start = loop.time() + 0.1
    window = (start + warmup, start + warmup + duration)
    outcomes = Outcomes([], Counter(), [])

    def reuse() -> Connection | None:
        while idle and loop.time() - idle[0].used > IDLE_REUSE:
            idle.pop(0).close()
        return idle.pop() if idle else None

    async def one(number: int, due: float) -> None:
        # The deadline counts from when it was due: waiting for a connection is
        # part of what an overloaded server costs its callers.
        deadline = due + REQUEST_TIMEOUT
        # How late the generator itself started it; waiting for a connection is
        # the server's doing, not the generator's.
        started = loop.time()
        try:
            async with asyncio.timeout_at(deadline), slots:
                outcome, kept = await send(target, number, reuse(), deadline)
                if kept is not None:
                    idle.append(kept)
        except TimeoutError:
            outcome = "timeout"
        answered = loop.time()
        if outcome == target.ok and window[0] <= answered < window[1]:
            outcomes.accepted += 1
        if window[0] <= due < window[1]:
            outcomes.statuses[outcome] += 1
            outcomes.latencies.append(answered - due)
            outcomes.lags.append(started - due)

    cpu = asyncio.create_task(measure_cpu(window, sample))
    tasks: list[asyncio.Task[None]] = []
    for number in range(round(rate * (warmup + duration))):
        due = start + number / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(number, due)))
    await asyncio.gather(*tasks)  # every one ends by its deadline
    for connection in idle:
        connection.close()
    return summary(outcomes, duration, await cpu)


async def closed_loop(
    target: Target, clients: int, warmup: float, duration: float, sample: Sampler
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    window = (start + warmup, start + warmup + duration)
    outcomes = Outcomes([], Counter(), [])
    numbers = itertools.count()

    async def client() -> None:
        connection: Connection | None = None
        while loop.time() < window[1]:
            sent = loop.time()
            outcome, connection = await send(
                target, next(numbers), connection, sent + REQUEST_TIMEOUT
            )
            answered = loop.time()
            # Counted by when it answered: the requests a second the server completed.
            if window[0] <= answered < window[1]:
                outcomes.statuses[outcome] += 1
                outcomes.latencies.append(answered - sent)
                outcomes.accepted += outcome == target.ok
        if connection is not None:
            connection.close()

    cpu = asyncio.create_task(measure_cpu(window, sample))
    await asyncio.gather(*(client() for _ in range(clients)))
    return summary(outcomes, duration, await cpu)


def generate(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """One phase as `spec` says: mode ("rate" or "closed"), rate or clients, warmup,
    duration, and whose CPU to sample (server_pid, postgres)."""

    def sample() -> CpuSample:
        return cpu_sample(spec["server_pid"], spec["postgres"])

    if spec["mode"] == "rate":
        work = open_loop(target, spec["rate"], spec["warmup"], spec["duration"], sample)
    else:
        work = closed_loop(target, spec["clients"], spec["warmup"], spec["duration"], sample)
    return asyncio.run(work)


def run_generator(script: str, spec: dict[str, Any]) -> dict[str, Any]:
    """`script --generate` with `spec` as JSON on its stdin; what it printed as JSON."""
    done = subprocess.run(
        [sys.executable, script, "--generate"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- the server --------------------------------------------------------------------


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_origin(root: Path, what: str = "the fire load benchmark") -> Path:
    bare = root / "app.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    seed = root / "seed"
    git("clone", "--quiet", str(bare), str(seed))
    (seed / "README.md").write_text(f"A repository for {what}.\n")
    git("add", ".", cwd=seed)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "--quiet", "-m", "seed", cwd=seed)
    git("push", "--quiet", "origin", "main", cwd=seed)
    return bare


@contextmanager
def stalled_origin() -> Iterator[str]:
    """An HTTP origin that accepts connections and never answers: a fetch from it waits."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    # Never accepted: the kernel completes the handshake, git sends its request
    # and waits for an answer, costing no CPU on either side.
    listener.listen(8)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/stalled.git"
    finally:
        listener.close()


class Server:
    """`routined serve --port 0` with its output in files, so nothing it prints can block it."""

    def __init__(
        self,
        env: dict[str, str],
        logs: Path,
        serve_args: Sequence[str] = (),
        command: Sequence[str] = (ROUTINED,),
    ) -> None:
        self.stdout = logs / "serve.out"
        self.stderr = logs / "serve.err"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [*command, "serve", "--port", "0", *serve_args], env=env, stdout=out, stderr=err
            )
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 60) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(rb"serving at http://([\d.]+):(\d+)", self.stdout.read_bytes())
            if found:
                return found.group(1).decode(), int(found.group(2))
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"routined serve exited with {self.process.returncode}:\n{self.errors()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"routined serve did not start within {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")


def wait_until_held(store: Store, timeout: float = 60) -> None:
    """Until the blocker's run holds the worker's only slot."""
    deadline = time.monotonic() + timeout
    while True:
        with store.transaction(readonly=True) as session:
            status = session.scalar(
                select(Run.status)
                .join(Routine, Routine.id == Run.routine_id)
                .where(Routine.name == "blocker")
            )
        if status == "preparing":
            return
        if status is not None and status != "queued":
            raise RuntimeError(f"the blocking run ended as {status}; it should wait")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not take the blocking run within {timeout:.0f} s")
        time.sleep(0.1)
