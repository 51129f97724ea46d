"""Fresh clones and delivery: what gets pushed where, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from routined import workspace
from routined.workspace import Author, LocalBranch, Push
from tests.conftest import branches, git

pytestmark = pytest.mark.anyio
OWN = "claude/nightly-ab12cd34"
AUTHOR = Author("routined", "routined@localhost")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def branch(name: str, sha: str, new: bool = True) -> LocalBranch:
    return LocalBranch(name, sha, new)


@pytest.mark.parametrize(
    ("local", "head_branch", "detached", "snapshot", "expected"),
    [
        # Nothing new anywhere: nothing to push.
        ([branch("main", "a1", new=False)], "main", None, None, []),
        # Leftover changes on main: one commit onto the run's own branch.
        ([branch("main", "a1", new=False)], "main", None, "s1",
         [Push("s1", OWN, "uncommitted changes on main")]),
        # The agent's own claude/ branch keeps its name.
        ([branch("main", "a1", new=False), branch("claude/fix", "c1")], "claude/fix", None, None,
         [Push("c1", "claude/fix", "branch claude/fix")]),
        # Commits on main are not lost: pushed under the run's own branch.
        ([branch("main", "m1")], "main", None, None,
         [Push("m1", OWN, "branch main (only claude/ branches are pushed)")]),
        # Several other branches: each under its own suffix.
        ([branch("main", "m1"), branch("feature/x", "f1")], "main", None, None,
         [Push("m1", f"{OWN}-main", "branch main (only claude/ branches are pushed)"),
          Push("f1", f"{OWN}-feature-x", "branch feature/x (only claude/ branches are pushed)")]),
        # Leftovers on top of new commits on main: the leftover commit carries main's too.
        ([branch("main", "m1")], "main", None, "s1",
         [Push("s1", OWN, "uncommitted changes on main")]),
        # A detached HEAD with new commits is kept.
        ([branch("main", "a1", new=False)], None, branch("HEAD", "d1"), None,
         [Push("d1", OWN, "a detached HEAD (only claude/ branches are pushed)")]),
        # "claude/" alone is not a branch under the prefix.
        ([branch("claude/", "x1")], "claude/", None, None,
         [Push("x1", OWN, "branch claude/ (only claude/ branches are pushed)")]),
    ],
)  # fmt: skip
def test_plan(
    local: list[LocalBranch],
    head_branch: str | None,
    detached: LocalBranch | None,
    snapshot: str | None,
    expected: list[Push],
) -> None:
    planned = workspace.plan(
        local, head_branch=head_branch, detached_head=detached, snapshot=snapshot, own_branch=OWN
    )
    assert planned == expected


def test_plan_refuses_an_own_branch_outside_the_prefix() -> None:
    with pytest.raises(ValueError, match="refusing to push outside claude/"):
        workspace.plan(
            [branch("main", "m1")],
            head_branch="main",
            detached_head=None,
            snapshot=None,
            own_branch="main",
        )


async def test_clones_are_fresh_and_share_no_files_with_the_origin(
    origin: Path, tmp_path: Path
) -> None:
    checkout = await workspace.clone(str(origin), tmp_path / "ws" / "app")
    assert checkout.default_branch == "main"
    assert (checkout.path / "CHANGELOG.md").read_text() == "# Changelog\n"
    origin_inodes = {p.stat().st_ino for p in (origin / "objects").rglob("*") if p.is_file()}
    clone_inodes = {p.stat().st_ino for p in (checkout.path / ".git").rglob("*") if p.is_file()}
    assert origin_inodes.isdisjoint(clone_inodes)
    assert branches(origin)["main"] in checkout.base


async def deliver(checkout: workspace.Checkout, tmp_path: Path) -> list[workspace.Pushed]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return await workspace.deliver(
        checkout,
        own_branch=OWN,
        author=AUTHOR,
        message="Leftovers\n\nRoutine-Session: http://x/sessions/s\n",
        scratch=scratch,
        suffix="ab12cd34",
    )


async def test_leftover_changes_land_on_the_own_branch_and_main_is_untouched(
    origin: Path, tmp_path: Path
) -> None:
    before = branches(origin)
    checkout = await workspace.clone(str(origin), tmp_path / "ws" / "app")
    (checkout.path / "NOTES.md").write_text("notes\n")
    (checkout.path / "README.md").write_text("# app, edited\n")
    pushed = await deliver(checkout, tmp_path)
    assert [(p.branch, p.source) for p in pushed] == [(OWN, "uncommitted changes on main")]
    after = branches(origin)
    assert after["main"] == before["main"]
    assert git("show", f"{OWN}:NOTES.md", cwd=origin) == "notes"
    assert git("log", "-1", "--format=%an|%s", OWN, cwd=origin) == "routined|Leftovers"
    assert git("rev-parse", f"{OWN}^", cwd=origin) == before["main"]
    # HEAD and the real index were left as the agent left them.
    assert git("status", "--porcelain", cwd=checkout.path) == "M README.md\n?? NOTES.md".strip()


async def test_agent_branches_keep_their_names_and_other_work_is_renamed(
    origin: Path, tmp_path: Path
) -> None:
    checkout = await workspace.clone(str(origin), tmp_path / "ws" / "app")
    repo = checkout.path
    git("switch", "--quiet", "-c", "claude/changelog", cwd=repo)
    (repo / "CHANGELOG.md").write_text("# Changelog\n\n- more\n")
    git("commit", "--quiet", "-am", "changelog", cwd=repo)
    git("switch", "--quiet", "main", cwd=repo)
    (repo / "main.txt").write_text("on main\n")
    git("add", "main.txt", cwd=repo)
    git("commit", "--quiet", "-m", "on main", cwd=repo)
    main_before = branches(origin)["main"]
    pushed = await deliver(checkout, tmp_path)
    assert sorted(p.branch for p in pushed) == ["claude/changelog", OWN]
    after = branches(origin)
    assert after["main"] == main_before
    assert after["claude/changelog"] == git("rev-parse", "claude/changelog", cwd=repo)
    assert after[OWN] == git("rev-parse", "main", cwd=repo)


async def test_nothing_new_pushes_nothing(origin: Path, tmp_path: Path) -> None:
    before = branches(origin)
    checkout = await workspace.clone(str(origin), tmp_path / "ws" / "app")
    assert await deliver(checkout, tmp_path) == []
    assert branches(origin) == before


async def test_a_taken_branch_name_gets_the_run_suffix_and_nothing_is_forced(
    origin: Path, tmp_path: Path
) -> None:
    seed = tmp_path / "other"
    git("clone", "--quiet", str(origin), str(seed))
    git("switch", "--quiet", "-c", "claude/changelog", cwd=seed)
    (seed / "x.txt").write_text("someone else's\n")
    git("add", "x.txt", cwd=seed)
    git("commit", "--quiet", "-m", "theirs", cwd=seed)
    git("push", "--quiet", "origin", "claude/changelog", cwd=seed)
    theirs = branches(origin)["claude/changelog"]
    checkout = await workspace.clone(str(origin), tmp_path / "ws" / "app")
    git("switch", "--quiet", "-c", "claude/changelog", "origin/main", cwd=checkout.path)
    (checkout.path / "y.txt").write_text("ours\n")
    git("add", "y.txt", cwd=checkout.path)
    git("commit", "--quiet", "-m", "ours", cwd=checkout.path)
    pushed = await deliver(checkout, tmp_path)
    assert [p.branch for p in pushed] == ["claude/changelog-ab12cd34"]
    assert branches(origin)["claude/changelog"] == theirs


@pytest.mark.parametrize("tamper", ["config", "commondir"])
async def test_tampered_git_metadata_stops_delivery(
    origin: Path, tmp_path: Path, tamper: str
) -> None:
    before = branches(origin)
    checkout = await workspace.clone(str(origin), tmp_path / "ws" / "app")
    (checkout.path / "NOTES.md").write_text("notes\n")
    if tamper == "config":
        with (checkout.path / ".git" / "config").open("a") as config:
            config.write("[core]\n\tfsmonitor = touch pwned\n")
    else:
        (checkout.path / ".git" / "commondir").write_text("../../elsewhere\n")
    with pytest.raises(workspace.GitError, match=f".git/{tamper}.*nothing was pushed"):
        await deliver(checkout, tmp_path)
    assert branches(origin) == before
    assert not (checkout.path / "pwned").exists()


async def test_planted_hooks_do_not_run_on_the_host(origin: Path, tmp_path: Path) -> None:
    checkout = await workspace.clone(str(origin), tmp_path / "ws" / "app")
    marker = tmp_path / "hook-ran"
    for hook in ("pre-commit", "pre-push", "post-checkout", "reference-transaction"):
        path = checkout.path / ".git" / "hooks" / hook
        path.write_text(f"#!/bin/sh\ntouch {marker}\n")
        path.chmod(0o755)
    (checkout.path / "NOTES.md").write_text("notes\n")
    assert [p.branch for p in await deliver(checkout, tmp_path)] == [OWN]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/srv/git/app.git", "app"),
        ("https://github.com/acme/web-app.git", "web-app"),
        ("git@github.com:acme/api.git", "api"),
        ("/srv/git/app/", "app"),
    ],
)
def test_checkout_names(url: str, expected: str) -> None:
    taken: set[str] = set()
    assert workspace.checkout_name(url, taken) == expected
    assert workspace.checkout_name(url, taken) == f"{expected}-2"
