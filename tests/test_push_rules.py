"""Push rules: which branches keep their names, which move, and where refused work goes.

`plan` is checked as a table; the pushes themselves against real bare origins.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from routined import workspace
from routined.runs import push
from routined.runs.outbox import AgentWork
from routined.runs.push import Mode, Push, PushRules
from tests.conftest import branches, git, push_commit
from tests.test_delivery import OWN, ROUTINED, Run, make_run, work

pytestmark = pytest.mark.anyio

U = PushRules(unrestricted=True)
UF = PushRules(unrestricted=True, force=True)
UD = PushRules(unrestricted=True, default_branch=True)
UFD = PushRules(unrestricted=True, force=True, default_branch=True)
ONLY = "(only claude/ branches are pushed)"
NOT_DEFAULT = "(pushes to the default branch are not allowed; delivered under claude/)"
# The agent made claude/fix, moved feature/x and committed on main, the default branch.
EVERYWHERE = work(("claude/fix", "c1"), ("feature/x", "f1"), ("main", "m1"), head="main")
FIX = Push("c1", "claude/fix", "branch claude/fix")


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        # Restricted: force and the default branch mean nothing without unrestricted.
        *[(PushRules(force=f, default_branch=d),
           [FIX, Push("f1", f"{OWN}-feature-x", f"branch feature/x {ONLY}"),
            Push("m1", f"{OWN}-main", f"branch main {ONLY}")])
          for f in (False, True) for d in (False, True)],
        (U, [FIX, Push("f1", "feature/x", "branch feature/x", Mode.FAST_FORWARD, f"{OWN}-feature-x"),
             Push("m1", f"{OWN}-main", f"branch main {NOT_DEFAULT}")]),
        (UF, [FIX, Push("f1", "feature/x", "branch feature/x", Mode.FORCE, f"{OWN}-feature-x"),
              Push("m1", f"{OWN}-main", f"branch main {NOT_DEFAULT}")]),
        (UD, [FIX, Push("f1", "feature/x", "branch feature/x", Mode.FAST_FORWARD, f"{OWN}-feature-x"),
              Push("m1", "main", "branch main", Mode.FAST_FORWARD, f"{OWN}-main")]),
        (UFD, [FIX, Push("f1", "feature/x", "branch feature/x", Mode.FORCE, f"{OWN}-feature-x"),
               Push("m1", "main", "branch main", Mode.FORCE, f"{OWN}-main")]),
    ],
)  # fmt: skip
def test_plan_for_every_combination_of_rules(rules: PushRules, expected: list[Push]) -> None:
    """Branches under the prefix are created only, whatever the rules."""
    assert push.plan(EVERYWHERE, own_branch=OWN, default_branch="main", rules=rules) == expected


@pytest.mark.parametrize(
    ("agent_work", "rules", "expected"),
    [
        # The only work outside the prefix falls back to the run's own branch.
        (work(("feature/x", "f1"), head="feature/x"), U,
         [Push("f1", "feature/x", "branch feature/x", Mode.FAST_FORWARD, OWN)]),
        # Leftovers on a branch that keeps its name: the branch as committed, the
        # leftovers on the run's own branch.
        (work(("feature/x", "f1"), head="feature/x", leftovers="s1"), UF,
         [Push("s1", OWN, "uncommitted changes on feature/x"),
          Push("f1", "feature/x", "branch feature/x", Mode.FORCE, f"{OWN}-feature-x")]),
        # Leftovers on main, not pushable: the leftover commit carries main's commits.
        (work(("main", "m1"), head="main", leftovers="s1"), U,
         [Push("s1", OWN, "uncommitted changes on main")]),
        # A detached HEAD has no name to keep.
        (work(detached="d1"), UFD,
         [Push("d1", OWN, "a detached HEAD (not on a branch; delivered under claude/)")]),
        # A branch called "detached" is still a branch.
        (work(("detached", "x1"), head="detached"), push.RESTRICTED,
         [Push("x1", OWN, f"branch detached {ONLY}")]),
        # Another prefix: claude/ is just another branch outside it.
        (work(("bot/fix", "b1"), ("claude/x", "c1"), ("main", "m1"), head="main"), PushRules(prefix="bot/"),
         [Push("b1", "bot/fix", "branch bot/fix"),
          Push("c1", "bot/nightly-ab12cd34-claude-x", "branch claude/x (only bot/ branches are pushed)"),
          Push("m1", "bot/nightly-ab12cd34-main", "branch main (only bot/ branches are pushed)")]),
    ],
)  # fmt: skip
def test_plan_cases(agent_work: AgentWork, rules: PushRules, expected: list[Push]) -> None:
    own = OWN.replace("claude/", rules.prefix)
    assert push.plan(agent_work, own_branch=own, default_branch="main", rules=rules) == expected


def test_the_default_branch_is_whatever_the_origin_says() -> None:
    agent_work = work(("trunk", "t1"), ("main", "m1"), head="trunk")
    assert push.plan(agent_work, own_branch=OWN, default_branch="trunk", rules=U) == [
        Push("t1", f"{OWN}-trunk", f"branch trunk {NOT_DEFAULT}"),
        Push("m1", "main", "branch main", Mode.FAST_FORWARD, f"{OWN}-main"),
    ]


def test_plan_refuses_an_own_branch_outside_a_custom_prefix() -> None:
    with pytest.raises(ValueError, match="refusing to push outside bot/: claude/x"):
        push.plan(work(), own_branch="claude/x", default_branch="main", rules=PushRules("bot/"))


async def test_pushes_the_rules_do_not_allow_never_reach_the_origin(run: Run) -> None:
    """Should `plan` ever get it wrong, `push` still refuses."""
    before = branches(run.origin)
    wrong = [Push(before["main"], "main", "branch main", Mode.FORCE, OWN)]
    for rules in (push.RESTRICTED, U, UD, PushRules(unrestricted=True, prefix="ma")):
        view = push.OriginView(before, frozenset(run.checkout.base), "main")
        with pytest.raises(workspace.GitError, match=r"refusing to push main \(force\)"):
            target = push.Target(OWN, suffix="x", author_email="routined@localhost", rules=rules)
            await push.push(run.checkout, run.run_dir, wrong, target=target, view=view)
    assert branches(run.origin) == before


@pytest.fixture
async def run(origin: Path, tmp_path: Path) -> Run:
    return await make_run(origin, tmp_path)


# Commits by routined: an earlier run's, on a branch runs may move.
EARLIER_RUN = ROUTINED


@pytest.fixture
async def feature(origin: Path, tmp_path: Path) -> tuple[Run, str]:
    """A run whose origin had the branch `feature` (one commit on main, by an earlier
    run) at checkout."""
    on_origin = push_commit(
        origin, tmp_path / "earlier", "feature.txt", "theirs\n", "feature", EARLIER_RUN
    )
    return await make_run(origin, tmp_path), on_origin


def rewrite_feature(run: Run) -> str:
    """The agent makes its own `feature` from main: not a fast-forward of the origin's."""
    return run.commit("mine.txt", "mine\n", branch="feature")


