"""`routined serve`: the HTTP API, the scheduler, the GitHub matcher and a worker in one process."""

from __future__ import annotations

import asyncio
import gc
import os
import socket

import uvicorn
from rich.console import Console

from routined.api import create_app
from routined.config import Settings
from routined.db import Store
from routined.github import Matcher
from routined.scheduler import Scheduler
from routined.wakeup import Loop
from routined.worker import Worker, utcnow


def bind(host: str, port: int) -> socket.socket:
    """Bind first, so the real port (for `--port 0`) is known before the app is built."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio then turns Nagle off on accepted connections, and a
    # response's body does not wait 40 ms for the client's delayed acknowledgement.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    listener.set_inheritable(True)
    return listener


def serve(
    settings: Settings, *, host: str, port: int, console: Console, matcher: bool = True
) -> None:
    """Serve until stopped; without `matcher`, another process (`routined matcher`)
    decides the GitHub deliveries this one records."""
    listener = bind(host, port)
    settings = settings.with_listen_address(host, listener.getsockname()[1], os.environ)
    store = Store(settings.database_url.reveal())
    store.migrate()
    worker = Worker(store, settings)
    loops: list[Loop] = [Scheduler(store, settings, clock=utcnow, on_run_created=worker.wake)]
    if matcher:
        loops.append(Matcher(store, settings, clock=utcnow, on_run_created=worker.wake))
    app = create_app(
        store,
        settings,
        clock=utcnow,
        on_run_created=worker.wake,
        # Without one here, the matcher elsewhere sees deliveries by polling.
        on_delivery=loops[-1].wake if matcher else lambda: None,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    shown_db = store.url.render_as_string(hide_password=True)

    async def main() -> None:
        stop = asyncio.Event()
        running = [asyncio.create_task(worker.run(stop))]
        running += [asyncio.create_task(loop.run(stop)) for loop in loops]
        console.print(f"routined is serving at [bold]{settings.public_url}[/] (store: {shown_db})")
        try:
            await server.serve(sockets=[listener])
        finally:
            stop.set()
            await asyncio.gather(*running)
            store.dispose()

    # What exists by now (modules, the app, the store) lives as long as the process.
    # Frozen, it is left out of the collector's full passes, which otherwise walk
    # over 300,000 objects and stop every request for about 0.2 s each time.
    gc.freeze()
    asyncio.run(main())
