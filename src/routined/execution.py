"""Executing one run: from its claim, through preparing, running and finishing, to its end.

The `Executor` carries a claimed run through its stages: checkouts (from standby
or cloned), the agent's session in its sandbox, delivery of the work. Every state
change goes through `routined.runs` under the lease the claim returned; a run's
own failures end it as failed with the reason, never as an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import traceback
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select

from routined import (
    agent,
    delivery,
    finishing,
    fires,
    forge,
    gate,
    kept,
    reach,
    redaction,
    resources,
    runs,
    sandbox,
    schedule,
    trailers,
    tree_redaction,
    vault,
    workspace,
)
from routined.config import SETTINGS, Settings
from routined.db import Store
from routined.egress import EgressDecision, EgressProxy, ModelGateway
from routined.environment import (
    Environment,
    SetupCache,
    cache_folder,
    output_lines,
    run_script,
)
from routined.ids import short
from routined.models import Repository, Routine, Run, Trigger
from routined.runs import Claim, RunStatus

Clock = Callable[[], datetime]
log = logging.getLogger(__name__)

# The checkouts a run worked in, and how its agent ended.
_Worked = tuple[list["workspace.Checkout"], "Ending"]
_STDERR_LINES = 200
_DENIALS_RECORDED = 50


class RunFailure(Exception):
    """Ends a run as failed with `code: message` as its error."""

    def __init__(self, code: str, message: str, *, pushed: Sequence[delivery.Pushed] = ()):
        super().__init__(f"{code}: {message}")
        self.pushed = list(pushed)  # branches delivered before the failure


@dataclass
class Ending:
    """How the agent's part of a run ended: `status` is the run's end unless delivery
    fails, `error` why it did not succeed (None: it did)."""

    status: RunStatus = RunStatus.SUCCEEDED
    error: str | None = None
    outcome: agent.SessionOutcome | None = None

    @classmethod
    def failed(cls, error: str, outcome: agent.SessionOutcome | None = None) -> Ending:
        return cls(RunStatus.FAILED, error, outcome)


@dataclass(frozen=True)
class RunContext:
    run_id: str
    session_id: str
    routine_id: str
    account_id: str
    routine: str
    prompt: str
    model: str | None
    text: str | None
    trigger_type: str
    repositories: tuple[str, ...]
    push_rules: tuple[delivery.PushRules, ...]  # one for each repository, in order
    gate: dict[str, Any] | None = None  # the trigger's triage gate, if it has one
    # The GitHub event that started it (see `routined.github.context`), and what to
    # do on GitHub afterwards.
    event: dict[str, Any] | None = None
    pull_requests: bool = False
    comment: bool = False
    environment: Environment = field(default_factory=Environment)
    limits: dict[str, Any] = field(default_factory=dict)
    agent: dict[str, Any] = field(default_factory=dict)
    connectors: dict[str, Any] = field(default_factory=dict)
    # Applied with an account's key: every connection made for it goes to public
    # addresses only (`routined.reach`), judged again as it is made.
    public_only: bool = False

    def own_branch(self, number: int = 0) -> str:
        """The branch the agent's uncommitted work goes to in repository `number`."""
        prefix = self.push_rules[number].prefix
        return f"{prefix}{delivery.slug(self.routine)}-{short(self.run_id)}"


# Bytes of the agent's events a run stores; the rest are counted, not kept.
AGENT_EVENTS_LIMIT = 32 * 1024 * 1024
# Written in a run's private folder once what stays of it is safe (`_leave_safe`).
SETTLED = "settled"

# What a run with no secrets redacts: nothing (its methods return what they get).
_NO_SECRETS = redaction.Redactor({})


@dataclass
class Recorder:
    """Writes one run's events, each in its own short transaction, off the event loop."""

    store: Store
    run_id: str
    clock: Clock
    # The run's secret values, kept out of everything it stores.
    redactor: redaction.Redactor = field(default_factory=lambda: _NO_SECRETS)
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
            runs.add_event(session, self.run_id, kind, now=self.clock(), reason=reason, data=data)