async def test_unrestricted_fast_forwards_an_existing_branch(feature: tuple[Run, str]) -> None:
    run, _ = feature
    main_before = branches(run.origin)["main"]
    git("switch", "--quiet", "-c", "feature", "origin/feature", cwd=run.repo)
    ahead = run.commit("more.txt", "more\n")
    pushed = await run.deliver(rules=U)
    assert [(p.branch, p.sha, p.source) for p in pushed] == [("feature", ahead, "branch feature")]
    assert branches(run.origin) == {"main": main_before, "feature": ahead}


@pytest.mark.parametrize("rules", [U, UF])
async def test_a_branch_carrying_others_commits_is_never_moved(
    origin: Path, tmp_path: Path, rules: PushRules
) -> None:
    """Someone works on `feature`: the run's work on it lands under the prefix instead,
    moved forward or forced alike."""
    theirs = push_commit(origin, tmp_path / "colleague", "feature.txt", "theirs\n", "feature")
    run = await make_run(origin, tmp_path)
    git("switch", "--quiet", "-c", "feature", "origin/feature", cwd=run.repo)
    ahead = run.commit("more.txt", "more\n")
    pushed = await run.deliver(rules=rules)
    why = "the branch carries commits by others (test@example.com); delivered under claude/"
    assert [(p.branch, p.sha, p.source) for p in pushed] == [
        (OWN, ahead, f"branch feature ({why})")
    ]
    assert branches(origin)["feature"] == theirs


