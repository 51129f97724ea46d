"""Sleeping loops that other threads can wake early: the worker's and the scheduler's."""

from __future__ import annotations

import asyncio


class Wakeup:
    """A sleep that ends at its timeout, on `stop`, or as soon as `set` is called.

    `set` is safe from any thread (a web handler, `asyncio.to_thread` work); it
    does nothing before the loop has started sleeping on it.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self) -> None:
        """Attach to the running event loop; call once from the loop that sleeps."""
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def set(self) -> None:
        if self._loop is not None and self._event is not None:
            self._loop.call_soon_threadsafe(self._event.set)

    async def sleep(self, stop: asyncio.Event, seconds: float) -> None:
        assert self._event is not None, "bind() first"
        waiters = [asyncio.create_task(self._event.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        self._event.clear()
