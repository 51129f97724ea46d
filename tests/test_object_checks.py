"""Objects are checked before any push: a hostile agent's `.gitmodules` tricks, `.git`
entries in trees and broken trees never reach the origin.

Written as the attack: the agent commits (or leaves uncommitted) what git's fsck
refuses; the finishing step runs in the real sandbox, and the origin is a real bare
repository with git's defaults (no `receive.fsckObjects`), so whatever routined does
not refuse lands there. Debian 12's git 2.39 ignores `transfer.fsckObjects` when it
fetches from a bundle, which is how the work leaves the sandbox.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from routined import workspace
from routined.runs import outbox
from tests.conftest import branches, git
from tests.test_delivery import OWN, Run, make_run

pytestmark = pytest.mark.anyio


@pytest.fixture
async def run(origin: Path, tmp_path: Path) -> Run:
    return await make_run(origin, tmp_path)


def objects_of(repository: Path) -> set[str]:
    """Every object a repository holds, whether anything reaches it or not."""
    listing = git("cat-file", "--batch-all-objects", "--batch-check=%(objectname)", cwd=repository)
    return set(listing.split())


def hostile_gitmodules(marker: Path) -> str:
    """What an old git would run on a recursive clone: `touch marker`."""
    return f'[submodule "lib"]\n\tpath = lib\n\turl = --upload-pack=touch {marker}\n'


async def refused(run: Run) -> workspace.GitError:
    """Deliver, expecting the refusal: the origin must gain no ref and no object."""
    refs, objects = branches(run.origin), objects_of(run.origin)
    with pytest.raises(workspace.GitError) as caught:
        await run.deliver()
    assert getattr(caught.value, "code", None) == "unsafe_objects"
    assert branches(run.origin) == refs
    assert objects_of(run.origin) == objects
    return caught.value


async def test_a_gitmodules_url_that_is_an_option_is_refused_on_a_claude_branch(
    run: Run, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    git("switch", "--quiet", "-c", "claude/submodule", cwd=run.repo)
    (run.repo / ".gitmodules").write_text(hostile_gitmodules(marker))
    git("add", ".gitmodules", cwd=run.repo)
    git("commit", "--quiet", "-m", "add a submodule", cwd=run.repo)
    error = await refused(run)
    assert isinstance(error, outbox.UnsafeObjects)
    assert "gitmodulesUrl: disallowed submodule url: --upload-pack=touch" in str(error)
    assert str(error).startswith(f"{run.checkout.shown_url}: git's fsck refused")
    # A person who clones the origin recursively gets nothing of it either.
    victim = tmp_path / "victim"
    git("clone", "--quiet", "--recurse-submodules", str(run.origin), str(victim))
    assert not marker.exists()


async def test_the_same_left_uncommitted_is_refused(run: Run, tmp_path: Path) -> None:
    """The finishing script commits it (through its private index): still refused."""
    marker = tmp_path / "pwned"
    (run.repo / ".gitmodules").write_text(hostile_gitmodules(marker))
    (run.repo / "NOTES.md").write_text("notes\n")
    error = await refused(run)
    assert "gitmodulesUrl: disallowed submodule url" in str(error)
    assert not marker.exists()


def agent_tree(run: Run, *lines: str) -> None:
    """The agent commits, with git's plumbing (which checks no names), a tree of
    `mode type sha\\tname` lines on top of HEAD, on a claude/ branch."""
    made = subprocess.run(
        ["git", "mktree"], cwd=run.repo, input="".join(f"{line}\n" for line in lines),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    tree = made.stdout.strip()
    head = git("rev-parse", "HEAD", cwd=run.repo)
    commit = git("commit-tree", tree, "-p", head, "-m", "crafted", cwd=run.repo)
    git("update-ref", "refs/heads/claude/crafted", commit, cwd=run.repo)


def blob(run: Run, content: str) -> str:
    made = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"], cwd=run.repo, input=content,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return made.stdout.strip()


@pytest.mark.parametrize(
    ("name", "content", "mode", "words"),
    [
        # A submodule path git would take for an option.
        (".gitmodules", '[submodule "x"]\n\tpath = -x\n\turl = https://example.com/x\n',
         "100644", "gitmodulesPath: disallowed submodule path: -x"),
        # A submodule name that climbs out of .git/modules.
        (".gitmodules", '[submodule "../../hooks"]\n\tpath = x\n\turl = https://example.com/x\n',
         "100644", "gitmodulesName: disallowed submodule name: ../../hooks"),
        # A URL with a newline smuggled in (git's credential-helper CVE).
        (".gitmodules", '[submodule "x"]\n\tpath = x\n\turl = "https://example.com/x\\n"\n',
         "100644", "gitmodulesUrl: disallowed submodule url"),
        # .gitmodules as a link, which git would read through.
        (".gitmodules", "../../../.ssh/config", "120000", "gitmodulesSymlink"),
        # A .git entry in a tree, in any case: a checkout would write into .git.
        (".git", "[core]\n\tfsmonitor = touch pwned\n", "100644", "hasDotgit"),
        (".GIT", "[core]\n\tfsmonitor = touch pwned\n", "100644", "hasDotgit"),
    ],
)  # fmt: skip
async def test_crafted_trees_are_refused(
    run: Run, name: str, content: str, mode: str, words: str
) -> None:
    readme = git("rev-parse", "HEAD:README.md", cwd=run.repo)
    agent_tree(run, f"100644 blob {readme}\tREADME.md", f"{mode} blob {blob(run, content)}\t{name}")
    error = await refused(run)
    assert words in str(error)


async def test_a_tree_that_is_not_sorted_is_refused(run: Run) -> None:
    readme = git("rev-parse", "HEAD:README.md", cwd=run.repo)
    other = blob(run, "b\n")
    raw = b"100644 b\0" + bytes.fromhex(other) + b"100644 README.md\0" + bytes.fromhex(readme)
    tree = subprocess.run(
        ["git", "hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
        cwd=run.repo, input=raw, capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    head = git("rev-parse", "HEAD", cwd=run.repo)
    commit = git("commit-tree", tree, "-p", head, "-m", "crafted", cwd=run.repo)
    git("update-ref", "refs/heads/claude/crafted", commit, cwd=run.repo)
    error = await refused(run)
    assert "treeNotSorted" in str(error)


async def test_a_valid_submodule_still_delivers(run: Run) -> None:
    git("switch", "--quiet", "-c", "claude/submodule", cwd=run.repo)
    (run.repo / ".gitmodules").write_text(
        '[submodule "lib"]\n\tpath = lib\n\turl = https://github.com/example/lib.git\n'
    )
    pinned = "0123456789abcdef0123456789abcdef01234567"  # not here: a gitlink names it only
    git("update-index", "--add", "--cacheinfo", f"160000,{pinned},lib", cwd=run.repo)
    git("add", ".gitmodules", cwd=run.repo)
    git("commit", "--quiet", "-m", "add lib as a submodule", cwd=run.repo)
    (run.repo / "NOTES.md").write_text("notes\n")
    pushed = {p.branch for p in await run.deliver()}
    assert pushed == {"claude/submodule", OWN}
    listing = git("ls-tree", "claude/submodule", cwd=run.origin)
    assert f"160000 commit {pinned}\tlib" in listing.splitlines()


def zero_padded_origin(tmp_path: Path) -> Path:
    """An origin whose tree has a zero-padded file mode (`040000`, as some old tools
    wrote): fsck warns, and `--strict` would refuse, an object the origin already has."""
    bare = tmp_path / "old" / "app.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    seed = tmp_path / "old" / "seed"
    git("init", "--quiet", "--initial-branch=main", str(seed))
    for number in range(60):  # large enough a tree to be worth a delta
        (seed / f"file{number}.txt").write_text(f"content {number}\n")
    (seed / "sub").mkdir()
    (seed / "sub" / "s.txt").write_text("s\n")
    git("add", ".", cwd=seed)
    git("commit", "--quiet", "-m", "first", cwd=seed)
    entries = []
    for line in git("ls-tree", "HEAD", cwd=seed).splitlines():
        meta, name = line.split("\t")
        mode, _, sha = meta.split()
        entries.append((name, b"40000" if mode == "040000" else mode.encode(), sha))
    raw = b"".join(
        (b"0" + mode if mode == b"40000" else mode) + f" {name}\0".encode() + bytes.fromhex(sha)
        for name, mode, sha in sorted(
            entries, key=lambda e: e[0] + ("/" if e[1] == b"40000" else "")
        )
    )
    tree = subprocess.run(
        ["git", "hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
        cwd=seed, input=raw, capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    commit = git("commit-tree", tree, "-m", "old tools", cwd=seed)
    git("push", "--quiet", str(bare), f"{commit}:refs/heads/main", cwd=seed)
    assert (
        "zeroPaddedFilemode"
        in subprocess.run(["git", "fsck"], cwd=bare, capture_output=True, text=True).stderr
    )
    return bare


async def test_an_origin_with_old_warts_can_still_be_worked_on(tmp_path: Path) -> None:
    """The agent's new tree is sent as a delta against the origin's zero-padded one,
    which the fetch then appends to the pack: only what is new is judged."""
    origin = zero_padded_origin(tmp_path)
    run = await make_run(origin, tmp_path)
    (run.repo / "file1.txt").write_text("changed\n")
    [pushed] = await run.deliver()
    assert pushed.branch == OWN
    assert git("show", f"{OWN}:file1.txt", cwd=origin) == "changed"


def test_unsafe_objects_are_a_git_failure_with_a_code() -> None:
    """Code that knows only git failures still stops there; the run's code is named."""
    assert issubclass(outbox.UnsafeObjects, workspace.GitError)
    assert outbox.UnsafeObjects.code == "unsafe_objects"
