"""Preparing a run: its checkouts, the machine's sandboxes and caps, its secrets, and
the setup script with its cache.

On the fast harness (`tests/stage_support.py` says what is real); each test asserts how
the run ended (its status, the failure code its error starts with) and its events' reasons.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from routined import runs
from routined.runs.failure import Failure
from routined.timeutil import utcnow
from tests.conftest import branches, git, wait_until
from tests.github_support import add_pull_head
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


# --- checkout -----------------------------------------------------------------------------


async def test_an_origin_that_cannot_be_cloned_fails_the_run_before_any_sandbox(
    stages: Stages,
) -> None:
    stages.routine(agent("echo never"))
    shutil.rmtree(stages.origin)
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error is not None and run.error.startswith(f"{Failure.CLONE_FAILED}: ")
    assert str(stages.origin) in run.error
    assert stages.moves(run_id)[-1] == ("preparing", "failed", run.error)
    assert stages.said(run_id, "git.clone") == []
    assert stages.sandboxes.commands == []


async def test_a_pull_requests_head_is_fetched_unless_it_comes_from_a_fork(
    stages: Stages,
) -> None:
    head = add_pull_head(stages.origin, stages.tmp_path)
    stages.routine(agent("git rev-parse pr/2 > seen.txt"))
    stages.context = {"pull_request": {"number": 2, "from_fork": False}}
    from_branch = await stages.run()
    stages.context = {"pull_request": {"number": 2, "from_fork": True}}
    from_fork = await stages.run()

    assert stages.said(from_branch.id, "git.pull_request") == ["fetched pull request #2 as pr/2"]
    assert git("show", f"{delivered(from_branch)}:seen.txt", cwd=stages.origin) == head
    assert stages.said(from_fork.id, "git.pull_request") == [
        "pull request #2 comes from a fork: not fetched"
    ]
    assert git("show", f"{delivered(from_fork)}:seen.txt", cwd=stages.origin) == "pr/2"


# --- confine: the machine's sandboxes and caps --------------------------------------------


async def test_a_machine_that_cannot_sandbox_fails_the_run_as_sandbox_unavailable(
    stages: Stages,
) -> None:
    said = "bwrap not found; install the Debian packages bubblewrap and socat"
    stages.sandboxes.unavailable = said
    stages.routine(agent("echo never"))
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error == f"{Failure.SANDBOX_UNAVAILABLE}: {said}"
    assert stages.moves(run_id)[-1] == ("preparing", "failed", run.error)
    assert stages.sandboxes.commands == []


async def test_caps_the_kernel_refuses_fail_the_run_before_it_prepares(stages: Stages) -> None:
    said = "limits.memory: the kernel refused 1.0 GiB (memory.limit_in_bytes)"
    stages.sandboxes.refused = said
    stages.routine(agent("echo never"))
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error == f"{Failure.SANDBOX_UNAVAILABLE}: {said}"
    assert stages.moves(run_id)[-1] == ("preparing", "failed", run.error)
    assert not (stages.run_dir(run_id) / "workspace").exists()


# --- setup: secrets, network, the setup script and its cache -------------------------------


async def test_a_secret_that_is_not_stored_fails_the_run_as_secrets_unavailable(
    stages: Stages,
) -> None:
    stages.routine(agent("echo never") + "    environment: {secrets: [DEPLOY_TOKEN]}\n")
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error is not None
    assert run.error.startswith(f"{Failure.SECRETS_UNAVAILABLE}: ")
    assert "DEPLOY_TOKEN" in run.error
    # The advice names the secret, ready to copy (issue 16), not `secret set NAME`.
    assert "`routined secret set DEPLOY_TOKEN`" in run.error
    assert stages.moves(run_id)[-1] == ("preparing", "failed", run.error)
    assert stages.sandboxes.commands == []


async def test_a_failing_setup_script_fails_the_run_and_the_agent_never_starts(
    stages: Stages,
) -> None:
    stages.routine(
        agent("echo never > NEVER.md") + "    environment:\n"
        "      setup_script: |\n"
        "        echo installing\n"
        "        echo 'no such package: frobnicate' >&2\n"
        "        exit 3\n"
    )
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error == (
        f"{Failure.SETUP_FAILED}: the setup script exited with status 3: no such package: "
        "frobnicate (its output is in the run's events)"
    )
    assert stages.moves(run_id)[-1] == ("preparing", "failed", run.error)
    [output] = [e for e in stages.events(run_id) if e.kind == "setup.output"]
    assert output.reason is not None
    assert output.reason.startswith("the setup script exited with status 3 after ")
    assert output.data is not None and output.data["exit_code"] == 3
    assert output.data["lines"] == ["installing", "no such package: frobnicate"]
    assert [box.program for box in stages.asked()] == [Path("/bin/bash")]  # the script's
    assert branches(stages.origin).keys() == {"main"}


# What pip prints when told to install into a system Python (PEP 668), shortened: the
# error first, then advice, and last the least useful line of all.
PEP_668 = [
    "error: externally-managed-environment",
    "",
    "× This environment is externally managed",
    "╰─> To install Python packages system-wide, try apt install",
    "    python3-xyz, where xyz is the package you are trying to",
    "    install.",
    "",
    "note: If you believe this is a mistake, please contact your Python installation or "
    "OS distribution provider.",
    "hint: See PEP 668 for the detailed specification.",
]


async def test_a_failing_setup_scripts_error_quotes_the_line_that_says_why(
    stages: Stages,
) -> None:
    # Issue 16: the error ended `hint: See PEP 668 …`; the cause was only in `--json`.
    printed = "".join(f"        echo {shlex.quote(line)}\n" for line in PEP_668)
    stages.routine(
        agent("echo never > NEVER.md") + "    environment:\n"
        "      setup_script: |\n"
        "        echo 'Collecting requests'\n"
        "        {\n" + printed + "        } >&2\n"
        "        exit 1\n"
    )
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error == (
        f"{Failure.SETUP_FAILED}: the setup script exited with status 1: "
        "error: externally-managed-environment (its output is in the run's events)"
    )
    [output] = [e for e in stages.events(run_id) if e.kind == "setup.output"]
    assert output.data is not None
    assert output.data["lines"] == ["Collecting requests", *PEP_668]
    assert output.data["error_line"] == "error: externally-managed-environment"


async def test_a_setup_script_killed_at_a_cap_fails_the_run_named_by_the_cap(
    stages: Stages,
) -> None:
    stages.sandboxes.breach = CAP
    stages.routine(agent("echo never") + "    environment: {setup_script: echo building}\n")
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error == f"{Failure.OUT_OF_MEMORY}: the setup script was stopped: {CAP.message}"
    assert stages.said(run_id, "setup.output") == [f"the setup script was stopped: {CAP}"]
    assert [box.program for box in stages.asked()] == [Path("/bin/bash")]


async def test_a_setup_script_cancelled_leaves_its_output_and_nothing_runs_on(
    stages: Stages,
) -> None:
    started = Fifo(stages.tmp_path / "started")
    fast = replace(stages.settings, heartbeat_interval=0.05)
    stages.routine(
        agent("echo never > NEVER.md") + "    environment:\n"
        "      setup_script: |\n"
        "        echo fetching the toolchain\n"
        f"        echo $$ > {started.path}\n"
        "        exec sleep 600\n"
    )
    run_id = stages.queue()
    working = asyncio.create_task(worker(stages.store, fast, stages.sandboxes).run_claimed(run_id))
    pid = int(await started.said())
    with stages.store.transaction() as session:
        assert runs.cancel(session, run_id, now=utcnow(), reason="test: not now") == "requested"
    assert await working

    run = ended(stages.store, run_id)
    assert (run.status, run.error) == ("cancelled", f"{Failure.CANCELLED}: test: not now")
    assert stages.moves(run_id)[-1] == ("preparing", "cancelled", "test: not now")
    [output] = [e for e in stages.events(run_id) if e.kind == "setup.output"]
    assert output.reason == "the setup script was stopped: the run was cancelled"
    assert output.data == {"lines": ["fetching the toolchain"]}
    await wait_until(lambda: not alive(pid), 10)  # nothing of its sandbox goes on


async def test_a_setup_scripts_result_is_restored_while_the_script_is_unchanged(
    stages: Stages,
) -> None:
    stages.routine(
        agent("cp ~/.tool/version seen.txt") + "    environment:\n"
        "      setup_script: |\n"
        "        mkdir -p ~/.tool\n"
        "        cat /proc/sys/kernel/random/uuid > ~/.tool/version\n"
        "      setup_cache_files: [CHANGELOG.md, tools/missing.lock]\n"
    )
    first, second = await stages.run(), await stages.run()

    assert first.status == second.status == "succeeded"
    built = git("show", f"{delivered(first)}:seen.txt", cwd=stages.origin)
    assert git("show", f"{delivered(second)}:seen.txt", cwd=stages.origin) == built
    assert [e.kind for e in stages.events(first.id) if e.kind.startswith("setup.")] == [
        "setup.cache_files_missing", "setup.started", "setup.output",
    ]  # fmt: skip
    assert [e.kind for e in stages.events(second.id) if e.kind.startswith("setup.")] == [
        "setup.cache_files_missing", "setup.cached",
    ]  # fmt: skip
    [cached] = stages.said(second.id, "setup.cached")
    assert cached is not None and cached.endswith("; the script did not run")
    # The second run asked for no sandbox but its agent's.
    assert [box.program for box in stages.asked()] == [
        Path("/bin/bash"),
        Path("bash"),
        Path("bash"),
    ]
