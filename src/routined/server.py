"""`routined serve`: the HTTP API, the scheduler and a worker in one process, the GitHub
matcher in another."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO

from rich.console import Console

from routined.config import Settings, record_served_at, secure_home
from routined.db import Checkpointer, Store
from routined.http.app import create_app
from routined.http.server import bind, more_descriptors, uvicorn_server
from routined.runs.worker import Worker
from routined.sandbox import bubblewrap, resources
from routined.schedules.scheduler import Scheduler
from routined.timeutil import utcnow
from routined.wakeup import Loop

log = logging.getLogger(__name__)

_RESTART_DELAY = 5.0  # seconds between a matcher process's end and the next's start


def serve(
    settings: Settings, *, host: str, port: int, console: Console, matcher: bool = True
) -> None:
    """Serve until stopped, with a `MatcherProcess`; without `matcher`, another
    process (`routined matcher`) decides the GitHub deliveries this one records."""
    secure_home(settings.home)
    more_descriptors()
    listener = bind(host, port)
    settings = settings.with_listen_address(host, listener.getsockname()[1], os.environ)
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    record_served_at(settings.home, settings.public_url)
    store = Store(settings.database_url.reveal(), background_checkpoints=True)
    store.migrate()
    worker = Worker(store, settings)
    loops: list[Loop] = [Scheduler(store, settings, clock=utcnow, on_run_created=worker.wake)]
    if store.is_sqlite:
        loops.append(Checkpointer(store, settings, clock=utcnow))
    matching = MatcherProcess(on_run_created=worker.wake) if matcher else None
    app = create_app(
        store,
        settings,
        clock=utcnow,
        on_run_created=worker.wake,
        # Without one of ours, the matcher elsewhere sees deliveries by polling.
        on_delivery=matching.wake if matching else lambda: None,
    )
    server = uvicorn_server(app)
    shown_db = store.url.render_as_string(hide_password=True)

    async def main() -> None:
        stop = asyncio.Event()
        running = [asyncio.create_task(worker.run(stop))]
        running += [asyncio.create_task(loop.run(stop)) for loop in loops]
        if matching is not None:
            running.append(asyncio.create_task(matching.supervise(stop)))
        console.print(f"routined is serving at [bold]{settings.public_url}[/] (store: {shown_db})")
        caps = resources.host()
        said = f"[yellow]{caps.description}[/]" if caps.problems else caps.description
        console.print(f"{_sandbox_user(settings)}; {said}", highlight=False)
        try:
            await server.serve(sockets=[listener])
        finally:
            stop.set()
            await asyncio.gather(*running)
            store.dispose()
            caps.close()

    # What exists by now (modules, the app, the store) lives as long as the process.
    # Frozen, it is left out of the collector's full passes, which otherwise walk
    # over 300,000 objects and stop every request for about 0.2 s each time.
    gc.freeze()
    # uvicorn's choice: uvloop where it is installed (not on Windows), whose
    # transports are in C; at hundreds of requests a second that matters.
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(main())
    for number in reversed(server.stopped_by):
        signal.raise_signal(number)  # ended as the signal asks, now that all has stopped


def _sandbox_user(settings: Settings) -> str:
    owner = bubblewrap.owner(settings.sandbox_uid)
    if owner is None:
        return f"sandboxes run as routined's user (uid {os.geteuid()})"
    return f"sandboxes run as host user {owner} (ROUTINED_SANDBOX_UID)"


class MatcherProcess:
    """`routined matcher` in a process of its own, as long as the server runs.

    Deciding deliveries (reading them, parsing, matching filters) is work for a
    core, and a Python process computes on one core at a time: in a process of
    its own the matcher has another, and the server answers GitHub without
    waiting for it. They talk over its standard streams: a line in says a
    delivery was recorded, a line out that runs were started (for the worker),
    and the end of its input that the server has ended, also when it was killed.
    Should it die, another is started.
    """

    def __init__(self, on_run_created: Callable[[], None]) -> None:
        self._on_run_created = on_run_created
        self._process: subprocess.Popen[bytes] | None = None

    def wake(self) -> None:
        """A delivery was recorded: decide now."""
        process = self._process
        if process is None or process.stdin is None:
            return
        # Gone: the next one looks for undecided deliveries when it starts. A full
        # pipe (a matcher busy for long) holds wakes enough: nothing waits on it.
        with contextlib.suppress(OSError, ValueError):
            process.stdin.write(b"\n")
            process.stdin.flush()

    def _start(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "routined", "matcher", "--supervised"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdin is not None
        # `wake` is called on the event loop, which must never block on the pipe.
        os.set_blocking(process.stdin.fileno(), False)
        threading.Thread(target=self._relay, args=(process.stdout,), daemon=True).start()
        self._process = process
        return process

    def _relay(self, lines: IO[bytes]) -> None:
        for _ in lines:
            self._on_run_created()

    async def supervise(self, stop: asyncio.Event) -> None:
        process = self._start()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _RESTART_DELAY)
                if process.poll() is not None and not stop.is_set():
                    log.error(
                        "the GitHub matcher process ended (exit code %s); starting another",
                        process.returncode,
                    )
                    process = self._start()
        finally:
            process.terminate()
            if process.stdin is not None:
                with contextlib.suppress(OSError):  # a full pipe cannot take its last wake
                    process.stdin.close()
            await asyncio.to_thread(process.wait)
