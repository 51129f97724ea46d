"""Workers: claim queued runs and carry each through preparing, running and finishing.

A worker holds at most `ROUTINED_WORKERS` runs at once, beats a heartbeat on
them, and ends runs whose worker vanished as `lost`. Every state change goes
through `routined.runs` under the lease the claim returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from routined import agent, runs, sandbox, workspace
from routined.config import Settings
from routined.db import Store
from routined.egress import EgressDecision, EgressPolicy, EgressProxy
from routined.ids import short
from routined.models import Repository, Routine, Run
from routined.runs import Claim, RunStatus

Clock = Callable[[], datetime]
log = logging.getLogger(__name__)

_STDERR_LINES = 200


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunFailure(Exception):
    """Ends a run as failed; `code` is the short reason shown first in `error`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class RunContext:
    run_id: str
    session_id: str
    routine: str
    prompt: str
    model: str | None
    text: str | None
    trigger_type: str
    repositories: tuple[str, ...]


class Recorder:
    """Writes one run's events, each in its own short transaction, off the event loop."""

    def __init__(self, store: Store, run_id: str, clock: Clock) -> None:
        self.store = store
        self.run_id = run_id
        self.clock = clock
        self._pending: set[asyncio.Task[None]] = set()

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
        with self.store.transaction() as session:
            runs.add_event(session, self.run_id, kind, now=self.clock(), reason=reason, data=data)


