"""A run in flight: the routine as it was loaded, typed, and what the run holds so far.

`RunSpec` is the routine's row read once at the claim (limits, agent, gate,
environment, GitHub context as dataclasses, never dicts read by key); `Host` is what
one worker shares between its runs; `Scope` is one run's: its folder, checkouts,
deadline, secrets, caps group and the ledger that records it. Every stage takes the
scope and says in it what it changed.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select

from routined import workspace
from routined.config import SETTINGS, Settings
from routined.db import Store
from routined.environment import Environment
from routined.ids import short
from routined.models import Repository, Routine, Run, Trigger
from routined.runs import push
from routined.runs.failure import Failure, RunFailure
from routined.runs.large_files import DEFAULT_MAX_FILE_MB
from routined.runs.ledger import Ledger
from routined.sandbox import bubblewrap, resources
from routined.secrets import redaction
from routined.timeutil import Clock


@dataclass(frozen=True)
class Limits:
    """The routine's `limits`, as stored (see `routined.routines.spec.LimitsSpec`)."""

    max_duration: float | None = None  # seconds
    max_turns: int | None = None
    max_cost_usd: float | None = None
    # The sandbox's caps (`routined.sandbox.resources.Caps`), as stored: sizes in bytes.
    memory: int | str | None = None
    pids: int | None = None
    disk: int | str | None = None
    cpu: float | None = None
    max_file_mb: int = DEFAULT_MAX_FILE_MB  # each file the work adds, at most

    @classmethod
    def of(cls, stored: Mapping[str, Any] | None) -> Limits:
        stored = stored or {}
        names = ("max_duration", "max_turns", "max_cost_usd", "memory", "pids", "disk", "cpu")
        max_file_mb = stored.get("max_file_mb") or DEFAULT_MAX_FILE_MB
        return cls(**{name: stored.get(name) for name in names}, max_file_mb=max_file_mb)

    def caps(self) -> dict[str, Any]:
        """The caps as `resources.Caps.of` reads them: only those the routine gives."""
        given = {"memory": self.memory, "pids": self.pids, "disk": self.disk, "cpu": self.cpu}
        return {name: value for name, value in given.items() if value is not None}


@dataclass(frozen=True)
class AgentSpec:
    """Claude Code (no command), or any agent CLI run as `command`."""

    command: tuple[str, ...] | None = None

    @classmethod
    def of(cls, stored: Mapping[str, Any] | None) -> AgentSpec:
        command = (stored or {}).get("command")
        return cls(tuple(command) if command else None)


@dataclass(frozen=True)
class Gate:
    """The trigger's triage gate: a rule a small model checks the fire's text against."""

    prompt: str
    on_error: Literal["open", "closed"] = "closed"

    @classmethod
    def of(cls, stored: Mapping[str, Any] | None) -> Gate | None:
        if stored is None:
            return None
        return cls(prompt=stored["prompt"], on_error=stored.get("on_error", "closed"))


@dataclass(frozen=True)
class PullRequest:
    number: int
    from_fork: bool = True  # a fork's commits must not reach the origin


@dataclass(frozen=True)
class GitHubContext:
    """The GitHub event that started the run (see `routined.github.matcher.context`), and what
    the routine asks to do on GitHub afterwards."""

    event: str | None = None
    delivery_id: str | None = None
    repository: str | None = None
    installation_id: int | None = None
    pull_request: PullRequest | None = None
    comment_on: int | None = None  # the pull request or issue that started it
    pull_requests: bool = False  # open one for each pushed branch
    comment: bool = False  # comment the session's link on `comment_on`

    @classmethod
    def of(
        cls, stored: Mapping[str, Any] | None, *, pull_requests: bool, comment: bool
    ) -> GitHubContext:
        stored = stored or {}
        pull = stored.get("pull_request")
        subject = stored.get("comment_on")
        return cls(
            event=stored.get("event"),
            delivery_id=stored.get("delivery_id"),
            repository=stored.get("repository"),
            installation_id=stored.get("installation_id"),
            pull_request=(
                PullRequest(pull["number"], pull.get("from_fork", True)) if pull else None
            ),
            comment_on=subject["number"] if subject else None,
            pull_requests=pull_requests,
            comment=comment,
        )

    def installation_for(self, repository: str | None) -> int | None:
        """The event's installation, for the event's own repository only."""
        return self.installation_id if repository == self.repository else None


