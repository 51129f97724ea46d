"""The worker loop: it keeps going through store errors and ends runs it cannot do."""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from routined import runs
from routined.config import Settings
from routined.db import Store
from routined.ids import new_id
from routined.models import Repository, Routine, Run, RunEvent
from routined.runs import confine, ledger
from routined.runs import worker as worker_module
from routined.runs.failure import RunFailure
from routined.runs.worker import Worker
from routined.sandbox import bubblewrap
from routined.secrets import vault
from routined.timeutil import utcnow
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio


def queue_unclonable(store: Store, tmp_path: Path, name: str = "gone") -> str:
    """A run whose repository is not there: it fails at once, without an agent."""
    with store.transaction() as session:
        routine = Routine(
            id=new_id("rtn"), name=name, prompt="x", created_at=utcnow(), updated_at=utcnow()
        )
        routine.repositories = [Repository(position=0, url=str(tmp_path / "missing.git"))]
        session.add(routine)
        session.flush()
        run = runs.create(
            session, routine, trigger_type="manual", trigger_id=None, text=None, now=utcnow(),
            reason="test",
        )  # fmt: skip
        return run.id


def status(store: Store, run_id: str) -> tuple[str, str | None]:
    with store.transaction() as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run.status, run.error


async def test_the_loop_survives_store_errors_and_goes_on(
    store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = queue_unclonable(store, tmp_path)
    real_claim = runs.claim
    failures: list[int] = []

    def flaky_claim(*args: object, **kwargs: object) -> runs.Claim | None:
        if not failures:
            failures.append(1)
            raise OperationalError("SELECT …", {}, Exception("database is locked"))
        return real_claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runs, "claim", flaky_claim)
    worker = Worker(store, settings, retry_after_error=0.01)
    stop = asyncio.Event()
    looping = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: status(store, run_id)[0] in runs.TERMINAL)
    finally:
        stop.set()
        await looping
    assert failures == [1]
    state, error = status(store, run_id)
    assert state == "failed" and error is not None and error.startswith("clone_failed:")