class Worker:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._claims: dict[str, Claim] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sandbox_checked: asyncio.Task[None] | None = None

    # -- the loop ---------------------------------------------------------

    def wake(self) -> None:
        """Look for queued runs now; safe to call from any thread."""
        if self._loop is not None and self._wakeup is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        beating = asyncio.create_task(self._beat(stop))
        last_sweep = None
        try:
            while not stop.is_set():
                now = self.clock()
                if last_sweep is None or now - last_sweep > timedelta(seconds=30):
                    await asyncio.to_thread(self._end_lost_runs)
                    last_sweep = now
                while await self.run_once():
                    pass
                await self._idle(stop)
        finally:
            beating.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(beating, *self._tasks, return_exceptions=True)

    async def run_once(self) -> bool:
        """Claim one queued run and start it, if there is a free slot; say whether it did."""
        if len(self._tasks) >= self.settings.workers:
            return False
        claim = await asyncio.to_thread(self._claim, None)
        if claim is None:
            return False
        self._start(claim)
        return True

    async def run_claimed(self, run_id: str) -> bool:
        """Execute this one run here if no other worker has taken it; say whether it did."""
        self._loop = asyncio.get_running_loop()
        claim = await asyncio.to_thread(self._claim, run_id)
        if claim is None:
            return False
        stop = asyncio.Event()
        beating = asyncio.create_task(self._beat(stop))
        try:
            await self.execute(claim)
        finally:
            stop.set()
            await beating
        return True

    def _start(self, claim: Claim) -> None:
        task = asyncio.create_task(self.execute(claim), name=f"run {claim.run_id}")
        self._tasks.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            self.wake()  # a slot is free

        task.add_done_callback(finished)

    async def _idle(self, stop: asyncio.Event) -> None:
        assert self._wakeup is not None
        waiters = [asyncio.create_task(self._wakeup.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait(
            waiters, timeout=self.settings.poll_interval, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in waiters:
            waiter.cancel()
        self._wakeup.clear()

    async def _beat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.heartbeat_interval)
            if self._claims:
                await asyncio.to_thread(self._heartbeat, list(self._claims.values()))

    def _claim(self, run_id: str | None) -> Claim | None:
        with self.store.transaction() as session:
            claim = runs.claim(session, self.id, now=self.clock(), run_id=run_id)
        if claim is not None:
            self._claims[claim.run_id] = claim
        return claim

    def _heartbeat(self, claims: list[Claim]) -> None:
        with self.store.transaction() as session:
            runs.heartbeat(session, claims, now=self.clock())

    def _end_lost_runs(self) -> None:
        with self.store.transaction() as session:
            runs.end_lost(
                session, now=self.clock(), lost_after=timedelta(seconds=self.settings.lost_after)
            )

    # -- one run ----------------------------------------------------------

    async def execute(self, claim: Claim) -> None:
        """Carry a claimed run to its end; never raises for the run's own failures."""
        recorder = Recorder(self.store, claim.run_id, self.clock)
        status = RunStatus.PREPARING
        run_dir = self.settings.runs_dir / claim.run_id
        try:
            context = await asyncio.to_thread(self._load, claim.run_id)
            checkouts = await self._prepare(context, run_dir)
            cloned = [
                (
                    "git.clone",
                    f"cloned {c.url} ({c.default_branch})",
                    {"repository": c.url, "path": str(c.path), "default_branch": c.default_branch},
                )
                for c in checkouts
            ]
            await self._move(
                claim, status, RunStatus.RUNNING, "the agent is starting", events=cloned
            )
            status = RunStatus.RUNNING
            failure = await self._run_agent(context, claim, checkouts, run_dir, recorder)
            await self._move(
                claim,
                status,
                RunStatus.FINISHING,
                "the agent stopped: " + (failure or "it finished its session"),
            )
            status = RunStatus.FINISHING
            pushed = await self._deliver(context, checkouts, run_dir, recorder)
            await asyncio.to_thread(shutil.rmtree, run_dir / "workspace", True)
            branches = [p.as_dict() for p in pushed]
            summary = ", ".join(p.branch for p in pushed) or "no changes to deliver"
            if failure:
                error = f"agent_failed: {failure}"
                await self._move(
                    claim,
                    status,
                    RunStatus.FAILED,
                    f"{error} (delivered: {summary})",
                    changes={"branches": branches, "error": error},
                )
            else:
                await self._move(
                    claim,
                    status,
                    RunStatus.SUCCEEDED,
                    f"delivered: {summary}",
                    changes={"branches": branches},
                )
        except asyncio.CancelledError:
            await self._end_failed(claim, status, "interrupted", "the worker was stopped")
            raise
        except RunFailure as failure:
            await self._end_failed(claim, status, failure.code, str(failure).split(": ", 1)[1])
        except Exception as error:  # noqa: BLE001 - a run ends with the reason, whatever it was
            await self._end_failed(
                claim, status, "internal_error", f"{type(error).__name__}: {error}"
            )
        finally:
            await recorder.flush()
            self._claims.pop(claim.run_id, None)

    async def _prepare(self, context: RunContext, run_dir: Path) -> list[workspace.Checkout]:
        await self._check_sandbox()
        for folder in ("workspace", "home", "tmp", "private"):
            (run_dir / folder).mkdir(parents=True, exist_ok=True)
        (run_dir / "private").chmod(0o700)
        # Claude Code takes a slower first-start path when it finds no config file;
        # an empty one is a valid config and starts the session sooner.
        (run_dir / "home" / ".claude.json").write_text("{}\n")
        taken: set[str] = set()
        destinations = [
            run_dir / "workspace" / workspace.checkout_name(url, taken)
            for url in context.repositories
        ]
        try:
            checkouts = await asyncio.gather(
                *(
                    workspace.clone(url, path)
                    for url, path in zip(context.repositories, destinations, strict=True)
                )
            )
        except workspace.GitError as error:
            raise RunFailure("clone_failed", str(error)) from error
        return list(checkouts)

    async def _run_agent(
        self,
        context: RunContext,
        claim: Claim,
        checkouts: list[workspace.Checkout],
        run_dir: Path,
        recorder: Recorder,
    ) -> str | None:
        """Run the session in its sandbox; return why it failed, or None."""
        settings = self.settings
        if not settings.anthropic_api_key and not os.environ.get("CLAUDE_CODE_OAUTH_TOKEN"):
            raise RunFailure("agent_failed", "ANTHROPIC_API_KEY is not set for routined")
        claude = sandbox.claude_binary(settings.claude_path)
        helper = sandbox.seccomp_helper(settings.seccomp_helper)
        socket_dir = Path(tempfile.mkdtemp(prefix="routined-"))
        egress_socket = socket_dir / "egress.sock"
        denied: list[str] = []

        def on_decision(decision: EgressDecision) -> None:
            if not decision.allowed:
                denied.append(f"{decision.host}:{decision.port}")
                recorder.event_soon(
                    "egress.denied",
                    f"blocked {decision.method} to {decision.host}:{decision.port}: "
                    "host_not_allowed",
                    host=decision.host,
                    port=decision.port,
                )

        stderr: list[str] = []

        def on_stderr(line: str) -> None:
            if len(stderr) < _STDERR_LINES:
                stderr.append(line.rstrip())

        proxy = EgressProxy(EgressPolicy.model_api_only(settings.anthropic_base_url), on_decision)
        home, tmp = run_dir / "home", run_dir / "tmp"
        layout = sandbox.run_layout(
            run_dir=run_dir,
            cwd=checkouts[0].path,
            protected=[path for c in checkouts for path in workspace.protected_paths(c)],
            readable=[c.borrowed_objects for c in checkouts if c.borrowed_objects is not None],
            routined_home=settings.home,
            executables=[p for p in (claude, helper) if p is not None],
            egress_socket=egress_socket,
            seccomp_helper=helper,
        )
        own_branch = _own_branch(context)
        env = sandbox.agent_environment(
            home=home,
            tmp=tmp,
            model_base_url=settings.anthropic_base_url,
            model_api_key=settings.anthropic_api_key.reveal(),
            extra=workspace.Author(settings.git_author_name, settings.git_author_email).env(),
        )
        launcher = run_dir / "private" / "launch-agent"
        sandbox.write_launcher(
            launcher, run_id=context.run_id, command=sandbox.bwrap_command(layout, claude), keep=env
        )

        async def on_message(kind: str, data: dict[str, Any]) -> None:
            await recorder.event(kind, None, **data)

        try:
            await proxy.start(egress_socket)
            async with asyncio.timeout(settings.run_timeout):
                outcome = await agent.run_session(
                    prompt=agent.build_prompt(
                        context.prompt, context.text, source=context.trigger_type
                    ),
                    system_addition=agent.system_prompt_addition(
                        routine=context.routine,
                        own_branch=own_branch,
                        repositories=[c.path for c in checkouts],
                    ),
                    model=context.model,
                    launcher=launcher,
                    cwd=checkouts[0].path,
                    add_dirs=[c.path for c in checkouts[1:]],
                    env=env,
                    on_message=on_message,
                    on_stderr=on_stderr,
                )
            failure = outcome.error
            if outcome.agent_session_id:
                await asyncio.to_thread(self._note_agent_session, claim, outcome)
        except TimeoutError:
            failure = f"timeout: stopped after {settings.run_timeout:g} s (ROUTINED_RUN_TIMEOUT)"
        except Exception as error:  # noqa: BLE001 - the SDK raises several kinds for a dead CLI
            said = " | ".join(stderr[-5:])
            failure = f"{type(error).__name__}: {error}" + (f" (stderr: {said})" if said else "")
        finally:
            await proxy.close()
            shutil.rmtree(socket_dir, ignore_errors=True)
        if stderr:
            await recorder.event("agent.stderr", f"{len(stderr)} lines", lines=stderr)
        if denied:
            await recorder.flush()
        return failure

    async def _deliver(
        self,
        context: RunContext,
        checkouts: list[workspace.Checkout],
        run_dir: Path,
        recorder: Recorder,
    ) -> list[workspace.Pushed]:
        session_url = f"{self.settings.public_url}/sessions/{context.session_id}"
        message = (
            f"Work left uncommitted by routine {context.routine}\n\n"
            f"Routine-Session: {session_url}\n"
        )
        author = workspace.Author(self.settings.git_author_name, self.settings.git_author_email)
        pushed: list[workspace.Pushed] = []
        for checkout in checkouts:
            try:
                delivered = await workspace.deliver(
                    checkout,
                    own_branch=_own_branch(context),
                    author=author,
                    message=message,
                    scratch=run_dir / "private",
                    suffix=short(context.run_id),
                )
            except workspace.GitError as error:
                raise RunFailure("delivery_failed", str(error)) from error
            for item in delivered:
                await recorder.event(
                    "git.push", f"pushed {item.branch} ({item.source})", **item.as_dict()
                )
            if not delivered:
                await recorder.event("git.push", f"nothing new to push to {checkout.url}")
            pushed += delivered
        return pushed

    # -- store helpers ----------------------------------------------------

    def _load(self, run_id: str) -> RunContext:
        with self.store.transaction() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise RunFailure("internal_error", f"run {run_id} disappeared")
            routine = session.get(Routine, run.routine_id)
            if routine is None:
                raise RunFailure("internal_error", f"routine of run {run_id} disappeared")
            urls = session.scalars(
                select(Repository.url)
                .where(Repository.routine_id == routine.id)
                .order_by(Repository.position)
            ).all()
            return RunContext(
                run_id=run.id,
                session_id=run.session_id,
                routine=routine.name,
                prompt=routine.prompt,
                model=run.model,
                text=run.text,
                trigger_type=run.trigger_type,
                repositories=tuple(urls),
            )

    async def _move(
        self,
        claim: Claim,
        expected: RunStatus,
        to: RunStatus,
        reason: str,
        *,
        changes: dict[str, Any] | None = None,
        events: Sequence[tuple[str, str, dict[str, Any]]] = (),
    ) -> None:
        """Make the move, with any events that led to it, in one transaction."""

        def write() -> None:
            with self.store.transaction() as session:
                now = self.clock()
                for kind, why, data in events:
                    runs.add_event(session, claim.run_id, kind, now=now, reason=why, data=data)
                runs.transition(
                    session,
                    claim.run_id,
                    expected,
                    to,
                    now=now,
                    reason=reason,
                    lease=claim.lease,
                    changes=changes,
                )

        await asyncio.to_thread(write)

    async def _end_failed(self, claim: Claim, status: RunStatus, code: str, message: str) -> None:
        try:
            await asyncio.shield(
                self._move(
                    claim,
                    status,
                    RunStatus.FAILED,
                    f"{code}: {message}",
                    changes={"error": f"{code}: {message}"},
                )
            )
        except runs.TransitionRefused:
            pass  # another worker or the lost-run sweep ended it already
        except Exception:
            # The store is unreachable: the lost-run sweep will end it later.
            log.exception("could not record the failure of run %s", claim.run_id)

    def _note_agent_session(self, claim: Claim, outcome: agent.SessionOutcome) -> None:
        with self.store.transaction() as session:
            run = session.get(Run, claim.run_id)
            if run is not None and run.lease == claim.lease:
                run.agent_session_id = outcome.agent_session_id
                if outcome.result is not None:
                    run.cost_usd = outcome.result.total_cost_usd

    async def _check_sandbox(self) -> None:
        # Once per worker: a machine that cannot sandbox fails every run the same way.
        if self._sandbox_checked is None:
            helper = sandbox.seccomp_helper(self.settings.seccomp_helper)
            self._sandbox_checked = asyncio.ensure_future(sandbox.check_available(helper))
        try:
            await asyncio.shield(self._sandbox_checked)
        except sandbox.SandboxUnavailable as error:
            raise RunFailure("sandbox_unavailable", str(error)) from error


def _own_branch(context: RunContext) -> str:
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in context.routine.lower())
    return f"{workspace.BRANCH_PREFIX}{slug.strip('-.')}-{short(context.run_id)}"
