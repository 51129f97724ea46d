"""Delivering a run's work: what is pushed, what is refused and kept, and what is
said on GitHub afterwards.

On the fast harness (`tests/stage_support.py` says what is real); each test asserts how
the run ended (its status, the failure code its error starts with) and its events' reasons.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from routined.ids import short
from routined.runs.failure import Failure
from routined.testing.fake_github import FakeGitHub, generate_app_key
from tests.conftest import branches, git, make_origin
from tests.github_support import REPOSITORY
from tests.stage_support import (
    Stages,
    agent,
    delivered,
)

pytestmark = pytest.mark.anyio


# --- finish: delivery and what stays ------------------------------------------------------


async def test_an_agent_that_changed_nothing_succeeds_with_nothing_delivered(
    stages: Stages,
) -> None:
    stages.routine(agent("echo 'Nothing to do.'"))
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert (run.status, run.error, run.branches) == ("succeeded", None, [])
    assert run.diff_stat is None and run.summary == "Nothing to do."
    assert stages.said(run_id, "git.push") == [f"nothing new to push to {stages.origin}"]
    assert stages.moves(run_id)[-1] == (
        "finishing",
        "succeeded",
        "delivered: no changes to deliver",
    )
    assert branches(stages.origin).keys() == {"main"}
    assert not (stages.run_dir(run_id) / "workspace").exists()


async def test_a_push_the_origins_rules_refuse_fails_delivery_and_the_work_is_kept(
    stages: Stages,
) -> None:
    hook = stages.origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\n! grep -q ' refs/heads/claude/'\n")  # like a branch rule
    hook.chmod(0o755)
    stages.routine(agent("echo fix > FIX.md"))
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error is not None and run.error.startswith(f"{Failure.DELIVERY_FAILED}: ")
    assert "pre-receive hook declined" in run.error
    assert stages.moves(run_id)[-1] == ("finishing", "failed", run.error)
    assert run.branches == [] and branches(stages.origin).keys() == {"main"}
    [kept] = stages.said(run_id, "files.kept")
    assert kept is not None and "its work is in the bundle" in kept
    assert (stages.run_dir(run_id) / "kept" / "app.bundle").is_file()


async def test_branches_pushed_before_a_delivery_failed_are_recorded(stages: Stages) -> None:
    second = make_origin(stages.tmp_path / "second")
    hook = second / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    stages.routine(f"      - url: {second}\n" + agent("echo a > A.md; echo b > ../app-2/B.md"))
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error is not None and run.error.startswith(f"{Failure.DELIVERY_FAILED}: ")
    own = f"claude/docs-nightly-{short(run_id)}"
    assert [(b["repository"], b["branch"]) for b in run.branches] == [(str(stages.origin), own)]
    assert git("show", f"{own}:A.md", cwd=stages.origin) == "a"
    assert branches(second).keys() == {"main"}


async def test_work_gits_fsck_refuses_is_neither_pushed_nor_kept(stages: Stages) -> None:
    stages.routine(
        agent(
            "git config -f .gitmodules submodule.x.path x && "
            "git config -f .gitmodules submodule.x.url -- '--upload-pack=touch pwned' && "
            "git add .gitmodules && git commit -qm 'add a submodule'"
        )
    )
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error is not None and run.error.startswith(f"{Failure.UNSAFE_OBJECTS}: ")
    assert "gitmodulesUrl" in run.error
    assert branches(stages.origin).keys() == {"main"}
    [kept] = stages.said(run_id, "files.kept")
    assert kept is not None and "gitmodulesUrl" in kept


async def test_work_adding_a_file_over_max_file_mb_is_not_pushed_but_kept(
    stages: Stages,
) -> None:
    # 1.1 MiB of zeros: over a limit of 1 MiB, though it packs to almost nothing.
    stages.routine(
        agent(
            "mkdir data && head -c 1200000 /dev/zero > data/big.bin && echo fix > FIX.md && "
            "git add -A && git commit -qm 'add data'"
        )
        + "    limits: {max_file_mb: 1}\n"
    )
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "failed"
    assert run.error is not None and run.error.startswith(f"{Failure.FILE_TOO_LARGE}: ")
    assert "data/big.bin (1.1 MiB)" in run.error and "limits.max_file_mb" in run.error
    assert stages.moves(run_id)[-1] == ("finishing", "failed", run.error)
    assert run.branches == [] and branches(stages.origin).keys() == {"main"}
    assert stages.said(run_id, "git.push") == []
    [kept] = stages.said(run_id, "files.kept")
    assert kept is not None and "its work is in the bundle" in kept
    assert (stages.run_dir(run_id) / "kept" / "app.bundle").is_file()


async def test_a_file_left_uncommitted_over_max_file_mb_is_not_pushed_either(
    stages: Stages,
) -> None:
    stages.routine(agent("head -c 1200000 /dev/zero > big.bin") + "    limits: {max_file_mb: 1}\n")
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.error is not None and run.error.startswith(f"{Failure.FILE_TOO_LARGE}: ")
    assert "big.bin (1.1 MiB)" in run.error
    assert branches(stages.origin).keys() == {"main"}


async def test_a_file_over_max_file_mb_removed_by_a_later_commit_is_still_refused(
    stages: Stages,
) -> None:
    # The origin would receive every commit, so the file too: GitHub refuses such a push.
    stages.routine(
        agent(
            "head -c 1200000 /dev/zero > big.bin && git add big.bin && git commit -qm add && "
            "git rm -q big.bin && git commit -qm remove"
        )
        + "    limits: {max_file_mb: 1}\n"
    )
    run = await stages.run()

    assert run.error is not None and run.error.startswith(f"{Failure.FILE_TOO_LARGE}: ")
    assert "big.bin (1.1 MiB)" in run.error
    assert branches(stages.origin).keys() == {"main"}


async def test_a_file_over_half_of_max_file_mb_is_delivered_with_a_warning(
    stages: Stages,
) -> None:
    # 0.7 MiB: over half of 1 MiB, not over it.
    stages.routine(
        agent("head -c 700000 /dev/zero > half.bin && echo note > NOTE.md")
        + "    limits: {max_file_mb: 1}\n"
    )
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert (run.status, run.error) == ("succeeded", None)
    assert git("cat-file", "-s", f"{delivered(run)}:half.bin", cwd=stages.origin) == "700000"
    [warning] = [e for e in stages.events(run_id) if e.kind == "git.large_file"]
    assert warning.reason is not None
    assert warning.reason.startswith(f"{stages.origin}: half.bin (0.7 MiB) is over half the limit")
    assert "1 MiB per file (limits.max_file_mb)" in warning.reason
    assert warning.data == {"repository": str(stages.origin), "path": "half.bin", "size": 700000}


async def test_files_the_origin_already_has_are_not_measured_again(stages: Stages) -> None:
    checkout = stages.tmp_path / "elsewhere"
    git("clone", "--quiet", str(stages.origin), str(checkout))
    (checkout / "half.bin").write_bytes(bytes(700000))
    git("add", "half.bin", cwd=checkout)
    git("commit", "--quiet", "-m", "add half.bin", cwd=checkout)
    git("push", "--quiet", "origin", "HEAD:main", cwd=checkout)
    stages.routine(agent("echo note > NOTE.md") + "    limits: {max_file_mb: 1}\n")
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "succeeded"
    assert git("show", f"{delivered(run)}:NOTE.md", cwd=stages.origin) == "note"
    assert stages.said(run_id, "git.large_file") == []


# --- publish: pull requests and comments on GitHub ----------------------------------------


async def test_pull_requests_without_a_github_app_are_an_event_and_the_run_succeeds(
    stages: Stages,
) -> None:
    stages.routine(agent("echo fix > FIX.md") + "    pull_requests: true\n")
    run_id = stages.queue()
    run = await stages.run(run_id)

    assert run.status == "succeeded"
    assert git("show", f"{delivered(run)}:FIX.md", cwd=stages.origin) == "fix"
    assert stages.said(run_id, "github.error") == [
        "the GitHub App is not configured (ROUTINED_GITHUB_APP_ID)"
    ]


async def test_a_pull_request_is_opened_for_the_pushed_branch_and_the_event_commented(
    stages: Stages,
) -> None:
    key_file = stages.tmp_path / "app.pem"
    with FakeGitHub(private_key=generate_app_key(key_file)) as github:
        github.add_repository(REPOSITORY, git_dir=stages.origin)
        github.add_installation(7, "Codertocat", ["Hello-World"], account_type="User")
        assert github.add_issue(REPOSITORY, "Spam") == 1
        stages.settings = replace(
            stages.settings,
            github_app_id=str(github.app_id),
            github_private_key_file=key_file,
            github_api_url=github.base_url,
            github_url=github.web_origin,
        )
        stages.context = {
            "event": "issues", "delivery_id": "d-1", "repository": REPOSITORY,
            "installation_id": 7, "comment_on": {"number": 1},
        }  # fmt: skip
        stages.routine(agent("echo fix > FIX.md") + "    pull_requests: true\n    comment: true\n")
        run_id = stages.queue()
        run = await stages.run(run_id)

        assert run.status == "succeeded", run.error
        [pull] = github.pulls()
        assert (pull["head"]["ref"], pull["base"]["ref"]) == (delivered(run), "main")
        assert stages.said(run_id, "github.pull_request") == [f"opened {pull['html_url']}"]
        [comment] = github.comments(REPOSITORY)
        assert f"/sessions/{run.session_id}" in comment["body"]
        assert f"- pull request: {pull['html_url']}" in comment["body"]
        assert stages.said(run_id, "github.comment") == [f"commented {comment['html_url']}"]
