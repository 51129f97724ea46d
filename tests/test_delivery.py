"""Delivery: what gets pushed where, and what the agent cannot make routined do.

The finishing step runs in the real sandbox; pushes go to a real bare origin.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from routined import workspace
from routined.runs import outbox, push, trailers
from routined.runs.outbox import AgentWork, LocalBranch
from routined.runs.push import Push
from routined.sandbox import bubblewrap
from tests.conftest import branches, git, push_commit

pytestmark = pytest.mark.anyio
OWN = "claude/nightly-ab12cd34"
RENAMED = "(only claude/ branches are pushed)"
SESSION_URL = "http://routined.test/sessions/session_01TEST"
ROUTINED = ("routined", "routined@localhost")  # who routined's and the agent's commits are by


def work(
    *branches_: tuple[str, str],
    head: str | None = None,
    detached: str | None = None,
    leftovers: str | None = None,
) -> AgentWork:
    return AgentWork(tuple(LocalBranch(n, s) for n, s in branches_), head, detached, leftovers)


@pytest.mark.parametrize(
    ("agent_work", "expected"),
    [
        # Nothing new anywhere: nothing to push.
        (work(head="main"), []),
        # Leftover changes on main: one commit onto the run's own branch.
        (work(head=None, leftovers="s1"), [Push("s1", OWN, "uncommitted changes on a detached HEAD")]),
        (work(("main", "m1"), head="main", leftovers="s1"), [Push("s1", OWN, "uncommitted changes on main")]),
        # The agent's own claude/ branch keeps its name.
        (work(("claude/fix", "c1"), head="claude/fix"), [Push("c1", "claude/fix", "branch claude/fix")]),
        # Commits on main are not lost: pushed under the run's own branch.
        (work(("main", "m1"), head="main"), [Push("m1", OWN, f"branch main {RENAMED}")]),
        # Several other branches: each under its own suffix.
        (work(("feature/x", "f1"), ("main", "m1"), head="main"),
         [Push("f1", f"{OWN}-feature-x", f"branch feature/x {RENAMED}"),
          Push("m1", f"{OWN}-main", f"branch main {RENAMED}")]),
        # Committed on the own branch as told, and left changes too: pushed once.
        (work((OWN, "o1"), head=OWN, leftovers="s1"), [Push("s1", OWN, f"uncommitted changes on {OWN}")]),
        # Leftovers on another claude/ branch: both the branch and the leftovers.
        (work(("claude/fix", "c1"), head="claude/fix", leftovers="s1"),
         [Push("s1", OWN, "uncommitted changes on claude/fix"), Push("c1", "claude/fix", "branch claude/fix")]),
        # A detached HEAD with new commits is kept.
        (work(detached="d1"), [Push("d1", OWN, f"a detached HEAD {RENAMED}")]),
        # "claude/" alone is not a branch under the prefix.
        (work(("claude/", "x1"), head="claude/"), [Push("x1", OWN, f"branch claude/ {RENAMED}")]),
    ],
)  # fmt: skip
def test_plan(agent_work: AgentWork, expected: list[Push]) -> None:
    assert push.plan(agent_work, own_branch=OWN, default_branch="main") == expected


def test_plan_refuses_an_own_branch_outside_the_prefix() -> None:
    with pytest.raises(ValueError, match="refusing to push outside claude/"):
        push.plan(work(("main", "m1")), own_branch="main", default_branch="main")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("docs-nightly", "docs-nightly"), ("a..b", "a-b"), ("Fix.lock", "fix-lock"), ("__", "work")],
)
def test_slugs_make_valid_branch_names(name: str, expected: str) -> None:
    assert push.slug(name) == expected
    git("check-ref-format", f"refs/heads/claude/{push.slug(name)}-ab12cd34")


@dataclass
class Run:
    checkout: workspace.Checkout
    run_dir: Path
    origin: Path

    @property
    def repo(self) -> Path:
        return self.checkout.path

    async def deliver(
        self,
        masked: list[Path] | None = None,
        *,
        rules: push.PushRules = push.RESTRICTED,
        own_branch: str = OWN,
    ) -> list[push.Pushed]:
        # The test wrote the agent's work as root: the sandbox's user owns it, as
        # it would had the agent written it.
        await workspace.hand_over([self.repo], bubblewrap.owner(bubblewrap.SANDBOX_UID))
        layout = bubblewrap.finishing_layout(
            run_dir=self.run_dir,
            cwd=self.repo,
            readable=[self.checkout.mirror_objects],
            masked=masked or [],
        )
        env = {
            "PATH": bubblewrap.SYSTEM_PATH,
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "GIT_AUTHOR_NAME": ROUTINED[0],
            "GIT_AUTHOR_EMAIL": ROUTINED[1],
            "GIT_COMMITTER_NAME": ROUTINED[0],
            "GIT_COMMITTER_EMAIL": ROUTINED[1],
        }
        packing = outbox.Packing(
            sandboxed=lambda _: bubblewrap.bwrap_command(layout, Path("/bin/bash")),
            env=env,
            message=f"Leftovers\n\nRoutine-Session: {SESSION_URL}\n",
            session_url=SESSION_URL,
        )
        target = push.Target(own_branch, suffix="ab12cd34", author_email=ROUTINED[1], rules=rules)
        return await push.deliver(
            self.checkout, packing, target, scratch=self.run_dir / "private" / "delivery"
        )

    def commit(self, path: str, content: str, *, branch: str | None = None) -> str:
        """The agent commits `path`; returns the commit as delivery pushes it."""
        if branch:
            git("switch", "--quiet", "-c", branch, cwd=self.repo)
        (self.repo / path).parent.mkdir(parents=True, exist_ok=True)
        (self.repo / path).write_text(content)
        git("add", path, cwd=self.repo)
        git("commit", "--quiet", "-m", f"add {path}", cwd=self.repo)
        return self.delivered(git("rev-parse", "HEAD", cwd=self.repo))

    def delivered(self, sha: str) -> str:
        """The agent's commit `sha` as delivery writes it again: the session's trailer
        after its message, its parents as delivered. Made with git's plumbing alone,
        for messages without trailers of their own, as the test's are. A commit the
        origin has is never written again."""
        on_origin = subprocess.run(
            ["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=self.origin, capture_output=True
        )
        if on_origin.returncode == 0:
            return sha
        header, _, message = git("cat-file", "commit", sha, cwd=self.repo).partition("\n\n")
        parents = [
            f"parent {self.delivered(line.removeprefix('parent '))}"
            if line.startswith("parent ")
            else line
            for line in header.splitlines()
        ]
        rewritten = "\n".join(parents) + f"\n\n{message}\n\nRoutine-Session: {SESSION_URL}\n"
        made = subprocess.run(
            ["git", "hash-object", "-t", "commit", "--stdin"],
            cwd=self.repo, input=rewritten, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return made.stdout.strip()


async def make_run(origin: Path, tmp_path: Path, mirror: workspace.Mirror | None = None) -> Run:
    """A run's checkout of `origin`, cloned from `mirror` (by default the origin
    itself, as routined does for a local origin)."""
    run_dir = tmp_path / "home" / "runs" / "run_test"
    for folder in ("workspace", "home", "tmp", "private"):
        (run_dir / folder).mkdir(parents=True)
    if mirror is None:
        mirror = await workspace.sync_mirror(str(origin), tmp_path / "home" / "mirrors")
    checkout = await workspace.clone(mirror, run_dir / "workspace" / "app")
    return Run(checkout, run_dir, origin)


@pytest.fixture
async def run(origin: Path, tmp_path: Path) -> Run:
    return await make_run(origin, tmp_path)


async def test_leftover_changes_land_on_the_own_branch_and_main_is_untouched(run: Run) -> None:
    before = branches(run.origin)
    (run.repo / "NOTES.md").write_text("notes\n")
    (run.repo / "README.md").write_text("# app, edited\n")
    pushed = await run.deliver()
    assert [(p.branch, p.source) for p in pushed] == [(OWN, "uncommitted changes on main")]
    assert branches(run.origin)["main"] == before["main"]
    assert git("show", f"{OWN}:NOTES.md", cwd=run.origin) == "notes"
    assert git("log", "-1", "--format=%an|%s", OWN, cwd=run.origin) == "routined|Leftovers"
    assert git("rev-parse", f"{OWN}^", cwd=run.origin) == before["main"]
    # HEAD and the real index stay as the agent left them.
    assert git("status", "--porcelain", cwd=run.repo) == "M README.md\n?? NOTES.md"


async def test_every_delivered_commit_names_its_session_and_keeps_the_rest(run: Run) -> None:
    """The agent's commits get the session's trailer once (the leftover commit has it
    already, and a commit that names it is left as it is); trees, authors and dates stay."""
    base = run.checkout.base
    first = git("rev-parse", "HEAD", cwd=run.repo)
    run.commit("one.txt", "1\n")
    git("commit", "--quiet", "--allow-empty", "-m", "empty, with trailers\n\n"
        f"Co-authored-by: A <a@example.com>\nRoutine-Session: {SESSION_URL}", cwd=run.repo)  # fmt: skip
    agent_head = git("rev-parse", "HEAD", cwd=run.repo)
    (run.repo / "NOTES.md").write_text("notes\n")
    [pushed] = await run.deliver()
    assert pushed.branch == OWN
    pushed_log = git(
        "log", "--format=%H%n%T|%an|%ae|%ad|%cn|%cd%n%B%n--", f"{first}..{OWN}", cwd=run.origin
    )
    agent_log = git(
        "log", "--format=%T|%an|%ae|%ad|%cn|%cd", f"{first}..{agent_head}", cwd=run.repo
    )
    commits = [c.strip().split("\n", 2) for c in pushed_log.split("\n--") if c.strip()]
    messages = [message.strip() for _, _, message in commits]
    assert messages == [
        f"Leftovers\n\nRoutine-Session: {SESSION_URL}",
        f"empty, with trailers\n\nCo-authored-by: A <a@example.com>\nRoutine-Session: {SESSION_URL}",
        f"add one.txt\n\nRoutine-Session: {SESSION_URL}",
    ]
    assert [meta for _, meta, _ in commits[1:]] == agent_log.splitlines()
    assert git("rev-parse", f"{OWN}~3", cwd=run.origin) == first in base


def agent_commit(run: Run, raw: str) -> str:
    """A commit object the agent writes by hand (as other git tools may), made HEAD."""
    made = subprocess.run(
        ["git", "hash-object", "-t", "commit", "-w", "--stdin"],
        cwd=run.repo, input=raw, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    git("reset", "--quiet", "--soft", made, cwd=run.repo)
    return made


async def test_a_message_without_its_final_newline_gets_the_trailer_in_a_paragraph(
    run: Run,
) -> None:
    head = git("rev-parse", "HEAD", cwd=run.repo)
    tree = git("rev-parse", "HEAD^{tree}", cwd=run.repo)
    who = "A <a@example.com> 1700000000 +0000"
    agent_commit(run, f"tree {tree}\nparent {head}\nauthor {who}\ncommitter {who}\n\nFix stuff")
    await run.deliver()
    assert git("log", "-1", "--format=%s|%(trailers:key=Routine-Session,valueonly)", OWN,
               cwd=run.origin) == f"Fix stuff|{SESSION_URL}"  # fmt: skip


async def test_a_signature_is_dropped_since_it_would_no_longer_verify(run: Run) -> None:
    head = git("rev-parse", "HEAD", cwd=run.repo)
    tree = git("rev-parse", "HEAD^{tree}", cwd=run.repo)
    who = "A <a@example.com> 1700000000 +0000"
    signature = (
        "gpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEzBAABCAAd\n -----END PGP SIGNATURE-----"
    )
    signed = agent_commit(
        run, f"tree {tree}\nparent {head}\nauthor {who}\ncommitter {who}\n{signature}\n\nSigned\n"
    )
    assert "gpgsig" in git("cat-file", "commit", signed, cwd=run.repo)
    await run.deliver()
    delivered = git("cat-file", "commit", OWN, cwd=run.origin)
    assert "gpgsig" not in delivered
    assert delivered == (
        f"tree {tree}\nparent {head}\nauthor {who}\ncommitter {who}\n\n"
        f"Signed\n\nRoutine-Session: {SESSION_URL}"
    )


async def test_a_branch_past_the_most_commits_leaves_the_others_stamped(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trailers, "MOST_STAMPED", 1)
    git("switch", "--quiet", "-c", "claude/many", cwd=run.repo)
    run.commit("one.txt", "1\n")
    run.commit("two.txt", "2\n")
    many = git("rev-parse", "HEAD", cwd=run.repo)
    git("switch", "--quiet", "-c", "claude/one", "main", cwd=run.repo)
    one = run.commit("three.txt", "3\n")
    pushed = {p.branch: p.sha for p in await run.deliver()}
    assert pushed == {"claude/many": many, "claude/one": one}


async def test_agent_branches_keep_their_names_and_other_work_is_renamed(run: Run) -> None:
    theirs = run.commit("CHANGELOG.md", "# Changelog\n\n- more\n", branch="claude/changelog")
    git("switch", "--quiet", "main", cwd=run.repo)
    on_main = run.commit("main.txt", "on main\n")
    main_before = branches(run.origin)["main"]
    pushed = await run.deliver()
    assert sorted(p.branch for p in pushed) == ["claude/changelog", OWN]
    after = branches(run.origin)
    assert (after["main"], after["claude/changelog"], after[OWN]) == (main_before, theirs, on_main)


async def test_nothing_new_pushes_nothing(run: Run) -> None:
    before = branches(run.origin)
    assert await run.deliver() == []
    assert branches(run.origin) == before


async def test_an_existing_branch_is_never_moved_not_even_forward(run: Run) -> None:
    """Someone's reviewed claude/ branch: the agent builds on it; routined pushes a new one."""
    colleague = run.run_dir.parent.parent.parent / "colleague"
    reviewed = push_commit(run.origin, colleague, "x.txt", "reviewed\n", "claude/reviewed")
    git("fetch", "--quiet", "origin", cwd=run.repo)
    git("switch", "--quiet", "-c", "claude/reviewed", "origin/claude/reviewed", cwd=run.repo)
    sneaky = run.commit("y.txt", "slipped in\n")
    pushed = await run.deliver()
    assert [(p.branch, p.sha) for p in pushed] == [("claude/reviewed-ab12cd34", sneaky)]
    assert branches(run.origin)["claude/reviewed"] == reviewed


