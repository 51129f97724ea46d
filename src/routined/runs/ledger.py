"""The only code that writes the store while a run is in flight: its events, its moves
between states, and its end. Each write is one short transaction, off the event loop,
with the run's secret values redacted from what it stores.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from routined import fires
from routined.agents.session import SessionOutcome
from routined.db import Store
from routined.models import Run
from routined.runs import push, state
from routined.runs.state import Claim, RunStatus
from routined.secrets import redaction
from routined.timeutil import Clock

log = logging.getLogger(__name__)

# Bytes of the agent's events a run stores; the rest are counted, not kept.
AGENT_EVENTS_LIMIT = 32 * 1024 * 1024

# What a run with no secrets redacts: nothing (its methods return what they get).
NO_SECRETS = redaction.Redactor({})


@dataclass
class Recorder:
    """Writes one run's events, each in its own short transaction, off the event loop."""

    store: Store
    run_id: str
    clock: Clock
    # The run's secret values, kept out of everything it stores.
    redactor: redaction.Redactor = field(default_factory=lambda: NO_SECRETS)
    _pending: set[asyncio.Task[None]] = field(default_factory=set)
    _agent_bytes: int = 0  # what the agent's events took in the store so far

    async def event(self, kind: str, reason: str | None = None, **data: Any) -> None:
        await asyncio.to_thread(self._write, kind, reason, data or None)

    def event_soon(self, kind: str, reason: str | None = None, **data: Any) -> None:
        """For callbacks that cannot wait; `flush` waits for these."""
        task = asyncio.get_running_loop().create_task(self.event(kind, reason, **data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def _write(self, kind: str, reason: str | None, data: dict[str, Any] | None) -> None:
        reason = None if reason is None else self.redactor.text(reason)
        data = self.redactor.data(data)
        if kind.startswith("agent.") and data is not None:
            # What the agent says is bounded per run as stored (redaction can make it
            # longer): past the bound, only its size is kept.
            size = len(json.dumps(data, ensure_ascii=False).encode())
            self._agent_bytes += size
            if self._agent_bytes > AGENT_EVENTS_LIMIT:
                data = {"omitted": True, "size": size}
        with self.store.transaction() as session:
            state.add_event(session, self.run_id, kind, now=self.clock(), reason=reason, data=data)


class Ledger:
    """One claimed run's writes: events (through its `Recorder`), moves and its end,
    each under the lease its claim holds."""

    def __init__(self, store: Store, claim: Claim, clock: Clock) -> None:
        self.store = store
        self.claim = claim
        self.clock = clock
        self.recorder = Recorder(store, claim.run_id, clock)

    @property
    def redactor(self) -> redaction.Redactor:
        return self.recorder.redactor

    @redactor.setter
    def redactor(self, redactor: redaction.Redactor) -> None:
        self.recorder.redactor = redactor

    async def event(self, kind: str, reason: str | None = None, **data: Any) -> None:
        await self.recorder.event(kind, reason, **data)

    def event_soon(self, kind: str, reason: str | None = None, **data: Any) -> None:
        self.recorder.event_soon(kind, reason, **data)

    async def flush(self) -> None:
        await self.recorder.flush()

    async def move(
        self,
        expected: RunStatus,
        to: RunStatus,
        reason: str,
        *,
        changes: dict[str, Any] | None = None,
    ) -> None:
        """Make the move (with `changes` to the run) in one transaction."""
        reason = self.redactor.text(reason)
        changes = self.redactor.data(changes)

        def write() -> None:
            with self.store.transaction() as session:
                state.transition(
                    session,
                    self.claim.run_id,
                    state.Move(
                        expected,
                        to,
                        now=self.clock(),
                        reason=reason,
                        lease=self.claim.lease,
                        changes=changes,
                    ),
                )

        await asyncio.to_thread(write)

    async def skip(self, error: str, said: str) -> None:
        """End the preparing run as skipped by its gate (`said`: the gate's answer)."""

        def write() -> None:
            with self.store.transaction() as session:
                state.transition(
                    session,
                    self.claim.run_id,
                    state.Move(
                        RunStatus.PREPARING,
                        RunStatus.SKIPPED,
                        now=self.clock(),
                        reason=error,
                        lease=self.claim.lease,
                        changes={"error": error},
                    ),
                )
                fires.skipped_by_gate(session, self.claim.run_id, said)

        await asyncio.to_thread(write)

    async def note_agent_session(self, outcome: SessionOutcome) -> None:
        def write() -> None:
            with self.store.transaction() as session:
                run = session.get(Run, self.claim.run_id)
                if run is not None and run.lease == self.claim.lease:
                    run.agent_session_id = outcome.agent_session_id

        await asyncio.to_thread(write)

    async def end_failed(self, error: str, pushed: Sequence[push.Pushed] = ()) -> None:
        redactor = self.redactor
        error = redactor.text(error)

        def write() -> None:
            with self.store.transaction() as session:
                if state.fail(session, self.claim, now=self.clock(), error=error) and pushed:
                    run = session.get(Run, self.claim.run_id)
                    if run is not None:
                        run.branches = redactor.data([p.as_dict() for p in pushed])

        try:
            await asyncio.shield(asyncio.to_thread(write))
        except Exception:
            # The store is unreachable: the lost-run sweep will end it later.
            log.exception("could not record the failure of run %s", self.claim.run_id)

    async def end_cancelled(self, reason: str) -> None:
        reason = self.redactor.text(reason)

        def write() -> None:
            with self.store.transaction() as session:
                if not state.end_cancelled(session, self.claim, now=self.clock(), reason=reason):
                    log.warning("run %s could not be marked cancelled", self.claim.run_id)

        try:
            await asyncio.shield(asyncio.to_thread(write))
        except Exception:
            # The store is unreachable: the lost-run sweep will end it later.
            log.exception("could not record the cancellation of run %s", self.claim.run_id)
