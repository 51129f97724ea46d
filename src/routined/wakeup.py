"""Sleeping loops that other threads can wake early: the worker's, the scheduler's,
the GitHub matcher's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from routined.config import Settings
    from routined.db import Store

log = logging.getLogger(__name__)


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


class Loop:
    """Background work of the server: a `step` in a thread, then a sleep until the time
    it asks for, `wake`, or stop. A step that fails is logged and tried again later."""

    doing = "background work"  # for the log: "<doing> failed"

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Callable[[], datetime],
        on_run_created: Callable[[], None] = lambda: None,
        retry_after_error: float = 5.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.on_run_created = on_run_created
        self.retry_after_error = retry_after_error
        self._wakeup = Wakeup()

    def wake(self) -> None:
        """Step again now (something changed); safe from any thread."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._wakeup.bind()
        while not stop.is_set():
            try:
                delay = await asyncio.to_thread(self.step, stop.is_set)
            except Exception:
                log.exception("%s failed; trying again", self.doing)
                delay = self.retry_after_error
            await self._wakeup.sleep(stop, max(delay, 0.0))

    def step(self, stopping: Callable[[], bool]) -> float:
        """Do the work there is; return the seconds until it should look again."""
        raise NotImplementedError