async def test_a_run_taken_by_another_worker_is_left_alone(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    run_id = queue_unclonable(store, tmp_path)
    with store.transaction() as session:
        assert runs.claim(session, "elsewhere", now=utcnow(), run_id=run_id) is not None
    assert await Worker(store, settings).run_claimed(run_id) is False
    with store.transaction() as session:
        assert session.scalar(select(Run.worker_id).where(Run.id == run_id)) == "elsewhere"


def run_folder(settings: Settings, run_id: str, *, changed: datetime | None = None) -> Path:
    folder = settings.runs_dir / run_id
    (folder / "home").mkdir(parents=True)
    (folder / "home" / "transcript.jsonl").write_text("{}\n")
    if changed is not None:
        os.utime(folder, (changed.timestamp(), changed.timestamp()))
    return folder


def ended_at(store: Store, tmp_path: Path, moment: datetime) -> str:
    """A run cancelled while queued at `moment`: ended, with nothing else done."""
    run_id = queue_unclonable(store, tmp_path, name=f"ended-{new_id('rtn')[-8:]}")
    with store.transaction() as session:
        assert runs.cancel(session, run_id, now=moment, reason="test") is not None
    return run_id


def event_kinds(store: Store, run_id: str) -> list[tuple[str, str | None]]:
    with store.transaction(readonly=True) as session:
        rows = session.execute(
            select(RunEvent.kind, RunEvent.reason)
            .where(RunEvent.run_id == run_id)
            .order_by(RunEvent.seq)
        )
        return [(kind, reason) for kind, reason in rows]


async def test_folders_of_runs_that_ended_long_enough_ago_are_removed_and_that_is_recorded(
    store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    settings = replace(settings, run_files_max_age=3600)
    monkeypatch.setattr(worker_module, "_GRACE", 0.0)  # the stopped removal below is old
    long_ago = ended_at(store, tmp_path, now - timedelta(hours=2))
    lately = ended_at(store, tmp_path, now - timedelta(minutes=10))
    queued = queue_unclonable(store, tmp_path)
    forgotten_long_ago = new_id("run")  # its routine was removed, and its runs with it
    forgotten_lately = new_id("run")
    folders = {
        long_ago: run_folder(settings, long_ago),
        lately: run_folder(settings, lately),
        queued: run_folder(settings, queued, changed=now - timedelta(days=30)),
        forgotten_long_ago: run_folder(
            settings, forgotten_long_ago, changed=now - timedelta(hours=2)
        ),
        forgotten_lately: run_folder(
            settings, forgotten_lately, changed=now - timedelta(minutes=10)
        ),
    }
    not_a_run = settings.runs_dir / "notes"
    not_a_run.mkdir()
    os.utime(not_a_run, (0, 0))
    halfway = settings.runs_dir / f".removing-{new_id('run')}-0a1b2c3d"  # a stopped removal
    (halfway / "home").mkdir(parents=True)

    removed = await Worker(store, settings, clock=lambda: now).remove_expired_files()

    assert sorted(removed) == sorted([long_ago, forgotten_long_ago])
    assert sorted(run_id for run_id, folder in folders.items() if folder.exists()) == sorted(
        [lately, queued, forgotten_lately]
    )
    assert not_a_run.exists() and not halfway.exists()
    assert sorted(path.name for path in settings.runs_dir.iterdir()) == sorted(
        [lately, queued, forgotten_lately, "notes"]
    )
    assert event_kinds(store, long_ago)[-1] == (
        "files.removed",
        "the run's folder was removed: folders are kept 1 hour after their runs end "
        "(ROUTINED_RUN_FILES_MAX_AGE)",
    )
    assert [kind for kind, _ in event_kinds(store, lately)] == ["status", "status"]


@pytest.mark.parametrize("max_age", [math.inf, 1e300])
async def test_an_endless_max_age_keeps_every_folder(
    store: Store, settings: Settings, tmp_path: Path, max_age: float
) -> None:
    now = utcnow()
    settings = replace(settings, run_files_max_age=max_age)
    long_ago = ended_at(store, tmp_path, now - timedelta(days=3650))
    folder = run_folder(settings, long_ago)
    assert await Worker(store, settings, clock=lambda: now).remove_expired_files() == []
    assert folder.exists()


async def test_the_worker_loop_removes_expired_folders(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    settings = replace(settings, run_files_max_age=0)
    folder = run_folder(settings, ended_at(store, tmp_path, utcnow() - timedelta(seconds=1)))
    stop = asyncio.Event()
    looping = asyncio.create_task(Worker(store, settings).run(stop))
    try:
        await wait_until(lambda: not folder.exists())
    finally:
        stop.set()
        await looping


async def test_a_folder_another_worker_removed_first_is_not_removed_or_recorded_again(
    store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    settings = replace(settings, run_files_max_age=0)
    run_id = ended_at(store, tmp_path, now - timedelta(hours=1))
    run_folder(settings, run_id)
    listed = worker_module._run_folders(settings.runs_dir)
    (settings.runs_dir / run_id).rename(settings.runs_dir / ".removing-by-another-worker")
    monkeypatch.setattr(worker_module, "_run_folders", lambda runs_dir: listed)

    assert await Worker(store, settings, clock=lambda: now).remove_expired_files() == []
    assert [kind for kind, _ in event_kinds(store, run_id)] == ["status", "status"]


async def test_a_folder_a_sandbox_still_uses_stays_whatever_the_store_says(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    """Ended as lost while its worker was stalled, say: its sandbox still runs."""
    now = utcnow()
    settings = replace(settings, run_files_max_age=0)
    run_id = ended_at(store, tmp_path, now - timedelta(hours=1))
    folder = run_folder(settings, run_id)
    (folder / "workspace").mkdir()
    layout = bubblewrap.finishing_layout(
        run_dir=folder, cwd=folder / "workspace", readable=[], masked=[]
    )
    command = [*bubblewrap.bwrap_command(layout, Path("/bin/cat"))]
    running = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.PIPE)
    worker = Worker(store, settings, clock=lambda: now)
    try:
        await wait_until(lambda: run_id in bubblewrap.runs_in_use(settings.runs_dir))
        assert await worker.remove_expired_files() == []
        assert folder.exists()
    finally:
        assert running.stdin is not None
        running.stdin.close()  # cat ends, and its sandbox with it
        await running.wait()
    assert await worker.remove_expired_files() == [run_id]
    assert not folder.exists()


async def test_a_folder_another_worker_is_removing_is_left_to_it(
    store: Store, settings: Settings
) -> None:
    """Set aside moments ago: its worker is still at it, and records it."""
    busy = settings.runs_dir / f".removing-{new_id('run')}-0a1b2c3d"
    (busy / "home").mkdir(parents=True)
    assert await Worker(store, settings).remove_expired_files() == []
    assert busy.exists()


def test_a_missing_claude_binary_fails_a_run_as_the_sandbox_would(
    store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also when the setup script is first to lay out the sandbox: not an internal error."""

    def missing(configured: Path | None) -> Path:
        raise bubblewrap.SandboxUnavailable("Claude Code is not bundled with this install")

    monkeypatch.setattr(bubblewrap, "claude_binary", missing)
    with pytest.raises(RunFailure) as failed:
        confine.claude(settings)
    assert str(failed.value) == "sandbox_unavailable: Claude Code is not bundled with this install"


async def test_a_folder_its_worker_left_behind_is_left_safe(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    """The attack: the server was killed while a run held a hostile workspace and a
    transcript with its secret; the run ended as lost, and nothing sealed or redacted
    what it left. The next sweep does what the run's worker would have."""
    run_id = ended_at(store, tmp_path, utcnow() - timedelta(minutes=1))
    with store.transaction() as session:
        run = session.get_one(Run, run_id)
        routine = session.get_one(Routine, run.routine_id)
        routine.environment = {"secrets": [{"name": "DEPLOY_TOKEN"}]}
        vault.set_secret(
            session, settings, account_id=routine.account_id, name="DEPLOY_TOKEN",
            value="tok-left-behind-12345", now=utcnow(),
        )  # fmt: skip
    folder = run_folder(settings, run_id)
    (folder / "home" / "transcript.jsonl").write_text('{"said": "tok-left-behind-12345"}\n')
    planted = folder / "workspace" / "app" / ".git"
    planted.mkdir(parents=True)
    (planted / "config").write_text("[core]\n\tfsmonitor = touch /tmp/pwned\n")
    other = ended_at(store, tmp_path, utcnow() - timedelta(minutes=1))
    run_folder(settings, other)

    settled = await Worker(store, settings).settle_abandoned_files()

    assert sorted(settled) == sorted([run_id, other])
    assert not planted.exists()  # no repository left for a person's git to open
    assert (folder / "home" / "transcript.jsonl").read_text() == (
        '{"said": "[redacted:DEPLOY_TOKEN]"}\n'
    )
    assert (folder / "kept" / "kept.json").is_file()
    # Once is enough.
    assert await Worker(store, settings).settle_abandoned_files() == []


async def test_what_an_agent_says_is_bounded_per_run_as_stored(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: an agent talking without end filled the store. Past the bound, its
    events keep only their size."""
    monkeypatch.setattr(ledger, "AGENT_EVENTS_LIMIT", 4 * 1024 * 1024)
    run_id = queue_unclonable(store, tmp_path)
    recorder = ledger.Recorder(store, run_id, utcnow)
    line = "x" * (1024 * 1024)
    for _ in range(10):
        await recorder.event("agent.output", None, lines=[line])
    await recorder.event("git.push", "pushed claude/x", branch="claude/x")
    with store.transaction(readonly=True) as session:
        rows = session.execute(
            select(RunEvent.kind, RunEvent.data)
            .where(RunEvent.run_id == run_id)
            .order_by(RunEvent.seq)
        ).all()
    said = [data for kind, data in rows if kind == "agent.output"]
    assert [data.get("omitted", False) for data in said] == [False] * 3 + [True] * 7
    assert said[-1]["size"] > 1024 * 1024
    assert rows[-1] == ("git.push", {"branch": "claude/x"})  # routined's own are all kept