async def test_nested_repositories_cannot_run_code_on_the_host(run: Run, tmp_path: Path) -> None:
    """A filter in a nested repository runs when git walks the work tree. It may run
    inside the sandbox, where it can reach nothing, but never on the host."""
    marker = tmp_path / "pwned"
    nested = run.repo / "sub"
    git("init", "--quiet", str(nested))
    git("config", "filter.evil.clean", f"sh -c 'touch {marker}; cat'", cwd=nested)
    (nested / ".gitattributes").write_text("f filter=evil\n")
    (nested / "f").write_text("one\n")
    git("add", ".", cwd=nested)
    git("commit", "--quiet", "-m", "nested", cwd=nested)
    git("add", "sub", cwd=run.repo)
    (nested / "f").write_text("two\n")
    marker.unlink(missing_ok=True)
    await run.deliver()
    assert not marker.exists()


async def test_hidden_repositories_cannot_be_smuggled_out(run: Run, tmp_path: Path) -> None:
    """Alternates and a symlinked ref that point at a repository the sandbox hides."""
    secret = tmp_path / "secret"
    git("init", "--quiet", str(secret))
    (secret / "id_rsa").write_text("-----BEGIN PRIVATE KEY-----\n")
    git("add", "id_rsa", cwd=secret)
    git("commit", "--quiet", "-m", "key", cwd=secret)
    alternates = run.repo / ".git" / "objects" / "info" / "alternates"
    with alternates.open("a") as lines:
        lines.write(f"{secret / '.git' / 'objects'}\n")
    (run.repo / ".git" / "refs" / "heads" / "claude").mkdir(parents=True)
    (run.repo / ".git" / "refs" / "heads" / "claude" / "loot").symlink_to(
        secret / ".git" / "refs" / "heads" / "main"
    )
    with contextlib.suppress(workspace.GitError):  # refusing is as good as skipping
        await run.deliver()
    for branch in branches(run.origin):
        listing = git("ls-tree", "-r", "--name-only", branch, cwd=run.origin)
        assert "id_rsa" not in listing.split()


