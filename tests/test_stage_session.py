"""The agent's session: how each way it can end ends the run, and what of its work
is delivered.

On the fast harness (`tests/stage_support.py` says what is real); each test asserts how
the run ended (its status, the failure code its error starts with) and its events' reasons.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from routined import runs
from routined.config import Secret
from routined.runs.failure import Failure
from routined.timeutil import utcnow
from tests.conftest import branches, git, wait_until
from tests.stage_support import (
    CAP,
    Fifo,
    Stages,
    agent,
    alive,
    delivered,
    ended,
    worker,
)

pytestmark = pytest.mark.anyio


# --- session: the agent -------------------------------------------------------------------


async def test_an_agent_exiting_with_an_error_fails_the_run_and_its_work_is_delivered(
    stages: Stages,
) -> None:
    stages.routine(agent("echo half > HALF.md; echo 'cannot go on' >&2; exit 3"))
    run_id = stages.queue()
    run = await stages.run(run_id)

    error = f"{Failure.AGENT_FAILED}: the agent exited with status 3"
    assert (run.status, run.error) == ("failed", error)
    branch = delivered(run)
    assert git("show", f"{branch}:HALF.md", cwd=stages.origin) == "half"
    assert stages.moves(run_id)[-2:] == [
        ("running", "finishing", f"the agent stopped: {error}"),
        ("finishing", "failed", f"{error} (delivered: {branch})"),
    ]
    [stderr] = [e for e in stages.events(run_id) if e.kind == "agent.stderr"]
    assert stderr.data == {"lines": ["cannot go on"]}


async def test_an_agent_killed_by_a_signal_fails_the_run_and_its_work_is_delivered(
    stages: Stages,
) -> None:
    stages.routine(agent("echo partial > partial.txt; kill -KILL $$"))
    run = await stages.run()

    assert run.status == "failed"
    assert run.error == f"{Failure.AGENT_FAILED}: the agent exited with status 137"
    assert git("show", f"{delivered(run)}:partial.txt", cwd=stages.origin) == "partial"


async def test_an_agent_past_the_runs_deadline_is_stopped_and_its_work_delivered(
    stages: Stages,
) -> None:
    stages.settings = replace(stages.settings, run_timeout=0.5)
    pids = stages.tmp_path / "pids"
    stages.routine(agent(f"echo partial > partial.txt; sleep 600 & echo $! > {pids}; wait"))
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "timed_out"
    assert run.error == f"{Failure.TIMED_OUT}: stopped after 0 seconds (ROUTINED_RUN_TIMEOUT)"
    assert git("show", f"{delivered(run)}:partial.txt", cwd=stages.origin) == "partial"
    assert stages.moves(run_id)[-1] == (
        "finishing", "timed_out", f"{run.error} (delivered: {delivered(run)})"
    )  # fmt: skip
    # What the agent left running went with it.
    await wait_until(lambda: not alive(int(pids.read_text())), 10)


async def test_an_agent_killed_at_a_cap_fails_the_run_named_by_the_cap(stages: Stages) -> None:
    stages.sandboxes.breach = CAP
    stages.routine(agent("echo partial > partial.txt"))
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert (run.status, run.error) == ("failed", str(CAP))
    assert git("show", f"{delivered(run)}:partial.txt", cwd=stages.origin) == "partial"
    assert stages.moves(run_id)[-2] == ("running", "finishing", f"the agent stopped: {CAP}")


async def test_an_agent_cancelled_while_it_runs_is_stopped_and_nothing_is_pushed(
    stages: Stages,
) -> None:
    started = Fifo(stages.tmp_path / "started")
    fast = replace(stages.settings, heartbeat_interval=0.05)
    stages.routine(agent(f"echo partial > partial.txt; echo $$ > {started.path}; exec sleep 600"))
    run_id = stages.queue()
    working = asyncio.create_task(worker(stages.store, fast, stages.sandboxes).run_claimed(run_id))
    pid = int(await started.said())
    with stages.store.transaction() as session:
        assert runs.cancel(session, run_id, now=utcnow(), reason="test: no longer wanted") == (
            "requested"
        )
    assert await working

    run = ended(stages.store, run_id)
    assert run.status == "cancelled"
    assert run.error == f"{Failure.CANCELLED}: test: no longer wanted"
    assert run.branches == [] and branches(stages.origin).keys() == {"main"}
    kinds = [(e.kind, e.to_status) for e in stages.events(run_id)]
    assert ("cancel.requested", None) in kinds and kinds[-1] == ("status", "cancelled")
    [kept] = stages.said(run_id, "files.kept")
    assert kept == f"kept {stages.origin} for inspection (its work is in the bundle); " + (
        "`routined inspect` shows how"
    )
    await wait_until(lambda: not alive(pid), 10)


async def test_without_a_model_api_key_the_agent_fails_to_start(stages: Stages) -> None:
    stages.settings = replace(stages.settings, anthropic_api_key=Secret(""))
    stages.routine(agent("echo never > NEVER.md"))
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error == f"{Failure.AGENT_FAILED}: ANTHROPIC_API_KEY is not set for routined"
    assert stages.moves(run_id)[-1] == ("running", "failed", run.error)
    assert stages.asked() == []


async def test_claude_code_is_never_started_without_its_walls(stages: Stages) -> None:
    stages.routine()  # no agent CLI: Claude Code
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error is not None and run.error.startswith(f"{Failure.AGENT_FAILED}: ")
    [claude] = stages.asked()
    assert claude.program.name == "claude"
    assert "exit code 125" in run.error
    [stderr] = [e for e in stages.events(run_id) if e.kind == "agent.stderr"]
    assert stderr.data == {
        "lines": [
            "routined.testing.sandbox: Claude Code does not run outside a real sandbox; "
            "give the routine an agent CLI (agent: {command: [...]})"
        ]
    }