@dataclass(frozen=True)
class RunSpec:
    """The run and its routine as loaded at the claim."""

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
    push_rules: tuple[push.PushRules, ...]  # one for each repository, in order
    gate: Gate | None = None
    github: GitHubContext = field(default_factory=GitHubContext)
    environment: Environment = field(default_factory=Environment)
    limits: Limits = field(default_factory=Limits)
    agent: AgentSpec = field(default_factory=AgentSpec)
    connectors: dict[str, Any] = field(default_factory=dict)  # mcpServers entries
    # Applied with an account's key: every connection made for it goes to public
    # addresses only (`routined.reach`), judged again as it is made.
    public_only: bool = False

    def own_branch(self, number: int = 0) -> str:
        """The branch the agent's uncommitted work goes to in repository `number`."""
        prefix = self.push_rules[number].prefix
        return f"{prefix}{push.slug(self.routine)}-{short(self.run_id)}"


def load(store: Store, run_id: str) -> RunSpec:
    """The run's spec, read in one transaction."""
    with store.transaction(readonly=True) as session:
        run = session.get(Run, run_id)
        if run is None:
            raise RunFailure(Failure.INTERNAL_ERROR, f"run {run_id} disappeared")
        routine = session.get(Routine, run.routine_id)
        if routine is None:
            raise RunFailure(Failure.INTERNAL_ERROR, f"routine of run {run_id} disappeared")
        repositories = session.scalars(
            select(Repository)
            .where(Repository.routine_id == routine.id)
            .order_by(Repository.position)
        ).all()
        trigger = session.get(Trigger, run.trigger_id) if run.trigger_id else None
        return RunSpec(
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
            gate=Gate.of(trigger.config.get("gate") if trigger is not None else None),
            github=GitHubContext.of(
                run.context, pull_requests=routine.pull_requests, comment=routine.comment
            ),
            push_rules=tuple(
                push.PushRules(
                    prefix=r.branch_prefix,
                    unrestricted=r.allow_unrestricted_push,
                    force=r.allow_force_push,
                    default_branch=r.allow_default_branch_push,
                )
                for r in repositories
            ),
            environment=Environment.from_config(routine.environment or {}),
            limits=Limits.of(routine.limits),
            agent=AgentSpec.of(routine.agent),
            connectors=dict(routine.connectors or {}),
            public_only=routine.public_only,
        )


class Host:
    """What one worker's runs share: settings, store, clock, and the machine's facts."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        clock: Clock,
        sandboxes: bubblewrap.Sandboxes | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        # Bubblewrap and cgroups, unless a test stands in for them.
        self.sandboxes = sandboxes or bubblewrap.Bubblewrap(settings.sandbox_uid)
        self._sandbox_checked: asyncio.Task[None] | None = None

    @functools.cached_property
    def masked(self) -> list[Path]:
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
    def owner(self) -> int | None:
        """Who must own what the sandbox may change (None: routined's own user)."""
        return self.sandboxes.owner

    @property
    def seed_file(self) -> Path:
        return self.settings.home / "agent-seed.json"

    def author_env(self) -> dict[str, str]:
        name, email = self.settings.git_author_name, self.settings.git_author_email
        return {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }

    async def check_sandbox(self) -> None:
        # Once per worker: a machine that cannot sandbox fails every run the same way.
        if self._sandbox_checked is None:
            self._sandbox_checked = asyncio.ensure_future(self.sandboxes.check())
        try:
            await asyncio.shield(self._sandbox_checked)
        except bubblewrap.SandboxUnavailable as error:
            raise RunFailure(Failure.SANDBOX_UNAVAILABLE, str(error)) from error


@dataclass
class Scope:
    """One run in flight; the stages fill in what they make."""

    host: Host
    spec: RunSpec
    run_dir: Path
    ledger: Ledger
    checkouts: list[workspace.Checkout] = field(default_factory=list)
    revealed: dict[str, str] = field(default_factory=dict)  # the secrets' values
    group: resources.RunGroup | None = None  # its caps (`routined.sandbox.resources`)
    egress_socket: Path | None = None  # the proxy every connection goes through
    deadline: float = 0.0  # the loop's time at max_duration
    # The run's own user namespaces, when routined is root (see `sandbox`).
    namespaces: bubblewrap.UserNamespaces | None = None

    @property
    def settings(self) -> Settings:
        return self.host.settings

    @property
    def redactor(self) -> redaction.Redactor:
        return self.ledger.redactor

    def max_duration(self) -> tuple[float, str]:
        """How long the run may take, in seconds, and which setting says so."""
        if self.spec.limits.max_duration:
            return float(self.spec.limits.max_duration), "limits.max_duration"
        return self.settings.run_timeout, "ROUTINED_RUN_TIMEOUT"