async def test_restricted_moves_no_existing_branch(feature: tuple[Run, str]) -> None:
    run, on_origin = feature
    git("switch", "--quiet", "-c", "feature", "origin/feature", cwd=run.repo)
    ahead = run.commit("more.txt", "more\n")
    pushed = await run.deliver()
    assert [(p.branch, p.sha, p.source) for p in pushed] == [(OWN, ahead, f"branch feature {ONLY}")]
    assert branches(run.origin)["feature"] == on_origin


async def test_a_rewrite_without_force_is_delivered_under_the_prefix(
    feature: tuple[Run, str],
) -> None:
    run, on_origin = feature
    mine = rewrite_feature(run)
    pushed = await run.deliver(rules=UD)
    why = "not a fast-forward of the origin's branch; delivered under claude/"
    assert [(p.branch, p.sha, p.source) for p in pushed] == [(OWN, mine, f"branch feature ({why})")]
    assert branches(run.origin)["feature"] == on_origin


async def test_a_rewrite_with_force_replaces_the_branch(feature: tuple[Run, str]) -> None:
    run, on_origin = feature
    mine = rewrite_feature(run)
    pushed = await run.deliver(rules=UF)
    source = f"branch feature (force-pushed over {on_origin})"
    assert [(p.branch, p.sha, p.source) for p in pushed] == [("feature", mine, source)]
    assert branches(run.origin)["feature"] == mine


MOVED = (
    "branch feature (the branch has moved on the origin since the run's checkout was made; "
    "delivered under claude/)"
)


async def test_force_never_drops_commits_pushed_after_the_checkout(
    feature: tuple[Run, str], tmp_path: Path
) -> None:
    """A local origin is its own mirror: routined sees the new commit and does not force."""
    run, _ = feature
    later = push_commit(
        run.origin, tmp_path / "earlier", "later.txt", "later\n", "feature", EARLIER_RUN
    )
    mine = rewrite_feature(run)
    pushed = await run.deliver(rules=UFD)
    assert [(p.branch, p.sha, p.source) for p in pushed] == [(OWN, mine, MOVED)]
    assert branches(run.origin)["feature"] == later


async def test_the_origin_checks_the_lease_when_the_mirror_is_behind(
    origin: Path, tmp_path: Path
) -> None:
    """A remote origin's mirror is fetched before the run only: the origin itself
    refuses a force over a commit pushed since."""
    push_commit(origin, tmp_path / "earlier", "feature.txt", "theirs\n", "feature", EARLIER_RUN)
    copy = tmp_path / "mirror.git"
    git("clone", "--quiet", "--mirror", str(origin), str(copy))
    mirror = workspace.Mirror(str(origin), copy, copy / "objects", "main")
    run = await make_run(origin, tmp_path, mirror)
    later = push_commit(
        origin, tmp_path / "earlier", "later.txt", "later\n", "feature", EARLIER_RUN
    )
    mine = rewrite_feature(run)
    pushed = await run.deliver(rules=UF)
    assert [(p.branch, p.sha, p.source) for p in pushed] == [(OWN, mine, MOVED)]
    assert branches(origin)["feature"] == later


@pytest.mark.parametrize(
    ("rules", "lands_on_main"),
    [(push.RESTRICTED, False), (U, False), (UF, False), (UD, True), (UFD, True)],
)
async def test_the_default_branch_only_when_allowed(
    run: Run, rules: PushRules, lands_on_main: bool
) -> None:
    main_before = branches(run.origin)["main"]
    mine = run.commit("main.txt", "on main\n")
    [pushed] = await run.deliver(rules=rules)
    if lands_on_main:
        assert (pushed.branch, pushed.source) == ("main", "branch main")
        assert branches(run.origin)["main"] == mine
    else:
        why = ONLY if rules == push.RESTRICTED else NOT_DEFAULT
        assert (pushed.branch, pushed.source) == (OWN, f"branch main {why}")
        assert branches(run.origin) == {"main": main_before, OWN: mine}


async def test_the_default_branch_moves_only_forward_without_force(
    run: Run, tmp_path: Path
) -> None:
    theirs = push_commit(run.origin, tmp_path / "colleague", "theirs.txt", "theirs\n")
    mine = run.commit("main.txt", "on main\n")
    [pushed] = await run.deliver(rules=UD)
    why = "not a fast-forward of the origin's branch; delivered under claude/"
    assert (pushed.branch, pushed.sha, pushed.source) == (OWN, mine, f"branch main ({why})")
    assert branches(run.origin)["main"] == theirs


