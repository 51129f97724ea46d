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
import time
from datetime import datetime, timedelta
from pathlib import Path

from routined import runs, workspace
from routined.config import Settings
from routined.db import Store
from routined.runs import Claim
from routined.runs.executor import Executor
from routined.runs.finish import SETTLED
from routined.sandbox import bubblewrap, resources
from routined.timeutil import Clock, utcnow
from routined.wakeup import Wakeup

log = logging.getLogger(__name__)


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
        # Beside the loop: removing a long-kept backlog of folders must not hold up runs.
        sweeping = asyncio.create_task(self._sweep_files(stop))
        last_sweep: datetime | None = None
        try:
            while not stop.is_set():
                try:
                    now = self.clock()
                    if last_sweep is None or now - last_sweep > _LOST_SWEEP_INTERVAL:
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
            sweeping.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(beating, sweeping, *self._tasks, return_exceptions=True)
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
        tenth of a second (a read, which takes no write turn), so a cancel stops a run
        within a second of being asked: noticing it, ending the sandbox and keeping the
        work take the rest (docs/runs.md)."""
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
        for pid in bubblewrap.reap_orphans(self.settings.runs_dir):
            log.warning("killed sandbox %s, orphaned by a worker that died", pid)
        for group in workspace.reap_orphans():
            log.warning("killed git process group %s, orphaned by a routined that died", group)
        for left in resources.host().sweep():
            log.warning("removed resource group %s, left by a routined that died", left)
        with self.store.transaction() as session:
            runs.end_lost(
                session, now=self.clock(), lost_after=timedelta(seconds=self.settings.lost_after)
            )

    async def _sweep_files(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.settle_abandoned_files()
            except Exception:
                log.exception("worker %s: settling abandoned run folders failed", self.id)
            try:
                await self.remove_expired_files()
            except Exception:
                log.exception("worker %s: removing expired run folders failed", self.id)
            await _wait(stop, _FILES_SWEEP_INTERVAL)

    async def settle_abandoned_files(self) -> list[str]:
        """Leave safe the folders of runs that ended without their worker (one killed
        outright: its runs end as lost), as their worker would have; return them."""
        runs_dir = self.settings.runs_dir
        folders, _ = await asyncio.to_thread(_run_folders, runs_dir)
        in_use = set(self._claims) | await asyncio.to_thread(bubblewrap.runs_in_use, runs_dir)
        unsettled = [
            run_id
            for run_id in folders
            if run_id not in in_use and not (runs_dir / run_id / "private" / SETTLED).exists()
        ]
        ended = (
            await asyncio.to_thread(self._expired_files, unsettled, self.clock(), timedelta(0))
        ).ended
        for run_id in ended:
            await self.executor.settle_abandoned(run_id)
        return ended

    async def remove_expired_files(self) -> list[str]:
        """Remove the folders of runs that ended ROUTINED_RUN_FILES_MAX_AGE ago (and of
        runs the store no longer has, that long after the folder last changed); return
        the runs whose folders this worker removed."""
        if self.settings.run_files_max_age > _KEPT_FOR_GOOD:
            return []
        runs_dir = self.settings.runs_dir
        keep_for = timedelta(seconds=self.settings.run_files_max_age)
        now = self.clock()
        folders, set_aside_before = await asyncio.to_thread(_run_folders, runs_dir)
        for leftover in set_aside_before:  # a removal stopped halfway, or that failed
            await _remove(leftover)
        # A run can end in the store while its sandbox still runs (ended as lost while
        # its worker was stalled): a folder in use stays.
        in_use = set(self._claims) | await asyncio.to_thread(bubblewrap.runs_in_use, runs_dir)
        with_folders = [run_id for run_id in folders if run_id not in in_use]
        expired = await asyncio.to_thread(self._expired_files, with_folders, now, keep_for)
        oldest = (now - keep_for).timestamp()
        forgotten = [run_id for run_id in expired.unknown if folders[run_id] <= oldest]
        removed: list[str] = []
        ended = set(expired.ended)
        for run_id in [*expired.ended, *forgotten]:
            # Renamed first: of workers sharing this home, one takes each folder and
            # records it once, and a removal stopped halfway never looks like a run's
            # (what is set aside goes, now or at a later pass).
            aside = await asyncio.to_thread(_set_aside, runs_dir / run_id)
            if aside is None:
                continue
            removed.append(run_id)
            if run_id in ended:
                try:
                    await asyncio.to_thread(self._record_files_removed, run_id, now, keep_for)
                except Exception:
                    log.exception("worker %s: recording %s's folder as removed", self.id, run_id)
            await _remove(aside)
        return removed

    def _expired_files(
        self, run_ids: list[str], now: datetime, keep_for: timedelta
    ) -> runs.ExpiredFiles:
        with self.store.transaction(readonly=True) as session:
            return runs.expired_files(session, run_ids, now=now, keep_for=keep_for)

    def _record_files_removed(self, run_id: str, now: datetime, kept: timedelta) -> None:
        with self.store.transaction() as session:
            runs.record_files_removed(session, run_id, now=now, kept=kept)

    async def _execute(self, claim: Claim, *, standby: bool = True) -> None:
        try:
            await self.executor.execute(claim, standby=standby)
        finally:
            self._claims.pop(claim.run_id, None)


_CANCEL_CHECK_INTERVAL = 0.1  # seconds; see `_beat`
_LOST_SWEEP_INTERVAL = timedelta(seconds=30)
_FILES_SWEEP_INTERVAL = 600.0  # seconds
_SET_ASIDE = ".removing-"
_GRACE = 3600.0  # seconds a folder set aside is left to the worker removing it
# Longer than any deployment lives (and `inf`): such folders are kept for good, and
# the dates reckoned from it stay in range.
_KEPT_FOR_GOOD = 100 * 365 * 86400


def _run_folders(runs_dir: Path) -> tuple[dict[str, float], list[Path]]:
    """The run folders under `runs_dir` by run id, with when each last changed; and
    folders set aside for removal."""
    try:
        entries = list(os.scandir(runs_dir))
    except FileNotFoundError:
        return {}, []
    runs_folders: dict[str, float] = {}
    set_aside: list[Path] = []
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):  # another worker took it meanwhile
            if not entry.is_dir(follow_symlinks=False):
                continue
            status = entry.stat(follow_symlinks=False)
            if entry.name.startswith("run_"):
                runs_folders[entry.name] = status.st_mtime
            elif entry.name.startswith(_SET_ASIDE) and time.time() - status.st_ctime > _GRACE:
                # Set aside (renamed: its ctime) a while ago: no worker is removing it now.
                set_aside.append(Path(entry.path))
    return runs_folders, set_aside


async def _remove(folder: Path) -> None:
    """Remove `folder`; what is left, a later pass removes."""
    await workspace.remove(folder)
    if folder.exists():
        log.warning("could not remove %s; trying again later", folder)


def _set_aside(folder: Path) -> Path | None:
    """`folder` under a name no run has, or None if another worker took it first."""
    aside = folder.with_name(f"{_SET_ASIDE}{folder.name}-{secrets.token_hex(4)}")
    try:
        folder.rename(aside)
    except FileNotFoundError:
        return None
    return aside


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
