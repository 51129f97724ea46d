"""The executor: a run through every stage, and how it ends when something outside
the stages stops it (a bug, its worker stopped or lost); the triage gate before them.

On the fast harness (`tests/stage_support.py` says what is real); each test asserts how
the run ended (its status, the failure code its error starts with) and its events' reasons.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from routined import runs
from routined.ids import short
from routined.models import Run, Trigger
from routined.runs import finish
from routined.runs.failure import Failure
from routined.testing.fake_anthropic import FakeAnthropic, text
from routined.timeutil import utcnow
from tests.conftest import branches, git, wait_until
from tests.stage_support import (
    Fifo,
    Stages,
    agent,
    alive,
    delivered,
    ended,
    worker,
)

pytestmark = pytest.mark.anyio


# --- the executor, through every stage ---------------------------------------------------


async def test_a_run_goes_through_every_stage_and_says_why_at_each_move(
    stages: Stages,
) -> None:
    stages.routine(agent("cat > prompt.txt; echo 'Wrote the prompt down.'"), prompt="Note it.")
    run_id = stages.queue("a fire's text")
    run = await stages.run(run_id)

    assert run.status == "succeeded" and run.error is None
    own = f"claude/docs-nightly-{short(run_id)}"
    assert delivered(run) == own
    assert git("show", f"{own}:prompt.txt", cwd=stages.origin) == (
        'Note it.\n\n<routine-fire-payload source="manual" trust="untrusted">\n'
        "a fire's text\n</routine-fire-payload>"
    )
    assert run.summary == "Wrote the prompt down."
    assert run.diff_stat == {"files": 1, "insertions": 5, "deletions": 0}
    assert stages.moves(run_id) == [
        (None, "queued", "test"),
        ("queued", "preparing", f"claimed by worker {run.worker_id}"),
        ("preparing", "running", "the agent is starting"),
        ("running", "finishing", "the agent stopped: it finished its session"),
        ("finishing", "succeeded", f"delivered: {own}"),
    ]
    assert [e.kind for e in stages.events(run_id)] == [
        "status", "status", "git.clone", "environment.network", "status", "agent.output",
        "status", "git.push", "status",
    ]  # fmt: skip
    assert stages.said(run_id, "git.clone") == [f"cloned {stages.origin} (main)"]
    assert stages.said(run_id, "git.push") == [f"pushed {own} (uncommitted changes on main)"]
    # The agent ran in the first checkout with the network; the work was packed in a
    # sandbox without it, that could change the workspace only.
    run_dir = stages.run_dir(run_id)
    agent_box, finishing_box = stages.sandboxes.commands
    assert (agent_box.program, agent_box.cwd, agent_box.networked) == (
        Path("bash"), run_dir / "workspace" / "app", True
    )  # fmt: skip
    assert (finishing_box.program, finishing_box.writable, finishing_box.networked) == (
        Path("/bin/bash"), (run_dir / "workspace",), False
    )  # fmt: skip
    # Delivered: the checkout is gone, the home stays, and what stays is settled.
    assert not (run_dir / "workspace").exists() and not (run_dir / "tmp").exists()
    assert (run_dir / "home").is_dir() and (run_dir / "private" / "settled").is_file()


async def test_a_bug_ends_the_run_as_an_internal_error_and_keeps_its_work(
    stages: Stages, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stages.routine(agent("echo draft > DRAFT.md"))

    async def broken(scope: object) -> list[object]:
        raise KeyError("repositories")

    monkeypatch.setattr(finish, "deliver", broken)
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error == f"{Failure.INTERNAL_ERROR}: KeyError: 'repositories'"
    assert stages.moves(run_id)[-1] == ("finishing", "failed", run.error)
    assert branches(stages.origin).keys() == {"main"}
    [kept] = stages.said(run_id, "files.kept")
    assert kept is not None and kept.startswith(f"kept {stages.origin} for inspection")
    assert (stages.run_dir(run_id) / "kept" / "app.bundle").is_file()
    assert any(f"run {run_id} failed unexpectedly" in r.getMessage() for r in caplog.records)


async def test_a_stopped_worker_ends_its_run_as_interrupted(stages: Stages) -> None:
    started = Fifo(stages.tmp_path / "started")
    stages.routine(agent(f"echo $$ > {started.path}; exec sleep 600"))
    run_id = stages.queue()
    working = asyncio.create_task(
        worker(stages.store, stages.settings, stages.sandboxes).run_claimed(run_id)
    )
    pid = int(await started.said())
    working.cancel()  # as when the server stops
    with pytest.raises(asyncio.CancelledError):
        await working

    run = ended(stages.store, run_id)
    assert run.status == "failed"
    assert run.error == f"{Failure.INTERRUPTED}: the worker was stopped"
    assert stages.moves(run_id)[-1] == ("running", "failed", run.error)
    await wait_until(lambda: not alive(pid), 10)


async def test_a_run_its_worker_lost_stays_ended_and_delivers_nothing(
    stages: Stages, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker stalled; another's sweep ended the run as lost. When the stalled
    worker comes back, its moves are refused: a lost run is never delivered."""
    started, go = Fifo(stages.tmp_path / "started"), Fifo(stages.tmp_path / "go")
    stages.routine(agent(f"echo > {started.path}; read -r _ < {go.path}; echo late > LATE.md"))
    run_id = stages.queue()
    working = asyncio.create_task(stages.run(run_id))
    await started.said()
    with stages.store.transaction() as session:
        assert runs.end_lost(
            session, now=utcnow() + timedelta(hours=1), lost_after=timedelta(minutes=1)
        ) == [run_id]
    go.say("go on")
    run = await working

    assert run.status == "failed"
    assert run.error == f"{Failure.LOST}: the worker running it stopped responding"
    assert [to for _, to, _ in stages.moves(run_id)] == ["queued", "preparing", "running", "failed"]
    assert branches(stages.origin).keys() == {"main"} and run.branches == []
    assert any("was not running" in r.getMessage() for r in caplog.records)


# --- triage: the gate ---------------------------------------------------------------------


async def test_a_run_its_gate_lets_through_goes_on_and_says_why(
    stages: Stages, fake_api: FakeAnthropic
) -> None:
    marker = "[gate:stages-yes]"
    fake_api.gate(marker, [text("YES: a production alert.")])
    stages.routine(
        agent("echo fix > FIX.md")
        + "    triggers: [{type: api, gate: {prompt: Only production alerts.}}]\n"
    )
    with stages.store.transaction() as session:
        trigger_id = session.scalars(select(Trigger.id)).one()
    run_id = stages.queue(f"prod alert {marker}")
    with stages.store.transaction() as session:
        session.get_one(Run, run_id).trigger_id = trigger_id
    run = await stages.run(run_id)

    assert run.status == "succeeded"
    assert stages.said(run_id, "gate.passed") == ["the gate answered: YES: a production alert."]