async def test_a_branch_the_origin_refuses_is_delivered_under_the_prefix(run: Run) -> None:
    """Like a protected branch: the origin's own hook says no."""
    hook = run.origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\n! grep -q ' refs/heads/release$'\n")
    hook.chmod(0o755)
    mine = run.commit("release.txt", "1.0\n", branch="release")
    [pushed] = await run.deliver(rules=UFD)
    why = "the origin refused it: pre-receive hook declined; delivered under claude/"
    assert (pushed.branch, pushed.sha, pushed.source) == (OWN, mine, f"branch release ({why})")
    assert "release" not in branches(run.origin)


async def test_branches_under_the_prefix_are_never_moved_even_unrestricted(
    origin: Path, tmp_path: Path
) -> None:
    reviewed = push_commit(origin, tmp_path / "colleague", "x.txt", "x\n", "claude/reviewed")
    run = await make_run(origin, tmp_path)
    git("switch", "--quiet", "-c", "claude/reviewed", "origin/claude/reviewed", cwd=run.repo)
    ahead = run.commit("y.txt", "y\n")
    pushed = await run.deliver(rules=UFD)
    assert [(p.branch, p.sha) for p in pushed] == [("claude/reviewed-ab12cd34", ahead)]
    assert branches(origin)["claude/reviewed"] == reviewed


async def test_a_custom_prefix_takes_the_own_branch_and_renamed_work(run: Run) -> None:
    own = "bot/nightly-ab12cd34"
    fix = run.commit("fix.txt", "fix\n", branch="bot/fix")
    git("switch", "--quiet", "main", cwd=run.repo)
    other = run.commit("other.txt", "other\n", branch="claude/other")
    git("switch", "--quiet", "main", cwd=run.repo)
    on_main = run.commit("main.txt", "on main\n")
    main_before = branches(run.origin)["main"]
    pushed = await run.deliver(rules=PushRules(prefix="bot/"), own_branch=own)
    assert [(p.branch, p.source) for p in pushed] == [
        ("bot/fix", "branch bot/fix"),
        (f"{own}-claude-other", "branch claude/other (only bot/ branches are pushed)"),
        (f"{own}-main", "branch main (only bot/ branches are pushed)"),
    ]
    assert branches(run.origin) == {
        "main": main_before, "bot/fix": fix, f"{own}-claude-other": other, f"{own}-main": on_main
    }  # fmt: skip


async def test_leftovers_go_to_the_own_branch_under_a_custom_prefix(run: Run) -> None:
    own = "bot/nightly-ab12cd34"
    (run.repo / "NOTES.md").write_text("notes\n")
    [pushed] = await run.deliver(rules=PushRules(prefix="bot/"), own_branch=own)
    assert (pushed.branch, pushed.source) == (own, "uncommitted changes on main")
    assert git("show", f"{own}:NOTES.md", cwd=run.origin) == "notes"


async def test_a_branch_where_someone_rebased_routineds_commits_is_theirs(
    origin: Path, tmp_path: Path
) -> None:
    """Authored by routined, committed by a person (a rebase, an amend): not moved."""
    clone = tmp_path / "colleague"
    push_commit(origin, clone, "feature.txt", "theirs\n", "feature", EARLIER_RUN)
    git("commit", "--quiet", "--amend", "--no-edit", cwd=clone, who=("Pat", "pat@example.com"))
    git("push", "--quiet", "--force", "origin", "feature", cwd=clone)
    theirs = git("rev-parse", "HEAD", cwd=clone)
    assert git("log", "-1", "--format=%ae %ce", "feature", cwd=origin) == (
        "routined@localhost pat@example.com"
    )
    run = await make_run(origin, tmp_path)
    git("switch", "--quiet", "-c", "feature", "origin/feature", cwd=run.repo)
    ahead = run.commit("more.txt", "more\n")
    [pushed] = await run.deliver(rules=U)
    why = "the branch carries commits by others (pat@example.com); delivered under claude/"
    assert (pushed.branch, pushed.sha, pushed.source) == (OWN, ahead, f"branch feature ({why})")
    assert branches(origin)["feature"] == theirs
