"""Workers: claim queued runs and hand each to the executor.

A worker holds at most `ROUTINED_WORKERS` runs at once, beats a heartbeat on
them (and learns with it which of them to cancel), and ends runs whose worker
vanished as `lost` (and any sandbox such a worker left behind). The loops
survive store errors: they log, wait, and try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import socket
from datetime import UTC, datetime, timedelta

from routined import runs, sandbox
from routined.config import Settings
from routined.db import Store
from routined.execution import Clock, Executor
from routined.runs import Claim
from routined.wakeup import Wakeup

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Worker:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        worker_id: str | None = None,
        retry_after_error: float = 5.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.retry_after_error = retry_after_error
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self.executor = Executor(store, settings, clock)
        self._claims: dict[str, Claim] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = Wakeup()

    def wake(self) -> None:
        """Look for queued runs now; safe to call from any thread."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._wakeup.bind()
        beating = asyncio.create_task(self._beat(stop))
        last_sweep: datetime | None = None
        try:
            while not stop.is_set():
                try:
                    now = self.clock()
                    if last_sweep is None or now - last_sweep > timedelta(seconds=30):
                        await asyncio.to_thread(self._end_lost_runs)
                        last_sweep = now
                    while await self.run_once():
                        pass
                except Exception:
                    log.exception("worker %s: looking for runs failed; trying again", self.id)
                    await _wait(stop, self.retry_after_error)
                    continue
                await self._wakeup.sleep(stop, self.settings.poll_interval)
        finally:
            beating.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(beating, *self._tasks, return_exceptions=True)
            await self.executor.close()

    async def run_once(self) -> bool:
        """Claim one queued run and start it, if there is a free slot; say whether it did."""
        if len(self._tasks) >= self.settings.workers:
            return False
        claim = await asyncio.to_thread(self._claim, None)
        if claim is None:
            return False
        self._claims[claim.run_id] = claim
        task = asyncio.create_task(self._execute(claim), name=f"run {claim.run_id}")
        self._tasks.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            self.wake()  # a slot is free

        task.add_done_callback(finished)
        return True

    async def run_claimed(self, run_id: str) -> bool:
        """Execute this one run here if no other worker has taken it; say whether it did."""
        self._wakeup.bind()
        claim = await asyncio.to_thread(self._claim, run_id)
        if claim is None:
            return False
        self._claims[claim.run_id] = claim
        stop = asyncio.Event()
        beating = asyncio.create_task(self._beat(stop))
        try:
            await self._execute(claim, standby=False)  # this process will not run the next one
        finally:
            stop.set()
            await beating
            # The caller's event loop usually ends right after this. Pipes of the
            # agent's process that are garbage by now are closed while it runs.
            gc.collect()
            await asyncio.sleep(0)
        return True

    async def _beat(self, stop: asyncio.Event) -> None:
        """Beat every heartbeat interval; in between, look for cancel requests every
        second (a read, which takes no write turn), so a cancel stops a run at once."""
        check_every = min(_CANCEL_CHECK_INTERVAL, self.settings.heartbeat_interval)
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.settings.heartbeat_interval
        while not stop.is_set():
            await _wait(stop, check_every)
            if not self._claims:
                continue
            beat = loop.time() >= next_beat
            try:
                asked = await asyncio.to_thread(
                    self._heartbeat if beat else self._cancel_requests,
                    list(self._claims.values()),
                )
            except Exception:
                log.exception("worker %s: heartbeat failed; trying again", self.id)
                continue
            if beat:
                next_beat = loop.time() + self.settings.heartbeat_interval
            for run_id, reason in asked.items():
                self.executor.cancel(run_id, reason)

    def _claim(self, run_id: str | None) -> Claim | None:
        with self.store.transaction() as session:
            return runs.claim(session, self.id, now=self.clock(), run_id=run_id)

    def _heartbeat(self, claims: list[Claim]) -> dict[str, str]:
        """Beat for these runs; return the ones someone asked to cancel, with why."""
        with self.store.transaction() as session:
            runs.heartbeat(session, claims, now=self.clock())
            return runs.cancel_requests(session, claims)

    def _cancel_requests(self, claims: list[Claim]) -> dict[str, str]:
        with self.store.transaction(readonly=True) as session:
            return runs.cancel_requests(session, claims)

    def _end_lost_runs(self) -> None:
        for pid in sandbox.reap_orphans(self.settings.runs_dir):
            log.warning("killed sandbox %s, orphaned by a worker that died", pid)
        with self.store.transaction() as session:
            runs.end_lost(
                session, now=self.clock(), lost_after=timedelta(seconds=self.settings.lost_after)
            )

    async def _execute(self, claim: Claim, *, standby: bool = True) -> None:
        try:
            await self.executor.execute(claim, standby=standby)
        finally:
            self._claims.pop(claim.run_id, None)


_CANCEL_CHECK_INTERVAL = 1.0


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
