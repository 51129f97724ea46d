"""Workspaces: fresh clones before the agent starts, delivery of its work after.

Delivery runs outside the sandbox, so it trusts nothing the agent wrote but git
objects and branch names: it checks that the repository's git metadata is the
one routined made, runs git with hooks and fsmonitor off, commits leftover
changes through a private index, and pushes only to branches under the
repository's prefix (`claude/`), never with force. That rule is enforced here,
in code the agent cannot reach, whatever the agent tried inside.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BRANCH_PREFIX = "claude/"

_REMOTE = re.compile(r"^([a-z][a-z0-9+.-]*://|[^/:]+@[^/:]+:)", re.IGNORECASE)

# Options for every git command routined runs on a workspace: nothing in the
# repository may run code on the host.
_SAFE = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")


class GitError(RuntimeError):
    """A git command failed; the message holds the command and git's own words."""


@dataclass(frozen=True)
class Checkout:
    url: str
    path: Path
    default_branch: str
    base: tuple[str, ...]
    config_digest: str
    # A local origin's objects, which the checkout reads instead of copying;
    # the sandbox shows them read-only.
    borrowed_objects: Path | None = None


@dataclass(frozen=True)
class LocalBranch:
    name: str
    sha: str
    has_new_commits: bool


@dataclass(frozen=True)
class Push:
    sha: str
    branch: str
    source: str


@dataclass(frozen=True)
class Pushed:
    repository: str
    branch: str
    sha: str
    source: str

    def as_dict(self) -> dict[str, str]:
        return {
            "repository": self.repository,
            "branch": self.branch,
            "sha": self.sha,
            "source": self.source,
        }


@dataclass(frozen=True)
class Author:
    name: str
    email: str

    def env(self) -> dict[str, str]:
        return {
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
        }


async def git(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> str:
    command = ["git", *_SAFE, *args]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})},
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate(stdin)
    if process.returncode != 0:
        said = " ".join(
            part.decode(errors="replace").strip() for part in (stdout, stderr) if part.strip()
        )
        raise GitError(f"git {' '.join(args)} exited {process.returncode}: {said}")
    return stdout.decode(errors="replace")


def checkout_name(url: str, taken: set[str]) -> str:
    """A folder name for a repository: its last path part without `.git`, made unique."""
    stem = re.sub(r"\.git$", "", url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1])
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip(".-") or "repository"
    name, number = stem, 2
    while name in taken:
        name, number = f"{stem}-{number}", number + 1
    taken.add(name)
    return name


async def clone(url: str, destination: Path) -> Checkout:
    """A fresh checkout of the default branch that shares no writable file with its origin."""
    # A local origin is already on this machine: the checkout borrows its objects
    # (--shared) rather than copying them. Never hard links (git's default for
    # local paths): the agent could write through them into the origin.
    # The agent cannot change .git/config, so branching from origin/… must not
    # try to record tracking there.
    borrowed = local_objects(url)
    await git(
        "clone", "--shared" if borrowed else "--no-local", "--quiet",
        "--config", "branch.autoSetupMerge=false", "--", url, str(destination),
    )  # fmt: skip
    # One look at the refs gives both what the origin had and its default branch.
    listing = await git(
        "for-each-ref", "--format=%(objectname) %(refname) %(symref)",
        "refs/remotes", "refs/tags", cwd=destination,
    )  # fmt: skip
    base, default_branch = set(), None
    for line in listing.splitlines():
        sha, name, *target = line.split(" ")
        base.add(sha)
        if name == "refs/remotes/origin/HEAD" and target and target[0]:
            default_branch = target[0].removeprefix("refs/remotes/origin/")
    if default_branch is None:  # an empty origin has no branches yet
        default_branch = (await git("symbolic-ref", "--short", "HEAD", cwd=destination)).strip()
    return Checkout(
        url=url,
        path=destination,
        default_branch=default_branch,
        base=tuple(sorted(base)),
        config_digest=_digest(destination / ".git" / "config"),
        borrowed_objects=borrowed,
    )


def local_objects(url: str) -> Path | None:
    """The objects folder of a repository given as a local path (or file:// URL)."""
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    elif _REMOTE.match(url):
        return None
    root = Path(url)
    for objects in (root / "objects", root / ".git" / "objects"):
        if objects.is_dir():
            return objects.resolve()
    return None


def protected_paths(checkout: Checkout) -> list[Path]:
    """Paths the agent must not change: they would run code when routined uses git."""
    git_dir = checkout.path / ".git"
    return [git_dir / "config", git_dir / "hooks"]


def check_untouched(checkout: Checkout) -> None:
    """Refuse to deliver from a repository whose git metadata is not routined's."""
    git_dir = checkout.path / ".git"
    if git_dir.is_symlink() or not git_dir.is_dir():
        raise GitError(f"{checkout.path}: .git is no longer a folder; nothing was pushed")
    for redirect in ("commondir", "gitdir"):
        if (git_dir / redirect).exists():
            raise GitError(f"{checkout.path}: .git/{redirect} appeared; nothing was pushed")
    if _digest(git_dir / "config") != checkout.config_digest:
        raise GitError(f"{checkout.path}: .git/config was changed; nothing was pushed")