async def test_planted_hooks_do_not_run_on_the_host(run: Run, tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    for hook in ("pre-commit", "pre-push", "post-checkout", "reference-transaction"):
        path = run.repo / ".git" / "hooks" / hook
        path.write_text(f"#!/bin/sh\ntouch {marker}\n")
        path.chmod(0o755)
    (run.repo / "NOTES.md").write_text("notes\n")
    assert [p.branch for p in await run.deliver()] == [OWN]
    assert not marker.exists()


async def test_links_planted_in_the_workspace_mount_nothing_during_delivery(
    run: Run, tmp_path: Path
) -> None:
    """After the session, a path in the workspace may be a link to a folder the
    sandbox hides; delivery must not mount it, nor read the agent's home config."""
    hidden = tmp_path / "service-home"
    (hidden / ".ssh").mkdir(parents=True)
    (hidden / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    hooks = run.repo / ".git" / "hooks"
    for planted in hooks.iterdir():
        planted.unlink()
    hooks.rmdir()
    hooks.symlink_to(os.path.relpath(hidden, hooks.parent))
    (run.run_dir / "home" / ".gitconfig").write_text(
        f"[core]\n\tfsmonitor = cp -r {hidden} {run.repo}/loot\n"
    )
    (run.repo / "NOTES.md").write_text("notes\n")
    layout = bubblewrap.finishing_layout(
        run_dir=run.run_dir, cwd=run.repo, readable=[run.checkout.mirror_objects], masked=[hidden]
    )
    looked = subprocess.run(
        [*bubblewrap.bwrap_command(layout, Path("/bin/cat")), str(hidden / ".ssh" / "id_ed25519")],
        capture_output=True,
        text=True,
    )
    assert "PRIVATE KEY" not in looked.stdout and "No such file" in looked.stderr
    pushed = await run.deliver(masked=[hidden])
    assert [p.branch for p in pushed] == [OWN]
    listing = git("ls-tree", "-r", "--name-only", OWN, cwd=run.origin).split()
    assert listing == ["CHANGELOG.md", "NOTES.md", "README.md"]


async def test_pushed_branches_say_what_they_change_against_the_default_branch(run: Run) -> None:
    git("switch", "--quiet", "-c", "claude/guide", cwd=run.repo)
    (run.repo / "GUIDE.md").write_text("one\ntwo\nthree\n")
    (run.repo / "CHANGELOG.md").write_text("")
    git("add", "--all", cwd=run.repo)
    git("commit", "--quiet", "-m", "a 3-line guide, a line less in the changelog", cwd=run.repo)
    git("switch", "--quiet", "main", cwd=run.repo)
    (run.repo / "README.md").write_text("# app, edited\n")
    pushed = {p.branch: p for p in await run.deliver()}
    guide, own = pushed["claude/guide"], pushed[OWN]
    assert (guide.files, guide.insertions, guide.deletions) == (2, 3, 1)
    assert (own.files, own.insertions, own.deletions) == (1, 1, 1)
    shown = guide.as_dict()
    assert (shown["files"], shown["insertions"], shown["deletions"]) == (2, 3, 1)
    assert push.total(list(pushed.values())) == {"files": 3, "insertions": 4, "deletions": 2}


def test_nothing_pushed_has_no_total() -> None:
    assert push.total([]) is None


async def test_changes_are_counted_from_where_the_checkout_had_the_default_branch(
    run: Run, tmp_path: Path
) -> None:
    """The origin's main moves during the session (a local origin is its own mirror):
    the colleague's file is neither the agent's insertion nor its deletion."""
    push_commit(run.origin, tmp_path / "colleague", "BIG.md", "x\n" * 10)
    run.commit("NEW.md", "a\nb\nc\n")
    [pushed] = await run.deliver()
    assert (pushed.files, pushed.insertions, pushed.deletions) == (1, 3, 0)


async def test_changes_to_an_empty_origin_count_every_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(empty))
    run = await make_run(empty, tmp_path)
    (run.repo / "FIRST.md").write_text("one\ntwo\n")
    [pushed] = await run.deliver()
    assert (pushed.branch, pushed.files, pushed.insertions, pushed.deletions) == (OWN, 1, 2, 0)


def test_a_rewritten_header_drops_signatures_and_names_the_new_parents() -> None:
    header = (
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
        b"parent aaaa\nparent bbbb\n"
        b"author A <a@example.com> 1700000000 +0000\n"
        b"committer A <a@example.com> 1700000000 +0000\n"
        b"gpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEzBAAB\n -----END PGP SIGNATURE-----\n"
        b"encoding ISO-8859-1"
    )
    assert trailers._header(header, {"bbbb": "cccc"}) == (
        b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
        b"parent aaaa\nparent cccc\n"
        b"author A <a@example.com> 1700000000 +0000\n"
        b"committer A <a@example.com> 1700000000 +0000\n"
        b"encoding ISO-8859-1"
    )
