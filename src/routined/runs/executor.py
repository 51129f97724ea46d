"""Executing one run: from its claim, through its stages, to its end.

The stages run over one `Scope`: the gate (`triage`), the checkouts (`checkout`),
the environment and its setup script (`setup`), the agent's session (`session`),
delivery of the work (`finish`) and what is said on GitHub (`publish`). The ledger
moves the run between states under the lease its claim returned; a run's own
failures end it as failed with the reason, never as an exception.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any

from routined.agents.session import SessionOutcome
from routined.config import Settings
from routined.db import Store
from routined.runs import checkout, confine, finish, publish, push, scope, session, setup, triage
from routined.runs.failure import Failure, RunFailure
from routined.runs.ledger import Ledger
from routined.runs.scope import Host, Scope
from routined.runs.state import Claim, RunStatus
from routined.sandbox import bubblewrap
from routined.secrets import redaction
from routined.timeutil import Clock

log = logging.getLogger(__name__)


class Executor:
    """Runs claimed runs for one worker; readies the next checkouts in the background."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        clock: Clock,
        *,
        sandboxes: bubblewrap.Sandboxes | None = None,
    ) -> None:
        self.host = Host(store, settings, clock, sandboxes)
        self._background: set[asyncio.Task[None]] = set()
        self._cancellable: dict[str, asyncio.Task[session.Ending]] = {}
        self._cancel_reasons: dict[str, str] = {}

    async def close(self) -> None:
        """Stop background work (standby checkouts); they are only ever a head start."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def cancel(self, run_id: str, reason: str) -> bool:
        """Stop a run this executor is preparing or running; say whether it was."""
        work = self._cancellable.get(run_id)
        if work is None or work.done() or run_id in self._cancel_reasons:
            return False  # asked once is enough: again could cut its clean-up short
        self._cancel_reasons[run_id] = reason
        work.cancel()
        return True

    async def settle_abandoned(self, run_id: str) -> None:
        """Leave safe the folder of a run that ended without its worker (see `finish`)."""
        await finish.settle_abandoned(self.host, run_id)

    async def execute(self, claim: Claim, *, standby: bool = True) -> None:
        """Carry a claimed run to its end; never raises for the run's own failures.

        With `standby`, the checkouts the routine's next run will need are readied
        afterwards, in the background.
        """
        host = self.host
        ledger = Ledger(host.store, claim, host.clock)
        run_dir = host.settings.runs_dir / claim.run_id
        run: Scope | None = None
        delivered = settled = False

        async def settle() -> None:  # once, however the run ends
            nonlocal settled
            if not settled:
                settled = True
                await finish.settle(ledger, run_dir, run, delivered=delivered)

        try:
            spec = await asyncio.to_thread(scope.load, host.store, claim.run_id)
            run = Scope(host, spec, run_dir, ledger)
            if spec.gate is not None and not await triage.passes_gate(host, spec, ledger):
                return
            run.group = await confine.make_group(run)
            # Until delivery starts, a cancel request stops the run: this part
            # runs as a task of its own that `cancel` can cancel.
            work = asyncio.create_task(self._prepare_and_run(run))
            self._cancellable[claim.run_id] = work
            try:
                ending = await work
            finally:
                self._cancellable.pop(claim.run_id, None)
            await ledger.move(
                RunStatus.RUNNING,
                RunStatus.FINISHING,
                "the agent stopped: " + (ending.error or "it finished its session"),
            )
            pushed = await finish.deliver(run)
            delivered = True
            await publish.publish(run, pushed)
            await settle()
            said, changes = _ended(ending, pushed)
            await ledger.move(RunStatus.FINISHING, ending.status, said, changes=changes)
        except asyncio.CancelledError:
            reason = self._cancel_reasons.pop(claim.run_id, None)
            current = asyncio.current_task()
            await settle()
            if reason is None or (current is not None and current.cancelling()):
                await ledger.end_failed(f"{Failure.INTERRUPTED}: the worker was stopped")
                raise
            await ledger.end_cancelled(reason)
        except RunFailure as failure:
            await settle()
            await ledger.end_failed(str(failure), failure.pushed)
        except Exception as error:  # noqa: BLE001 - a bug: logged, and the run ends failed
            said = ledger.redactor.text(traceback.format_exc())
            log.error("run %s failed unexpectedly\n%s", claim.run_id, said)
            await settle()
            await ledger.end_failed(f"{Failure.INTERNAL_ERROR}: {type(error).__name__}: {error}")
        finally:
            self._cancel_reasons.pop(claim.run_id, None)
            await ledger.flush()
            if run is not None:
                await self._release(run, standby=standby)

    async def _prepare_and_run(self, run: Scope) -> session.Ending:
        """Secrets, checkouts, network and setup, then the agent's session."""
        run.revealed = await asyncio.to_thread(setup.reveal, run)
        run.ledger.redactor = redaction.Redactor(run.revealed)
        await checkout.check_out(run)
        async with setup.egress(run):
            await setup.set_up(run)
            await run.ledger.move(RunStatus.PREPARING, RunStatus.RUNNING, "the agent is starting")
            return await session.run_agent(run)

    async def _release(self, run: Scope, *, standby: bool) -> None:
        """Free what the run held; ready the next run's checkouts in the background."""
        if run.namespaces is not None:
            await asyncio.to_thread(run.namespaces.close)
        if run.group is not None:
            await asyncio.shield(asyncio.to_thread(run.group.close))
        if standby:
            task = asyncio.create_task(checkout.prepare_standbys(self.host, run.spec))
            self._background.add(task)
            task.add_done_callback(self._background.discard)


def _ended(ending: session.Ending, pushed: list[push.Pushed]) -> tuple[str, dict[str, Any]]:
    """The reason of the run's last move, and what it records of the run's results."""
    outcome = ending.outcome or SessionOutcome()
    results = {
        "branches": [p.as_dict() for p in pushed],
        "diff_stat": push.total(pushed),
        "summary": outcome.summary,
        "usage": outcome.usage,
        "cost_usd": outcome.cost_usd,
    }
    listed = ", ".join(p.branch for p in pushed) or "no changes to deliver"
    if ending.error:
        return f"{ending.error} (delivered: {listed})", {**results, "error": ending.error}
    return f"delivered: {listed}", results
