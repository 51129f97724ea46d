"""The fast harness for a run's stages: the real worker, executor and ledger, the store
(SQLite, in the settings' home), git with bare origins and the egress proxy; an agent
CLI (`agent: {command: …}`) where Claude Code would run, and
`routined.testing.sandbox.Unwalled` where bubblewrap and the run's cgroups would be.
A whole run takes a fraction of a second.

What only the real sandbox and Claude Code can show (the walls, the agent's own
behaviour) stays in the end-to-end files (tests/test_agent_runs.py and the like).
Where a test must wait for the agent, it waits on a named pipe the agent writes to
(`Fifo`), never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from routined import runs
from routined.config import Settings
from routined.db import Store
from routined.models import Routine, Run, RunEvent
from routined.routines.apply import apply
from routined.routines.load import load
from routined.runs.executor import Executor
from routined.runs.worker import Worker
from routined.sandbox import resources
from routined.testing.sandbox import Sandboxed, Unwalled
from routined.timeutil import utcnow

# A cap the stand-in's group can report as reached (`Unwalled(breach=CAP)`).
CAP = resources.Breach("out_of_memory", "a process was killed at the run's memory cap of 1.0 GiB")


def sandboxes_of(settings: Settings) -> Unwalled:
    """The stand-in sandboxes for runs of these settings, their scratch beside the home."""
    return Unwalled(settings.home.parent / "sandboxes")


def open_store(settings: Settings) -> Store:
    """The settings' own store (as `routined` commands given them would use), migrated."""
    store = Store(settings.database_url.reveal())
    store.migrate()
    return store


def apply_file(store: Store, path: Path) -> None:
    """What `routined apply -f PATH` does, in this process."""
    now = utcnow()
    with store.transaction() as session:
        apply(session, load(path, now=now), now=now)


def write_routine(
    tmp_path: Path, origin: Path | str, *, name: str = "docs-nightly", prompt: str, extra: str
) -> Path:
    """A routines file with one routine on `origin`, `extra` YAML lines under it."""
    path = tmp_path / "routines.yaml"
    path.write_text(
        "routines:\n"
        f"  - name: {name}\n"
        f"    prompt: {json.dumps(prompt)}\n"
        "    repositories:\n"
        f"      - url: {origin}\n" + extra
    )
    return path


def agent(script: str) -> str:
    """The YAML line that makes `script` (bash) the routine's agent."""
    return f"    agent: {{command: [bash, -c, {json.dumps(script)}]}}\n"


def queue(
    store: Store,
    routine_name: str = "docs-nightly",
    text: str | None = None,
    *,
    context: dict[str, object] | None = None,
) -> str:
    """A manual run of the routine, queued (with a GitHub event's `context`); its id."""
    with store.transaction() as session:
        routine = session.scalar(select(Routine).where(Routine.name == routine_name))
        assert routine is not None
        run = runs.create(
            session, routine, trigger_type="manual", trigger_id=None, text=text, now=utcnow(),
            reason="test",
        )  # fmt: skip
        run.context = context
        return run.id


def worker(store: Store, settings: Settings, sandboxes: Unwalled) -> Worker:
    """A worker whose executor runs its runs in `sandboxes`."""
    found = Worker(store, settings)
    found.executor = Executor(store, settings, found.clock, sandboxes=sandboxes)
    return found


async def execute(
    store: Store, settings: Settings, run_id: str, sandboxes: Unwalled | None = None
) -> Run:
    """Claim the queued run as a worker does and carry it to its end; the run as it
    ended. (A worker's own part, its heartbeat and the cancel requests it passes on, is
    exercised through `worker` by the tests that cancel.)"""
    with store.transaction() as session:
        claim = runs.claim(session, "stage-tests", now=utcnow(), run_id=run_id)
    assert claim is not None
    executor = Executor(store, settings, utcnow, sandboxes=sandboxes or sandboxes_of(settings))
    try:
        await executor.execute(claim, standby=False)
    finally:
        await executor.close()
    return ended(store, run_id)


def ended(store: Store, run_id: str) -> Run:
    with store.transaction(readonly=True) as session:
        return session.get_one(Run, run_id)


def events(store: Store, run_id: str) -> list[RunEvent]:
    with store.transaction(readonly=True) as session:
        return list(
            session.scalars(
                select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.seq)
            )
        )


@dataclass
class Stages:
    """One routine, `docs-nightly`, on `origin`; its runs executed in `sandboxes`."""

    settings: Settings
    store: Store
    origin: Path
    tmp_path: Path
    sandboxes: Unwalled
    context: dict[str, object] = field(default_factory=dict)  # a GitHub event's

    def routine(self, extra: str = "", *, prompt: str = "Work.") -> None:
        path = write_routine(self.tmp_path, self.origin, prompt=prompt, extra=extra)
        apply_file(self.store, path)

    def queue(self, text: str | None = None) -> str:
        return queue(self.store, text=text, context=self.context or None)

    async def run(self, run_id: str | None = None) -> Run:
        """Run the queued run (or a new one) to its end."""
        return await execute(self.store, self.settings, run_id or self.queue(), self.sandboxes)

    def events(self, run_id: str) -> list[RunEvent]:
        return events(self.store, run_id)

    def moves(self, run_id: str) -> list[tuple[str | None, str | None, str | None]]:
        """Each change of the run's state: from, to, and why."""
        return [
            (e.from_status, e.to_status, e.reason)
            for e in self.events(run_id)
            if e.kind == "status"
        ]

    def said(self, run_id: str, kind: str) -> list[str | None]:
        """The reasons of the run's events of `kind`."""
        return [e.reason for e in self.events(run_id) if e.kind == kind]

    def run_dir(self, run_id: str) -> Path:
        return self.settings.runs_dir / run_id

    def asked(self) -> list[Sandboxed]:
        """The sandboxes the stages asked for that had the network: the setup script's
        and the agent's (the finishing scripts have none)."""
        return [command for command in self.sandboxes.commands if command.networked]


def stages_for(settings: Settings, origin: Path, tmp_path: Path) -> Stages:
    return Stages(
        settings, open_store(settings), origin, tmp_path, Unwalled(tmp_path / "sandboxes")
    )


class Fifo:
    """A named pipe between a test and its agent: the agent says a line with
    `echo … > PATH` and the test waits for it (`said`); the test says one (`say`) and
    the agent waits for it with `read -r _ < PATH`. The test holds it open both ways,
    so neither side blocks on opening it, and a wait has a deadline."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        weakref.finalize(self, os.close, self._fd)

    async def said(self, seconds: float = 30) -> str:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(self._fd, ready)
        try:
            async with asyncio.timeout(seconds):
                await readable
        finally:
            loop.remove_reader(self._fd)
        return os.read(self._fd, 4096).decode().strip()

    def say(self, line: str) -> None:
        os.write(self._fd, f"{line}\n".encode())


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (an unreaped zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def delivered(run: Run) -> str:
    """The one branch the run delivered."""
    [pushed] = run.branches
    branch: str = pushed["branch"]
    return branch