class Executor:
    """Runs claimed runs for one worker; readies the next checkouts in the background."""

    def __init__(self, store: Store, settings: Settings, clock: Clock) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._background: set[asyncio.Task[None]] = set()
        self._sandbox_checked: asyncio.Task[None] | None = None
        self._cancellable: dict[str, asyncio.Task[_Worked]] = {}
        self._cancel_reasons: dict[str, str] = {}
        self._redactors: dict[str, redaction.Redactor] = {}
        # Each run's resource group (`routined.resources`), its sandboxes' caps.
        self._groups: dict[str, resources.RunGroup] = {}
        # Each run's checkouts, once made: kept for inspection if not delivered.
        self._checkouts: dict[str, list[workspace.Checkout]] = {}
        self._settled: set[str] = set()  # runs whose folder is settled (see `_settle`)
        # Each run's own user namespaces, when routined is root (see `sandbox`).
        self._namespaces: dict[str, sandbox.UserNamespaces] = {}

    async def close(self) -> None:
        """Stop background work (standby checkouts); they are only ever a head start."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def execute(self, claim: Claim, *, standby: bool = True) -> None:
        """Carry a claimed run to its end; never raises for the run's own failures.

        With `standby`, the checkouts the routine's next run will need are readied
        afterwards, in the background.
        """
        recorder = Recorder(self.store, claim.run_id, self.clock)
        run_dir = self.settings.runs_dir / claim.run_id
        context: RunContext | None = None
        delivered = False
        try:
            context = await asyncio.to_thread(self._load, claim.run_id)
            if context.gate is not None and not await self._passes_gate(context, claim, recorder):
                return
            self._groups[claim.run_id] = await self._make_group(context)
            # Until delivery starts, a cancel request stops the run: this part
            # runs as a task of its own that `cancel` can cancel.
            work = asyncio.create_task(self._prepare_and_run(context, claim, run_dir, recorder))
            self._cancellable[claim.run_id] = work
            try:
                checkouts, ending = await work
            finally:
                self._cancellable.pop(claim.run_id, None)
            await self._move(
                claim,
                RunStatus.RUNNING,
                RunStatus.FINISHING,
                "the agent stopped: " + (ending.error or "it finished its session"),
            )
            pushed = await self._deliver(
                context, checkouts, run_dir, recorder, self._groups[claim.run_id]
            )
            delivered = True
            await self._publish(context, checkouts, pushed, recorder)
            await self._settle(context, claim, run_dir, recorder, delivered=True)
            outcome = ending.outcome or agent.SessionOutcome()
            results = {
                "branches": [p.as_dict() for p in pushed],
                "diff_stat": delivery.total(pushed),
                "summary": outcome.summary,
                "usage": outcome.usage,
                "cost_usd": outcome.cost_usd,
            }
            listed = ", ".join(p.branch for p in pushed) or "no changes to deliver"
            await self._move(
                claim,
                RunStatus.FINISHING,
                ending.status,
                f"{ending.error} (delivered: {listed})" if ending.error else f"delivered: {listed}",
                changes={**results, "error": ending.error} if ending.error else results,
            )
        except asyncio.CancelledError:
            reason = self._cancel_reasons.pop(claim.run_id, None)
            current = asyncio.current_task()
            await self._settle(context, claim, run_dir, recorder, delivered=delivered)
            if reason is None or (current is not None and current.cancelling()):
                await self._end_failed(claim, "interrupted: the worker was stopped")
                raise
            await self._end_cancelled(claim, reason)
        except RunFailure as failure:
            await self._settle(context, claim, run_dir, recorder, delivered=delivered)
            await self._end_failed(claim, str(failure), failure.pushed)
        except Exception as error:  # noqa: BLE001 - a bug: logged, and the run ends failed
            said = traceback.format_exc()
            log.error(
                "run %s failed unexpectedly\n%s", claim.run_id, self._redactor(claim).text(said)
            )
            await self._settle(context, claim, run_dir, recorder, delivered=delivered)
            await self._end_failed(claim, f"internal_error: {type(error).__name__}: {error}")
        finally:
            self._cancel_reasons.pop(claim.run_id, None)
            await recorder.flush()
            self._checkouts.pop(claim.run_id, None)
            self._redactors.pop(claim.run_id, None)
            self._settled.discard(claim.run_id)
            namespaces = self._namespaces.pop(claim.run_id, None)
            if namespaces is not None:
                await asyncio.to_thread(namespaces.close)
            group = self._groups.pop(claim.run_id, None)
            if group is not None:
                await asyncio.shield(asyncio.to_thread(group.close))
            if standby and context is not None:
                task = asyncio.create_task(self._prepare_standbys(context))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _publish(
        self,
        context: RunContext,
        checkouts: list[workspace.Checkout],
        pushed: list[delivery.Pushed],
        recorder: Recorder,
    ) -> None:
        """Open a pull request for each pushed branch, and comment the session's link on
        the pull request or issue that started the run, as the routine asks.

        The work is on the origin already: a GitHub call that fails is recorded
        as an event, and the run goes on to its end.
        """
        event = context.event or {}
        comment_on = event.get("comment_on") if context.comment else None
        if not ((context.pull_requests and pushed) or comment_on):
            return
        if context.public_only:
            await recorder.event(
                "github.error",
                "no pull request or comment: they are made as the operator's GitHub App, "
                "which a routine applied with an account's key may not act as",
            )
            return
        try:
            app = forge.GitHubApp.from_settings(self.settings)
        except forge.ForgeError as error:
            await recorder.event("github.error", str(error))
            return
        if app is None:
            await recorder.event(
                "github.error", "the GitHub App is not configured (ROUTINED_GITHUB_APP_ID)"
            )
            return
        session_url = runs.session_url(self.settings.public_url, context.session_id)
        opened = []
        for branch in pushed if context.pull_requests else []:
            checkout = next(c for c in checkouts if c.shown_url == branch.repository)
            repository = forge.repository_of(checkout.url, self.settings.github_url)
            if repository is None and event.get("repository") and checkout is checkouts[0]:
                repository = event["repository"]  # the event's, cloned from a mirror of it
            if repository is None:
                await recorder.event(
                    "github.error",
                    f"no pull request for {branch.branch}: {branch.repository} is not a "
                    f"repository on {self.settings.github_url}",
                )
                continue
            installation = (
                event.get("installation_id") if repository == event.get("repository") else None
            )
            try:
                url = await app.open_pull_request(
                    repository,
                    installation_id=installation,
                    head=branch.branch,
                    base=checkout.default_branch,
                    title=f"{context.routine}: {branch.branch}",
                    body=_pull_request_body(context, session_url),
                )
            except forge.ForgeError as error:
                await recorder.event("github.error", str(error))
                continue
            opened.append(url)
            await recorder.event(
                "github.pull_request", f"opened {url}", url=url, branch=branch.branch
            )
        if comment_on:
            lines = [f"routined is running routine **{context.routine}**: {session_url}"]
            lines += [f"- pull request: {url}" for url in opened]
            try:
                url = await app.comment(
                    event["repository"],
                    comment_on["number"],
                    "\n".join(lines),
                    installation_id=event.get("installation_id"),
                )
            except forge.ForgeError as error:
                await recorder.event("github.error", str(error))
            else:
                await recorder.event("github.comment", f"commented {url}", url=url)

    async def _passes_gate(self, context: RunContext, claim: Claim, recorder: Recorder) -> bool:
        """Ask the trigger's gate; a run it turns away ends as skipped, with its answer."""
        assert context.gate is not None
        result = await gate.evaluate(
            prompt=context.gate["prompt"],
            text=context.text,
            source=context.trigger_type,
            on_error=context.gate.get("on_error", "closed"),
            base_url=self.settings.gate_base_url,
            api_key=self.settings.anthropic_api_key.reveal(),
            model=self.settings.gate_model,
        )
        if result.proceed:
            await recorder.event("gate.passed", result.reason)
            return True

        def write() -> None:
            with self.store.transaction() as session:
                runs.transition(
                    session,
                    claim.run_id,
                    RunStatus.PREPARING,
                    RunStatus.SKIPPED,
                    now=self.clock(),
                    reason=f"skipped: gate: {result.reason}",
                    lease=claim.lease,
                    changes={"error": f"skipped: gate: {result.reason}"},
                )
                fires.skipped_by_gate(session, claim.run_id, result.reason)

        await asyncio.to_thread(write)
        return False

    def cancel(self, run_id: str, reason: str) -> bool:
        """Stop a run this executor is preparing or running; say whether it was."""
        work = self._cancellable.get(run_id)
        if work is None or work.done() or run_id in self._cancel_reasons:
            return False  # asked once is enough: again could cut its clean-up short
        self._cancel_reasons[run_id] = reason
        work.cancel()
        return True

    async def _prepare_and_run(
        self, context: RunContext, claim: Claim, run_dir: Path, recorder: Recorder
    ) -> _Worked:
        revealed = await asyncio.to_thread(self._reveal, context)
        recorder.redactor = self._redactors[claim.run_id] = redaction.Redactor(revealed)
        checkouts = self._checkouts[claim.run_id] = await self._prepare(context, run_dir)
        checkouts = await self._fetch_pull_head(context, checkouts, recorder)
        self._checkouts[claim.run_id] = checkouts
        for checkout in checkouts:
            await recorder.event(
                "git.clone",
                f"cloned {checkout.shown_url} ({checkout.default_branch})",
                repository=checkout.shown_url,
                path=str(checkout.path),
                default_branch=checkout.default_branch,
            )
        gateway = ModelGateway(
            self.settings.anthropic_base_url, self.settings.anthropic_api_key.reveal()
        )
        policy = dataclasses.replace(
            context.environment.policy(extra_hosts=_connector_hosts(context.connectors)),
            public_only=context.public_only,
            private_allowed=self.settings.allow_private_networks,
        )
        denied: Counter[str] = Counter()
        said: set[tuple[str, str]] = set()  # (target, reason) recorded as an event

        def on_decision(decision: EgressDecision) -> None:
            if decision.allowed:
                return
            target = f"{decision.host}:{decision.port}"
            denied[target] += 1
            # The first refusal of each kind for each target: the gateway refuses
            # Claude Code's own probes as well as an agent's attempts to reach out.
            if (target, decision.reason) not in said and len(said) < _DENIALS_RECORDED:
                said.add((target, decision.reason))
                detail = f" ({decision.detail})" if decision.detail else ""
                recorder.event_soon(
                    "egress.denied",
                    f"blocked {decision.method} to {target}: {decision.reason}{detail}",
                    host=decision.host,
                    port=decision.port,
                    deny_reason=decision.reason,
                    **({"detail": decision.detail} if decision.detail else {}),
                )

        # One proxy serves the setup script and the agent: the run's network level
        # holds for both.
        proxy = EgressProxy(policy, on_decision, gateway)
        socket_dir = Path(tempfile.mkdtemp(prefix="routined-"))
        egress_socket = socket_dir / "egress.sock"
        limit, _ = self._max_duration(context)
        deadline = asyncio.get_running_loop().time() + limit
        try:
            await proxy.start(egress_socket)
            if self._owner is not None:  # its folder stays routined's alone
                os.chown(egress_socket, self._owner, self._owner)
            await recorder.event(
                "environment.network",
                f"network {policy.describe()}",
                level=context.environment.network,
            )
            group = self._groups[claim.run_id]
            await self._set_up(
                context, run_dir, checkouts, egress_socket, revealed, recorder, deadline, group
            )
            await self._move(claim, RunStatus.PREPARING, RunStatus.RUNNING, "the agent is starting")
            ending = await self._run_agent(
                context,
                claim,
                checkouts,
                run_dir,
                recorder,
                egress_socket,
                revealed,
                deadline,
                group,
            )
        finally:
            await proxy.close()
            shutil.rmtree(socket_dir, ignore_errors=True)
            if denied:
                await recorder.flush()
                total = sum(denied.values())
                await recorder.event(
                    "egress.summary",
                    f"{total} requests blocked to {len(denied)} hosts",
                    blocked=dict(denied.most_common(_DENIALS_RECORDED)),
                )
        return checkouts, ending

    def _reveal(self, context: RunContext) -> dict[str, str]:
        names = context.environment.secret_names
        if not names:
            return {}
        try:
            with self.store.transaction(readonly=True) as session:
                return vault.reveal(
                    session, self.settings, account_id=context.account_id, names=names
                )
        except vault.VaultError as error:
            raise RunFailure("secrets_unavailable", str(error)) from None

    async def _set_up(
        self,
        context: RunContext,
        run_dir: Path,
        checkouts: list[workspace.Checkout],
        egress_socket: Path,
        revealed: dict[str, str],
        recorder: Recorder,
        deadline: float,
        group: resources.RunGroup,
    ) -> None:
        """Run the routine's setup script in the sandbox, or restore what it left last
        time (see `routined.environment`); a script that fails fails the run, as one
        that goes past a cap of the run does (named by the cap)."""
        environment = context.environment
        if environment.setup_script is None:
            return
        home = run_dir / "home"
        cache = SetupCache(
            cache_folder(self.settings.home, context.routine_id), self.settings.setup_cache_max_age
        )
        files = await self._cache_files(environment, checkouts[0], recorder)
        key = environment.cache_key(files)
        started = asyncio.get_running_loop().time()
        try:
            age = await cache.restore(key, home, now=self.clock())
        except OSError as error:
            await recorder.event(
                "setup.cache_failed", f"the cached result was not restored: {error}"
            )
            await workspace.remove(home)
            home.mkdir(mode=0o700)
            agent.seed_home(home, self._seed_file)
            age = None
        if age is not None:
            agent.seed_home(home, self._seed_file)  # the copy's seed may be older
            await workspace.hand_over([home], self._owner)
            took = asyncio.get_running_loop().time() - started
            await recorder.event(
                "setup.cached",
                f"the setup script's result from {_ago(age)} ago was restored in "
                f"{took:.2f} s; the script did not run",
                key=key,
                seconds=round(took, 3),
            )
            return
        await recorder.event("setup.started", "the setup script is running", key=key)
        script = run_dir / "private" / "setup.sh"
        script.write_text(environment.setup_script)
        await workspace.hand_over([home, script], self._owner)
        layout = self._layout(run_dir, checkouts, egress_socket, also_readable=[script])
        env = sandbox.agent_environment(
            home=home,
            tmp=run_dir / "tmp",
            extra={**self._author_env(), **environment.setup_variables(revealed)},
        )
        command = group.enter_command(
            [
                *self._sandboxed(context.run_id, layout, Path("/bin/bash")),
                str(script),
            ]
        )
        said = bytearray()
        enforcing = asyncio.create_task(self._enforce_caps(group, run_dir))
        try:
            async with asyncio.timeout_at(deadline) as scope:
                outcome = await run_script(command, env, said)
        except TimeoutError:
            if not scope.expired():
                raise
            await recorder.event(
                "setup.output",
                "the setup script was stopped at the run's max_duration",
                lines=output_lines(said),
            )
            raise RunFailure(
                "setup_failed",
                "the setup script was still running when the run reached its max_duration",
            ) from None
        except asyncio.CancelledError:
            recorder.event_soon(
                "setup.output",
                "the setup script was stopped: the run was cancelled",
                lines=output_lines(said),
            )
            raise
        finally:
            breach = await self._stop_enforcing(enforcing, group)
            await self._stop_sandbox(run_dir)
        if breach is not None:
            await recorder.event(
                "setup.output", f"the setup script was stopped: {breach}", lines=outcome.lines
            )
            raise RunFailure(breach.code, f"the setup script was stopped: {breach.message}")
        await recorder.event(
            "setup.output",
            f"the setup script exited with status {outcome.exit_code} "
            f"after {outcome.seconds:.1f} s",
            exit_code=outcome.exit_code,
            seconds=round(outcome.seconds, 3),
            lines=outcome.lines,
        )
        if outcome.exit_code != 0:
            last = next((line for line in reversed(outcome.lines) if line.strip()), "")
            # Redacted before it is cut: a secret cut in two would not be known by its part.
            last = recorder.redactor.text(last.strip())
            raise RunFailure(
                "setup_failed",
                f"the setup script exited with status {outcome.exit_code}"
                + (f": {last[:500]}" if last else "")
                + " (its output is in the run's events)",
            )
        try:
            kept_result = await cache.keep(
                key, home, now=self.clock(), seconds=outcome.seconds, redactor=recorder.redactor
            )
        except OSError as error:
            await recorder.event("setup.cache_failed", f"the result was not cached: {error}")
        else:
            if not kept_result:
                await recorder.event(
                    "setup.not_cached",
                    "the setup script left a secret's value in the home: its result is not "
                    "cached (no secret is kept in plain text), so the script runs every time",
                )

    def _layout(
        self,
        run_dir: Path,
        checkouts: list[workspace.Checkout],
        egress_socket: Path,
        *,
        also_readable: Sequence[Path] = (),
    ) -> sandbox.Layout:
        return sandbox.run_layout(
            run_dir=run_dir,
            cwd=checkouts[0].path,
            protected=[path for c in checkouts for path in workspace.protected_paths(c)],
            readable=[self._claude(), *self._borrowed(checkouts), *also_readable],
            masked=self._masked,
            egress_socket=egress_socket,
        )

    def _claude(self) -> Path:
        """Claude Code's binary; a run that cannot have it fails as the sandbox would,
        whether the setup script or the agent asks first."""
        try:
            return sandbox.claude_binary(self.settings.claude_path)
        except sandbox.SandboxUnavailable as error:
            raise RunFailure("sandbox_unavailable", str(error)) from error

    async def _prepare(self, context: RunContext, run_dir: Path) -> list[workspace.Checkout]:
        await self._check_sandbox()
        # Routined's alone (whatever the umask): only the sandbox user's own folders
        # in it are handed over, and only to that user.
        for private in (self.settings.runs_dir, run_dir):
            private.mkdir(mode=0o700, parents=True, exist_ok=True)
            private.chmod(0o700)
        for name in ("workspace", "home", "tmp", "private"):
            (run_dir / name).mkdir(mode=0o700, exist_ok=True)
        # A fresh home, with only a seed of Claude Code's config, so the session
        # skips first-start work.
        agent.seed_home(run_dir / "home", self._seed_file)
        await workspace.hand_over(
            [run_dir / "workspace", run_dir / "home", run_dir / "tmp"], self._owner
        )
        taken: set[str] = set()
        destinations = [
            run_dir / "workspace" / workspace.checkout_name(url, taken)
            for url in context.repositories
        ]
        fetched = await self._authenticated(context, context.repositories, "clone_failed")
        try:
            checkouts = list(
                await asyncio.gather(
                    *(
                        self._checkout(context, number, url, authenticated, destination)
                        for number, (url, authenticated, destination) in enumerate(
                            zip(context.repositories, fetched, destinations, strict=True)
                        )
                    )
                )
            )
        except workspace.GitError as error:
            raise RunFailure("clone_failed", str(error)) from error
        return checkouts

    async def _fetch_pull_head(
        self, context: RunContext, checkouts: list[workspace.Checkout], recorder: Recorder
    ) -> list[workspace.Checkout]:
        """Fetch the event's pull request as `pr/N` into the first repository (see
        docs/github.md). Not from a fork: its commits could reach the origin on a
        claude/ branch, where the repository's own workflows would run them. A fetch
        that fails is recorded; the run goes on without the branch."""
        pull = (context.event or {}).get("pull_request")
        if not pull or not checkouts:
            return checkouts
        number = pull["number"]
        if pull.get("from_fork", True):
            await recorder.event(
                "git.pull_request", f"pull request #{number} comes from a fork: not fetched"
            )
            return checkouts
        try:
            first, branch = await workspace.fetch_pull_head(checkouts[0], number, owner=self._owner)
        except workspace.GitError as error:
            await recorder.event("git.pull_request", f"pull request #{number} not fetched: {error}")
            return checkouts
        await recorder.event("git.pull_request", f"fetched pull request #{number} as {branch}")
        return [first, *checkouts[1:]]

    async def _checkout(
        self, context: RunContext, number: int, url: str, authenticated: str, destination: Path
    ) -> workspace.Checkout:
        """The standby checkout (brought up to the mirror if it has moved), else a clone
        made now."""
        owner = self._owner
        network: list[str] = []
        if context.public_only and workspace.local_repository(url) is None:
            try:
                network = await reach.git_pin(url, self.settings.allow_private_networks)
            except reach.Unreachable as error:
                raise RunFailure("clone_failed", f"{workspace.display_url(url)}: {error}") from None
        mirror = await workspace.sync_mirror(
            authenticated, self.settings.home / "mirrors", owner=owner, network=network
        )
        standby = self._standby(context, number, url)
        ready = await workspace.take_standby(mirror, standby, destination, owner=owner)
        checkout = ready or await workspace.clone(mirror, destination, owner=owner)
        return dataclasses.replace(checkout, network=tuple(network))

    async def _authenticated(
        self, context: RunContext, urls: Sequence[str], failure: str
    ) -> list[str]:
        """`urls`, those of repositories on GitHub with a token of the app's installation
        in them (minted now: it lives an hour). git gets it outside the sandbox only;
        the agent's checkouts name their origin without it.

        Never for a routine applied with an account's key: the app is the operator's,
        installed on the operator's repositories, and no account's key may act as it.
        Such a routine reaches GitHub as anyone does, or with its URL's own credentials.
        """
        if context.public_only:
            return list(urls)
        try:
            app = forge.GitHubApp.from_settings(self.settings)
        except forge.ForgeError as error:
            raise RunFailure(failure, str(error)) from None
        event = context.event or {}
        authenticated = []
        for url in urls:
            repository = forge.repository_of(url, self.settings.github_url)
            parts = urlsplit(url)
            own_credentials = parts.username not in (None, forge.TOKEN_USER)
            if (
                app is None
                or repository is None
                or parts.scheme not in ("http", "https")
                or own_credentials
            ):
                authenticated.append(url)  # SSH, the URL's own credentials, or not GitHub
                continue
            same = repository.lower() == str(event.get("repository", "")).lower()
            try:
                token = await app.installation_token(
                    repository, installation_id=event.get("installation_id") if same else None
                )
            except forge.ForgeError as error:
                raise RunFailure(failure, str(error)) from None
            authenticated.append(forge.with_token(url, token))
        return authenticated

    def _standby(self, context: RunContext, number: int, url: str) -> Path:
        key = hashlib.sha256(url.encode()).hexdigest()[:12]
        return self.settings.home / "standby" / context.routine_id / f"{number}-{key}"

    async def _prepare_standbys(self, context: RunContext) -> None:
        """Ready the next run's checkouts, after this run, off its critical path."""
        wanted = {self._standby(context, n, url) for n, url in enumerate(context.repositories)}
        folder = self.settings.home / "standby" / context.routine_id
        for stale in folder.glob("*") if folder.is_dir() else ():
            if stale not in wanted:
                await workspace.remove(stale)
        for number, url in enumerate(context.repositories):
            # The mirror as this run fetched it: the run that takes the checkout
            # fetches anyway, and takes it only if nothing moved.
            mirror = workspace.mirror_of(url, self.settings.home / "mirrors")
            try:
                await workspace.prepare_standby(
                    mirror, self._standby(context, number, url), owner=self._owner
                )
            except (workspace.GitError, OSError):
                log.warning("could not ready a standby checkout of %s", url, exc_info=True)

    async def _run_agent(
        self,
        context: RunContext,
        claim: Claim,
        checkouts: list[workspace.Checkout],
        run_dir: Path,
        recorder: Recorder,
        egress_socket: Path,
        revealed: dict[str, str],
        deadline: float,
        group: resources.RunGroup,
    ) -> Ending:
        """Run the session in its sandbox, within the run's limits; say how it ended.

        However the session ends, its sandbox is gone before this returns: nothing
        the agent started can touch the workspace while its work is delivered.
        """
        settings = self.settings
        if not settings.anthropic_api_key:
            raise RunFailure("agent_failed", "ANTHROPIC_API_KEY is not set for routined")
        claude = self._claude()
        env = sandbox.agent_environment(
            home=run_dir / "home",
            tmp=run_dir / "tmp",
            extra={**self._author_env(), **context.environment.agent_variables(revealed)},
        )
        launcher = run_dir / "private" / "launch-agent"
        command = context.agent.get("command")
        program = Path(command[0]) if command else claude
        layout = self._layout(run_dir, checkouts, egress_socket)
        sandbox.write_launcher(
            launcher,
            run_id=context.run_id,
            command=group.enter_command(self._sandboxed(context.run_id, layout, program)),
            keep=[*env, "ROUTINED_PROMPT_FILE"],
        )
        stderr: deque[str] = deque(maxlen=_STDERR_LINES)  # its last lines say why it died

        def on_stderr(line: str) -> None:
            stderr.append(line.rstrip()[: agent.STDERR_LINE_LIMIT])

        async def on_message(kind: str, data: dict[str, Any]) -> None:
            await recorder.event(kind, None, **data)

        prompt = agent.build_prompt(context.prompt, context.text, source=context.trigger_type)
        limits = context.limits
        ending = Ending()
        scope = asyncio.timeout_at(deadline)
        enforcing = asyncio.create_task(self._enforce_caps(group, run_dir))
        breach: resources.Breach | None = None
        try:
            async with scope:
                if command:
                    outcome = await agent.run_command(
                        command=command,
                        prompt=prompt,
                        launcher=launcher,
                        cwd=checkouts[0].path,
                        tmp=run_dir / "tmp",
                        env=env,
                        on_message=on_message,
                        on_stderr=on_stderr,
                        owner=self._owner,
                    )
                else:
                    outcome = await agent.run_session(
                        prompt=prompt,
                        system_addition=agent.system_prompt_addition(
                            routine=context.routine,
                            repositories=[
                                (c.path, rules.prefix, context.own_branch(number))
                                for number, (c, rules) in enumerate(
                                    zip(checkouts, context.push_rules, strict=True)
                                )
                            ],
                        ),
                        model=context.model,
                        launcher=launcher,
                        cwd=checkouts[0].path,
                        add_dirs=[c.path for c in checkouts[1:]],
                        env=env,
                        on_message=on_message,
                        on_stderr=on_stderr,
                        max_turns=limits.get("max_turns"),
                        max_cost_usd=limits.get("max_cost_usd"),
                        mcp_servers=context.connectors,
                    )
            ending.outcome = outcome
            if outcome.limit is not None:
                ending = Ending.failed(_budget_error(outcome, limits), outcome)
            elif outcome.error is not None:
                ending = Ending.failed(f"agent_failed: {outcome.error}", outcome)
            if outcome.agent_session_id:
                await asyncio.to_thread(self._note_agent_session, claim, outcome)
        except Exception as error:  # noqa: BLE001 - the SDK raises several kinds for a dead CLI
            said = " | ".join(recorder.redactor.text(line) for line in list(stderr)[-5:])
            ending = Ending.failed(
                f"agent_failed: {type(error).__name__}: {error}"
                + (f" (stderr: {said})" if said else "")
            )
            if isinstance(error, TimeoutError) and scope.expired():
                limit, source = self._max_duration(context)
                took = _ago(limit)
                ending = Ending(RunStatus.TIMED_OUT, f"timed_out: stopped after {took} ({source})")
        finally:
            breach = await self._stop_enforcing(enforcing, group)
            await self._stop_sandbox(run_dir)
        if breach is not None:
            # Whatever the agent said as it was stopped, the cap is why it ended.
            ending = Ending.failed(str(breach), ending.outcome)
        if ending.error is None and not command:
            await asyncio.to_thread(agent.learn_seed, run_dir / "home", self._seed_file)
        if stderr:
            await recorder.event(
                "agent.stderr", f"its last {len(stderr)} lines", lines=list(stderr)
            )
        return ending

    async def _deliver(
        self,
        context: RunContext,
        checkouts: list[workspace.Checkout],
        run_dir: Path,
        recorder: Recorder,
        group: resources.RunGroup,
    ) -> list[delivery.Pushed]:
        session_url, message, env = self._finishing(context)
        pushed: list[delivery.Pushed] = []
        # Fresh tokens: the ones the clones took may have expired during the session.
        origins = await self._authenticated(context, [c.url for c in checkouts], "delivery_failed")
        for number, (checkout, origin) in enumerate(zip(checkouts, origins, strict=True)):
            checkout = dataclasses.replace(checkout, url=origin)
            try:
                delivered = await delivery.deliver(
                    checkout,
                    sandboxed=self._finishing_sandbox(run_dir, checkouts, group, checkout.path),
                    env=env,
                    message=message,
                    session_url=session_url,
                    author_email=self.settings.git_author_email,
                    scratch=run_dir / "private" / f"delivery-{number}",
                    own_branch=context.own_branch(number),
                    suffix=short(context.run_id),
                    rules=context.push_rules[number],
                )
            except finishing.UnsafeObjects as error:
                raise RunFailure(error.code, str(error), pushed=pushed) from error
            except (workspace.GitError, TimeoutError) as error:
                raise RunFailure(
                    "delivery_failed", str(error) or "timed out", pushed=pushed
                ) from error
            if not delivered:
                await recorder.event("git.push", f"nothing new to push to {checkout.shown_url}")
            for item in delivered:
                await recorder.event(
                    "git.push", f"pushed {item.branch} ({item.source})", **item.as_dict()
                )
            pushed += delivered
        return pushed

    def _finishing(self, context: RunContext) -> tuple[str, str, dict[str, str]]:
        """The session's URL, the message of the commit that takes the agent's
        uncommitted work, and the environment the finishing script runs with."""
        session_url = runs.session_url(self.settings.public_url, context.session_id)
        message = (
            f"Work left uncommitted by routine {context.routine}\n\n{trailers.KEY}: {session_url}\n"
        )
        # A home of its own (the sandbox's private /tmp): the agent's home may
        # hold configuration planted for whatever runs after it.
        env = {
            "PATH": sandbox.SYSTEM_PATH,
            "HOME": "/tmp",  # noqa: S108 - the sandbox's own, empty
            "TMPDIR": "/tmp",  # noqa: S108
            "LANG": "C.UTF-8",
            **self._author_env(),
        }
        return session_url, message, env

    def _sandboxed(self, run_id: str, layout: sandbox.Layout, program: Path) -> list[str]:
        """The command line that runs `program` in a sandbox of the run, in its own user
        namespaces when routined is root (made at the first)."""
        namespaces = None
        if self._owner is not None:
            namespaces = self._namespaces.get(run_id)
            if namespaces is None:
                folder = self.settings.runs_dir / run_id / "private"
                namespaces = sandbox.run_namespaces(self.settings.sandbox_uid, folder)
                self._namespaces[run_id] = namespaces
        return sandbox.bwrap_command(
            layout, program, uid=self.settings.sandbox_uid, namespaces=namespaces
        )

    def _finishing_sandbox(
        self,
        run_dir: Path,
        checkouts: Sequence[workspace.Checkout],
        group: resources.RunGroup | None,
        cwd: Path,
    ) -> list[str]:
        """The command line that runs bash in the finishing sandbox (no network, the
        workspace only) in `cwd`, within the run's caps while its group lives."""
        layout = sandbox.finishing_layout(
            run_dir=run_dir, cwd=cwd, readable=self._borrowed(checkouts), masked=self._masked
        )
        command = self._sandboxed(run_dir.name, layout, Path("/bin/bash"))
        return group.enter_command(command) if group is not None else command

    async def _settle(
        self,
        context: RunContext | None,
        claim: Claim,
        run_dir: Path,
        recorder: Recorder,
        *,
        delivered: bool,
    ) -> None:
        """Leave the run's folder as it stays, before the run's end is recorded: the
        home keeps Claude Code's transcript; delivered work is on the origin;
        undelivered work is kept, safe to inspect. Done once, however the run ends."""
        if claim.run_id in self._settled:
            return
        self._settled.add(claim.run_id)
        try:
            await recorder.flush()
            await workspace.remove(run_dir / "tmp")
            if delivered:
                await workspace.remove(run_dir / "workspace")
            elif context is not None and (run_dir / "workspace").exists():
                await self._keep_work(context, claim, run_dir, recorder)
        except Exception:  # the run's end is still recorded; the sweep removes the folder
            log.exception("run %s: its work could not be kept", claim.run_id)
        # Whatever happened above: what stays must be safe.
        try:
            await self._leave_safe(claim.run_id, run_dir, self._redactor(claim))
        except Exception:
            log.exception("run %s: its folder could not be left safe; it is removed", claim.run_id)
            await workspace.remove(run_dir)

    async def _leave_safe(
        self, run_id: str, run_dir: Path, redactor: redaction.Redactor | None
    ) -> None:
        """What stays of a run holds no secret in plain text (its home keeps Claude
        Code's transcript, with every secret value redacted, and a later follow-up
        can still read it) and runs nothing for whoever looks at it."""
        # Sealed first: a link made a plain file holds its target as text, which is
        # then redacted with the rest.
        if (run_dir / "home").exists():
            try:
                await asyncio.shield(asyncio.to_thread(kept.seal, run_dir / "home"))
            except OSError:
                log.exception("run %s: its home could not be sealed; it is removed", run_id)
                await workspace.remove(run_dir / "home")
        for folder in (run_dir / "home", run_dir / "workspace"):
            if redactor:
                try:
                    await asyncio.shield(
                        asyncio.to_thread(tree_redaction.redact_tree, folder, redactor)
                    )
                except OSError as error:  # it may still hold a secret: it goes
                    log.warning("run %s: %s; its %s is removed", run_id, error, folder.name)
                    await workspace.remove(folder)
        (run_dir / "private").mkdir(mode=0o700, parents=True, exist_ok=True)
        (run_dir / "private" / SETTLED).touch()

    async def settle_abandoned(self, run_id: str) -> None:
        """Leave safe the folder of a run that ended without its worker (lost, after a
        crash), as `_settle` would have: its workspace kept as a sealed tree (its work
        cannot be packed any more), its home sealed and redacted, or removed when its
        secrets cannot be known."""
        run_dir = self.settings.runs_dir / run_id
        private = run_dir / "private"
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        # One worker at a time, of those sharing this home.
        descriptor = os.open(private / ".settling", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return
        try:
            await self._settle_abandoned(run_id, run_dir)
        finally:
            os.close(descriptor)

    async def _settle_abandoned(self, run_id: str, run_dir: Path) -> None:
        if (run_dir / "private" / SETTLED).exists():
            return
        if (run_dir / "workspace").exists():
            with contextlib.suppress(OSError):
                await kept.keep(
                    run_dir, [], sandboxed=lambda _: [], env={}, message="", session_url=""
                )
        try:
            redactor = await asyncio.to_thread(self._redactor_of, run_id)
        except (LookupError, vault.VaultError):
            log.warning("run %s: its secrets cannot be read; its home is removed", run_id)
            await workspace.remove(run_dir / "home")
            redactor = None
        await self._leave_safe(run_id, run_dir, redactor)

    def _redactor_of(self, run_id: str) -> redaction.Redactor:
        """What redacts a run's secrets, from the store (LookupError: it is not there)."""
        with self.store.transaction(readonly=True) as session:
            found = session.execute(
                select(Routine.account_id, Routine.environment).join(Run).where(Run.id == run_id)
            ).first()
            if found is None:
                raise LookupError(run_id)
            names = Environment.from_config(found.environment or {}).secret_names
            if not names:
                return _NO_SECRETS
            return redaction.Redactor(
                vault.reveal(session, self.settings, account_id=found.account_id, names=names)
            )

    async def _keep_work(
        self, context: RunContext, claim: Claim, run_dir: Path, recorder: Recorder
    ) -> None:
        """What the agent left, kept safe to inspect (see `routined.kept`) since it was
        not delivered; each kept repository is said in an event."""
        checkouts = self._checkouts.get(claim.run_id, [])
        group = self._groups.get(claim.run_id)
        session_url, message, env = self._finishing(context)
        try:
            kept_work = await kept.keep(
                run_dir,
                checkouts,
                sandboxed=lambda cwd: self._finishing_sandbox(run_dir, checkouts, group, cwd),
                env=env,
                message=message,
                session_url=session_url,
            )
        except OSError:
            log.exception("run %s: its workspace could be neither sealed nor removed", claim.run_id)
            return
        for item in kept_work:
            said = ", ".join(item.missing) or "its work is in the bundle"
            await recorder.event(
                "files.kept",
                f"kept {item.repository} for inspection ({said}); `routined inspect` shows how",
                **item.as_dict(run_dir),
            )

    @staticmethod
    def _borrowed(checkouts: Sequence[workspace.Checkout]) -> list[Path]:
        """The mirrors' objects the checkouts read, each once."""
        return list(dict.fromkeys(c.mirror_objects for c in checkouts))

    @functools.cached_property
    def _masked(self) -> list[Path]:
        """What a sandbox must not show even where a system folder would: routined's
        home, the service user's home, secret files (the GitHub App's key among them)
        and the store's file."""
        masked = [self.settings.home, Path.home()]
        for setting in SETTINGS:
            named = os.environ.get(setting.name + "_FILE") if setting.secret else None
            if named:
                masked.append(Path(named).absolute())
        if self.settings.github_private_key_file is not None:
            masked.append(self.settings.github_private_key_file)
        database = self.store.url.database
        if self.store.is_sqlite and database and database != ":memory:":
            masked.append(Path(database).absolute().parent)
        return [path for path in masked if path != Path("/")]

    @property
    def _owner(self) -> int | None:
        """Who must own what the sandbox may change (None: routined's own user)."""
        return sandbox.owner(self.settings.sandbox_uid)

    @property
    def _seed_file(self) -> Path:
        return self.settings.home / "agent-seed.json"

    async def _cache_files(
        self, environment: Environment, checkout: workspace.Checkout, recorder: Recorder
    ) -> str:
        """What the first repository, as cloned (before any script ran), has at the
        routine's `setup_cache_files`; a path it does not have is said, since the cache
        cannot follow it."""
        if not environment.cache_files:
            return ""
        try:
            files = await workspace.committed(checkout, environment.cache_files)
        except workspace.GitError as error:
            raise RunFailure("setup_failed", f"setup_cache_files: {error}") from None
        found = [entry.split("\t", 1)[1] for entry in files.split("\0") if "\t" in entry]
        missing = [
            path
            for path in environment.cache_files
            if not any(name == path or name.startswith(f"{path}/") for name in found)
        ]
        if missing:
            await recorder.event(
                "setup.cache_files_missing",
                f"setup_cache_files: the repository has no {', '.join(missing)}; "
                "the cache cannot follow what is not there",
                paths=missing,
            )
        return files

    def _author_env(self) -> dict[str, str]:
        name, email = self.settings.git_author_name, self.settings.git_author_email
        return {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }

    # -- store helpers ----------------------------------------------------

    def _load(self, run_id: str) -> RunContext:
        with self.store.transaction(readonly=True) as session:
            run = session.get(Run, run_id)
            if run is None:
                raise RunFailure("internal_error", f"run {run_id} disappeared")
            routine = session.get(Routine, run.routine_id)
            if routine is None:
                raise RunFailure("internal_error", f"routine of run {run_id} disappeared")
            repositories = session.scalars(
                select(Repository)
                .where(Repository.routine_id == routine.id)
                .order_by(Repository.position)
            ).all()
            trigger = session.get(Trigger, run.trigger_id) if run.trigger_id else None
            return RunContext(
                run_id=run.id,
                session_id=run.session_id,
                routine_id=routine.id,
                account_id=routine.account_id,
                routine=routine.name,
                prompt=routine.prompt,
                model=run.model,
                text=run.text,
                trigger_type=run.trigger_type,
                repositories=tuple(r.url for r in repositories),
                gate=trigger.config.get("gate") if trigger is not None else None,
                event=run.context,
                pull_requests=routine.pull_requests,
                comment=routine.comment,
                push_rules=tuple(
                    delivery.PushRules(
                        prefix=r.branch_prefix,
                        unrestricted=r.allow_unrestricted_push,
                        force=r.allow_force_push,
                        default_branch=r.allow_default_branch_push,
                    )
                    for r in repositories
                ),
                environment=Environment.from_config(routine.environment or {}),
                limits=dict(routine.limits or {}),
                agent=dict(routine.agent or {}),
                connectors=dict(routine.connectors or {}),
                public_only=routine.public_only,
            )

    async def _move(
        self,
        claim: Claim,
        expected: RunStatus,
        to: RunStatus,
        reason: str,
        *,
        changes: dict[str, Any] | None = None,
    ) -> None:
        """Make the move (with `changes` to the run) in one transaction."""
        reason = self._redactor(claim).text(reason)
        changes = self._redactor(claim).data(changes)

        def write() -> None:
            with self.store.transaction() as session:
                runs.transition(
                    session,
                    claim.run_id,
                    expected,
                    to,
                    now=self.clock(),
                    reason=reason,
                    lease=claim.lease,
                    changes=changes,
                )

        await asyncio.to_thread(write)

    def _max_duration(self, context: RunContext) -> tuple[float, str]:
        """How long the run may take, in seconds, and which setting says so."""
        if context.limits.get("max_duration"):
            return float(context.limits["max_duration"]), "limits.max_duration"
        return self.settings.run_timeout, "ROUTINED_RUN_TIMEOUT"

    async def _make_group(self, context: RunContext) -> resources.RunGroup:
        """The run's resource group, with its routine's caps (the server's defaults for
        what it leaves out)."""
        try:
            caps = resources.Caps.of(self.settings, context.limits)
            if context.public_only:
                # An account's routine gets no more of the machine than the operator's
                # defaults give, whatever its file asks.
                caps = caps.at_most(resources.Caps.of(self.settings, {}))
            return await asyncio.to_thread(resources.host().group, context.run_id, caps)
        except (resources.ResourceError, ValueError) as error:
            raise RunFailure("sandbox_unavailable", str(error)) from None

    async def _enforce_caps(self, group: resources.RunGroup, run_dir: Path) -> resources.Breach:
        """Wait until the run goes past a cap; then its sandbox ends at once."""
        breach = await resources.watch(group, _writable(run_dir))
        await sandbox.stop(f"{run_dir}/")
        return breach

    @staticmethod
    async def _stop_enforcing(
        enforcing: asyncio.Task[resources.Breach], group: resources.RunGroup
    ) -> resources.Breach | None:
        """The cap the run went past, if any: the watcher's, or the kernel's counters
        (a process killed at the memory cap just before the sandbox ended)."""
        if not enforcing.done():
            enforcing.cancel()
        try:
            return await enforcing
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:  # measuring failed; the kernel's counters still say
            log.exception("watching the caps of %s failed", group.name)
        return group.breach()

    async def _stop_sandbox(self, run_dir: Path) -> None:
        """End every process of the run's sandbox; then nothing it made keeps a
        set-user-id or set-group-id bit."""
        await sandbox.stop(f"{run_dir}/")
        await asyncio.to_thread(sandbox.strip_privilege_bits, _writable(run_dir))

    def _redactor(self, claim: Claim) -> redaction.Redactor:
        return self._redactors.get(claim.run_id, _NO_SECRETS)

    async def _end_failed(
        self, claim: Claim, error: str, pushed: Sequence[delivery.Pushed] = ()
    ) -> None:
        redactor = self._redactor(claim)
        error = redactor.text(error)

        def write() -> None:
            with self.store.transaction() as session:
                if runs.fail(session, claim, now=self.clock(), error=error) and pushed:
                    run = session.get(Run, claim.run_id)
                    if run is not None:
                        run.branches = redactor.data([p.as_dict() for p in pushed])

        try:
            await asyncio.shield(asyncio.to_thread(write))
        except Exception:
            # The store is unreachable: the lost-run sweep will end it later.
            log.exception("could not record the failure of run %s", claim.run_id)

    async def _end_cancelled(self, claim: Claim, reason: str) -> None:
        reason = self._redactor(claim).text(reason)

        def write() -> None:
            with self.store.transaction() as session:
                if not runs.end_cancelled(session, claim, now=self.clock(), reason=reason):
                    log.warning("run %s could not be marked cancelled", claim.run_id)

        try:
            await asyncio.shield(asyncio.to_thread(write))
        except Exception:
            # The store is unreachable: the lost-run sweep will end it later.
            log.exception("could not record the cancellation of run %s", claim.run_id)

    def _note_agent_session(self, claim: Claim, outcome: agent.SessionOutcome) -> None:
        with self.store.transaction() as session:
            run = session.get(Run, claim.run_id)
            if run is not None and run.lease == claim.lease:
                run.agent_session_id = outcome.agent_session_id

    async def _check_sandbox(self) -> None:
        # Once per worker: a machine that cannot sandbox fails every run the same way.
        if self._sandbox_checked is None:
            self._sandbox_checked = asyncio.ensure_future(
                sandbox.check_available(self.settings.sandbox_uid)
            )
        try:
            await asyncio.shield(self._sandbox_checked)
        except sandbox.SandboxUnavailable as error:
            raise RunFailure("sandbox_unavailable", str(error)) from error


def _writable(run_dir: Path) -> list[Path]:
    """The run's folders its sandbox may change."""
    return [run_dir / "workspace", run_dir / "home", run_dir / "tmp"]


def _ago(seconds: float) -> str:
    return schedule.format_duration(timedelta(seconds=int(seconds)))


def _budget_error(outcome: agent.SessionOutcome, limits: dict[str, Any]) -> str:
    if outcome.limit == "max_turns":
        return (
            f"budget: stopped at max_turns {limits.get('max_turns')} ({outcome.turns} turns taken)"
        )
    spent = f"${outcome.cost_usd:.4f}" if outcome.cost_usd is not None else "unknown"
    return f"budget: stopped at max_cost_usd {limits.get('max_cost_usd')} ({spent} spent)"


def _connector_hosts(connectors: dict[str, Any]) -> list[str]:
    """The hosts of the routine's remote MCP servers: the routine asked for them, so its
    network level lets them through."""
    hosts = []
    for definition in connectors.values():
        parts = urlsplit(str(definition.get("url") or ""))
        if parts.hostname:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            hosts.append(f"{host}:{parts.port}" if parts.port else host)
    return hosts


def _pull_request_body(context: RunContext, session_url: str) -> str:
    event = context.event or {}
    started = (
        f"It was started by the GitHub event `{event['event']}` "
        f"(delivery {event['delivery_id']}).\n"
        if event.get("event")
        else f"It was started by a {context.trigger_type} trigger.\n"
    )
    return (
        f"Opened by routined for the routine **{context.routine}**.\n\n"
        f"Session: {session_url}\n\n{started}"
    )