def plan(
    branches: Sequence[LocalBranch],
    *,
    head_branch: str | None,
    detached_head: LocalBranch | None,
    snapshot: str | None,
    own_branch: str,
    prefix: str = BRANCH_PREFIX,
) -> list[Push]:
    """Which commits to push where. Pure: every target is under `prefix`.

    1. Leftover changes, committed by routined on top of HEAD, go to `own_branch`.
    2. Branches the agent made under the prefix keep their names.
    3. Work on any other branch (or a detached HEAD) is not lost: it goes under
       the prefix, as `own_branch` when it is the only such work, otherwise as
       `own_branch-<name>`. The branch HEAD is on is skipped when the leftover
       commit already carries its commits.
    """
    pushes: list[Push] = []
    if snapshot is not None:
        source = f"uncommitted changes on {head_branch or 'a detached HEAD'}"
        pushes.append(Push(snapshot, own_branch, source))
    renamed: list[tuple[str, LocalBranch]] = []
    for branch in branches:
        if not branch.has_new_commits:
            continue
        if branch.name.startswith(prefix) and branch.name != prefix:
            pushes.append(Push(branch.sha, branch.name, f"branch {branch.name}"))
        elif not (snapshot is not None and branch.name == head_branch):
            renamed.append((branch.name, branch))
    if (
        detached_head is not None
        and detached_head.has_new_commits
        and snapshot is None
        and all(detached_head.sha != b.sha for b in branches)
    ):
        renamed.append(("detached", detached_head))
    alone = snapshot is None and len(renamed) == 1
    for label, branch in renamed:
        target = own_branch if alone else f"{own_branch}-{_slug(label)}"
        origin = "a detached HEAD" if label == "detached" else f"branch {label}"
        pushes.append(Push(branch.sha, target, f"{origin} (only {prefix} branches are pushed)"))
    for push in pushes:
        if not push.branch.startswith(prefix):
            raise ValueError(f"refusing to push outside {prefix}: {push.branch}")
    return pushes


async def deliver(
    checkout: Checkout,
    *,
    own_branch: str,
    author: Author,
    message: str,
    scratch: Path,
    suffix: str,
    prefix: str = BRANCH_PREFIX,
) -> list[Pushed]:
    """Push what the agent left in `checkout` to its origin, under `prefix`.

    `suffix` (the run's short id) tells apart a branch whose name is already taken.
    """
    check_untouched(checkout)
    repo = checkout.path
    head = await _head(repo)
    head_branch = await _head_branch(repo)
    snapshot = await _commit_leftovers(repo, head, author, message, scratch)
    listing = await git(
        "for-each-ref", "--format=%(objectname) %(refname:short)", "refs/heads", cwd=repo
    )
    tips = [line.split(" ", 1) for line in listing.splitlines() if line]
    fresh = await _with_new_commits(
        repo, [sha for sha, _ in tips] + ([head] if head else []), checkout.base
    )
    branches = [LocalBranch(name, sha, sha in fresh) for sha, name in tips]
    detached = LocalBranch("HEAD", head, head in fresh) if head and not head_branch else None
    pushes = plan(
        branches,
        head_branch=head_branch,
        detached_head=detached,
        snapshot=snapshot,
        own_branch=own_branch,
        prefix=prefix,
    )
    if not pushes:
        return []
    return await _push(checkout, pushes, prefix=prefix, suffix=suffix)


async def _head(repo: Path) -> str | None:
    try:
        return (await git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=repo)).strip()
    except GitError:
        return None  # an unborn branch: the origin was empty and nothing was committed


async def _head_branch(repo: Path) -> str | None:
    try:
        return (await git("symbolic-ref", "--quiet", "--short", "HEAD", cwd=repo)).strip()
    except GitError:
        return None


async def _commit_leftovers(
    repo: Path, head: str | None, author: Author, message: str, scratch: Path
) -> str | None:
    """Commit the work tree as it is, through a private index; HEAD is left alone."""
    status = await git("status", "--porcelain=v1", "-z", "--untracked-files=all", cwd=repo)
    if not status:
        return None
    index = scratch / f"index-{repo.name}"
    real_index = repo / ".git" / "index"
    if real_index.is_file() and not real_index.is_symlink():
        shutil.copyfile(real_index, index)  # keeps stat data, so unchanged files are not re-read
    env = {"GIT_INDEX_FILE": str(index), **author.env()}
    if not index.exists():
        await git("read-tree", *([head] if head else ["--empty"]), cwd=repo, env=env)
    await git("add", "--all", cwd=repo, env=env)
    tree = (await git("write-tree", cwd=repo, env=env)).strip()
    parents = ["-p", head] if head else []
    commit = await git("commit-tree", tree, *parents, "-m", message, cwd=repo, env=env)
    index.unlink(missing_ok=True)
    return commit.strip()


async def _with_new_commits(repo: Path, tips: list[str], base: Sequence[str]) -> set[str]:
    """The tips that hold at least one commit the origin did not have at clone time."""
    fresh = set()
    exclusions = "".join(f"^{sha}\n" for sha in base)
    for tip in set(tips):
        count = await git(
            "rev-list",
            "--count",
            "--ignore-missing",
            "--stdin",
            cwd=repo,
            stdin=f"{tip}\n{exclusions}".encode(),
        )
        if int(count.strip() or 0) > 0:
            fresh.add(tip)
    return fresh


async def _push(
    checkout: Checkout, pushes: list[Push], *, prefix: str, suffix: str
) -> list[Pushed]:
    """Push each planned branch, never forcing; a name already taken gets the run's suffix."""
    pushed = []
    for push in pushes:
        for branch in (push.branch, f"{push.branch}-{suffix}"):
            if not branch.startswith(prefix):
                raise GitError(f"refusing to push outside {prefix}: {branch}")
            try:
                await git(
                    "push",
                    "--porcelain",
                    "--",
                    checkout.url,
                    f"{push.sha}:refs/heads/{branch}",
                    cwd=checkout.path,
                )
            except GitError as error:
                if branch != push.branch or "rejected" not in str(error):
                    raise
                continue
            pushed.append(Pushed(checkout.url, branch, push.sha, push.source))
            break
    return pushed


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.").lower() or "work"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
