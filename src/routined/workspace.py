"""Workspaces: a mirror per origin that routined owns, and fresh checkouts borrowing from it.

Each repository's objects live in a mirror outside the sandbox: a bare copy
under `$ROUTINED_HOME/mirrors`, refreshed with `git fetch` before each run, or,
for an origin that is already a repository on this machine, the origin itself.
A run's checkout is a `git clone --shared` of the mirror: a fresh checkout of the
default branch that copies no objects and can write none of the mirror's (the
sandbox shows the mirror's objects read-only). Credentials in a repository URL
are used here, outside the sandbox, and never written into a checkout.

So that a run need not wait for its clone, routined keeps one checkout per
repository of a routine on standby, made after the routine's previous run. If
the mirror has not moved since it was made (same refs, same HEAD), it is exactly
the fresh clone the run would have made; if it has, it is brought up to the
mirror in place (fetch, check out the default branch, drop other branches and
anything untracked), which writes only the files that changed.

Over 500 lines and still one concept: git as routined runs it (confined, bounded,
credentials outside), with the mirrors and checkouts it makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import resource
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ParamSpec
from urllib.parse import urlsplit, urlunsplit

from routined.errors import OutsideFailure

GIT_TIMEOUT = 900.0
CONFINED_MEMORY = 4 * 1024**3
CONFINED_CPU_SECONDS = 300

_P = ParamSpec("_P")

_REMOTE = re.compile(r"^([a-z][a-z0-9+.-]*://|[^/:]+@[^/:]+:)", re.IGNORECASE)

# Options for every git command routined runs: nothing in a repository may run
# code on the host (routined only runs git in repositories it owns, but says so).
_SAFE = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")


class GitError(OutsideFailure, RuntimeError):
    """A git command failed; the message holds the command and git's own words."""


@dataclass(frozen=True)
class Mirror:
    url: str
    path: Path
    objects: Path
    default_branch: str | None  # None: the checkout's origin/HEAD says

    def checkout(self, path: Path, default_branch: str, base: Iterable[str]) -> Checkout:
        """The checkout of this mirror at `path`, its origin's refs at `base`."""
        return Checkout(
            url=self.url,
            path=path,
            default_branch=default_branch,
            base=tuple(sorted(base)),
            mirror_objects=self.objects,
        )


@dataclass(frozen=True)
class Checkout:
    """A repository cloned for one run."""

    url: str  # as the routine gives it; may hold credentials, never shown
    path: Path
    default_branch: str
    base: tuple[str, ...]  # every commit the origin's refs pointed at
    mirror_objects: Path
    # git options for every talk with the origin: for a routine that may reach public
    # addresses only, where the origin's name was judged to be (`reach.git_pin`).
    network: tuple[str, ...] = ()

    @property
    def shown_url(self) -> str:
        return display_url(self.url)


async def git_bytes(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    secret: str | None = None,
    time_limit: float = GIT_TIMEOUT,
    confined: bool = False,
    umask: int | None = None,
) -> bytes:
    """Run git; on failure raise GitError with its words. The answer is what git wrote,
    as it wrote it (a commit's message may be in any encoding); `git` decodes it.

    `secret`, a URL with credentials, never appears on the command line (where
    other local users could read it) nor in errors: git is given the URL
    without them and told, through its environment, to use the one with them.
    `confined` caps memory and CPU time, for git reading data the agent made.
    `umask`, when given, is git's instead of routined's own (which keeps what it
    writes private): for writing into a repository that is not routined's.
    """
    extra = dict(env or {})
    if secret:
        shown = display_url(secret)
        args = tuple(shown if arg == secret else arg for arg in args)
        if shown != secret:
            extra |= {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": f"url.{secret}.insteadOf",
                "GIT_CONFIG_VALUE_0": shown,
            }
    # routined runs git on the host only in repositories it made: its mirrors and
    # outboxes, and checkouts before their agent starts. Those are handed to the
    # sandbox user, so git would refuse them as someone else's.
    ours = ("-c", f"safe.directory={cwd.resolve()}") if cwd is not None else ()
    # A session of its own: git's helpers (git-remote-https, index-pack) go with it
    # when it is stopped. The variable names its starter, so a git outliving a
    # routined that was killed outright is found and ended (`reap_orphans`).
    process = await asyncio.create_subprocess_exec(
        "git",
        *_SAFE,
        *ours,
        *args,
        cwd=cwd,
        env={
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
            **extra,
            OWNER_VARIABLE: _owner_token(),
        },
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        # Only resource limits and the umask: system calls, safe after fork.
        preexec_fn=(
            functools.partial(_prepare_child, confined, umask)
            if confined or umask is not None
            else None
        ),
    )
    try:
        async with asyncio.timeout(time_limit):
            stdout, stderr = await process.communicate(stdin)
    except TimeoutError:
        raise GitError(f"git {' '.join(args)} took longer than {time_limit:g} s") from None
    finally:
        # Timed out, or the caller was cancelled (a run's cancel, the server stopping):
        # git and every helper it started.
        if process.returncode is None:
            _kill_group(process.pid)
            await asyncio.shield(process.wait())
    if process.returncode != 0:
        said = " ".join(
            part.decode(errors="replace").strip() for part in (stdout, stderr) if part.strip()
        )
        message = f"git {' '.join(args)} exited {process.returncode}: {said}"
        if secret:
            message = message.replace(secret, display_url(secret))
        raise GitError(message)
    return stdout


def _decoding(run: Callable[_P, Awaitable[bytes]]) -> Callable[_P, Awaitable[str]]:
    async def decoded(*args: _P.args, **kwargs: _P.kwargs) -> str:
        return (await run(*args, **kwargs)).decode(errors="replace")

    return decoded


# What most callers want: git's answer as text. Made from `git_bytes`, so that the two
# take the same options by construction.
git = _decoding(git_bytes)


# Set on every git routined starts: "PID:START", its starter's process id and
# start time (so a reused process id is not taken for the starter).
OWNER_VARIABLE = "ROUTINED_GIT_STARTER"


def _owner_token() -> str:
    return f"{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    """When a process started, in clock ticks since boot ("" if it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _kill_group(leader: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)


def reap_orphans() -> list[int]:
    """Kill the git processes (with their helpers) of routined processes that are
    gone: a git started by a server killed outright may wait on a stalled remote
    for ever, and its timeout died with the server. Returns the groups killed."""
    killed: set[int] = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = environ.read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        prefix = OWNER_VARIABLE.encode() + b"="
        token = next((v[len(prefix) :] for v in variables if v.startswith(prefix)), None)
        if token is None:
            continue
        starter, _, started = token.decode(errors="replace").partition(":")
        if starter.isdigit() and _start_time(int(starter)) == started:
            continue  # its starter lives, and will end it
        pid = int(environ.parent.name)
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if group not in killed and group != os.getpgrp():
            _kill_group(group)
            killed.add(group)
    return sorted(killed)


def _prepare_child(confined: bool, umask: int | None) -> None:
    if umask is not None:
        os.umask(umask)
    if confined:
        # Limits for git working on what the agent made: a crafted pack cannot
        # take the host's memory or a core for ever.
        resource.setrlimit(resource.RLIMIT_AS, (CONFINED_MEMORY, CONFINED_MEMORY))
        resource.setrlimit(resource.RLIMIT_CPU, (CONFINED_CPU_SECONDS, CONFINED_CPU_SECONDS))


def display_url(url: str) -> str:
    """The URL without any user name or password in it."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def local_repository(url: str) -> Path | None:
    """The git folder of a repository given as a local path or file:// URL, if it is one."""
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    elif _REMOTE.match(url):
        return None
    root = Path(url)
    for git_dir in (root, root / ".git"):
        if (git_dir / "objects").is_dir() and (git_dir / "HEAD").is_file():
            return git_dir.resolve()
    return None


def checkout_name(url: str, taken: set[str]) -> str:
    """A folder name for a repository: its last path part without `.git`, made unique."""
    stem = re.sub(r"\.git$", "", url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1])
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip(".-") or "repository"
    name, number = stem, 2
    while name in taken:
        name, number = f"{stem}-{number}", number + 1
    taken.add(name)
    return name


def mirror_of(url: str, mirrors: Path) -> Mirror:
    """The mirror of `url` as it stands, without asking the origin."""
    local = local_repository(url)
    if local is not None:
        return Mirror(url, local, local / "objects", None)
    shown = display_url(url)
    slug = re.sub(r"[^a-z0-9]+", "-", shown.lower().rsplit("/", 2)[-1])[-40:].strip("-")
    path = mirrors / f"{slug}-{hashlib.sha256(shown.encode()).hexdigest()[:12]}.git"
    return Mirror(url, path, path / "objects", None)


async def sync_mirror(
    url: str, mirrors: Path, *, owner: int | None = None, network: Sequence[str] = ()
) -> Mirror:
    """The mirror of `url`, brought up to date with the origin (git given `network`'s
    options, see `Checkout.network`); readable by the group `owner` (the sandbox
    user, whose checkouts borrow its objects) when given."""
    mirror = mirror_of(url, mirrors)
    if local_repository(url) is not None:
        return mirror  # a local origin is its own mirror: always current
    path = mirror.path
    async with _locked(path.with_suffix(".lock")):
        if not (path / "HEAD").exists():
            await git("init", "--quiet", "--bare", str(path))
        if owner is not None:
            await _share(path, owner)
        advertised = await git(*network, "ls-remote", "--symref", url, "HEAD", secret=url)
        match = re.search(r"^ref: refs/heads/(\S+)\tHEAD$", advertised, re.MULTILINE)
        branch = match.group(1) if match else "main"
        await git(
            *network, "fetch", "--quiet", "--prune", "--no-write-fetch-head", url,
            "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
            cwd=path, secret=url,
        )  # fmt: skip
        await git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=path)
    return Mirror(url, path, mirror.objects, branch)


async def _share(repository: Path, group: int) -> None:
    """Let `group` read a repository routined owns, now and whatever git adds later:
    git keeps what it writes group-readable (and no more) and, through set-group-id
    folders, in that group."""
    wanted = "0640"
    try:
        shared = (await git("config", "--get", "core.sharedRepository", cwd=repository)).strip()
    except GitError:
        shared = ""
    if shared == wanted and repository.stat().st_gid == group:
        return
    await git("config", "core.sharedRepository", wanted, cwd=repository)
    for command in (
        ("chgrp", "-R", "-P", "-h", str(group), "--", str(repository)),
        ("chmod", "-R", "g+rX,o-rwx", "--", str(repository)),
        ("find", str(repository), "-type", "d", "-exec", "chmod", "g+s", "--", "{}", "+"),
    ):
        await _run(command)


async def hand_over(paths: Sequence[Path], owner: int | None) -> None:
    """Give the sandbox user (`owner`, None: the sandbox runs as routined itself) what
    it may change: the checkouts, the run's home and temporary folder. Links are
    changed themselves, never followed."""
    existing = [str(path) for path in paths if path.exists()]
    if owner is not None and existing:
        await _run(("chown", "-R", "-P", "-h", f"{owner}:{owner}", "--", *existing))


async def _run(command: Sequence[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, said = await process.communicate()
    finally:
        if process.returncode is None:  # cancelled: half a change is finished, not left
            await asyncio.shield(process.wait())
    if process.returncode != 0:
        raise GitError(f"{command[0]} exited {process.returncode}: {said.decode().strip()}")


async def clone(mirror: Mirror, destination: Path, *, owner: int | None = None) -> Checkout:
    """A fresh checkout of the default branch, borrowing the mirror's objects, given to
    `owner` (see `hand_over`)."""
    # The agent cannot change .git/config (the sandbox shows it read-only), so
    # branching from origin/… must not try to record tracking there.
    await git(
        "clone", "--shared", "--quiet", "--config", "branch.autoSetupMerge=false",
        "--", str(mirror.path), str(destination),
    )  # fmt: skip
    if local_repository(mirror.url) is None:
        await git("remote", "set-url", "origin", display_url(mirror.url), cwd=destination)
    base, default_branch = await _origin_refs(destination)
    if default_branch is None:
        default_branch = mirror.default_branch
    if default_branch is None:  # an empty origin: no branch yet, HEAD names the future one
        default_branch = (await git("symbolic-ref", "--short", "HEAD", cwd=destination)).strip()
    await hand_over([destination], owner)
    return mirror.checkout(destination, default_branch, base)


async def _origin_refs(path: Path) -> tuple[set[str], str | None]:
    """Every commit the origin's refs point at in a checkout, and its default branch
    (None: origin/HEAD is not known), in one look at the refs."""
    listing = await git(
        "for-each-ref", "--format=%(objectname) %(refname) %(symref)",
        "refs/remotes", "refs/tags", cwd=path,
    )  # fmt: skip
    base, default_branch = set(), None
    for line in listing.splitlines():
        sha, name, *target = line.split(" ")
        base.add(sha)
        if name == "refs/remotes/origin/HEAD" and target and target[0]:
            default_branch = target[0].removeprefix("refs/remotes/origin/")
    return base, default_branch


async def fetch_pull_head(
    checkout: Checkout, number: int, *, owner: int | None = None
) -> tuple[Checkout, str]:
    """Fetch pull request `number`'s head (GitHub's `refs/pull/N/head`) as the local
    branch `pr/N`; return the checkout, which now counts that head as the origin's
    (so it is not delivered as new work), and the branch name."""
    branch = f"pr/{number}"
    mirror = checkout.mirror_objects.parent
    if local_repository(checkout.url) is None:
        async with _locked(mirror.with_suffix(".lock")):
            await git(
                *checkout.network, "fetch", "--quiet", "--no-write-fetch-head", checkout.url,
                f"+refs/pull/{number}/head:refs/pull/{number}/head",
                cwd=mirror, secret=checkout.url,
            )  # fmt: skip
    await git(
        "fetch", "--quiet", "--no-write-fetch-head", str(mirror),
        f"+refs/pull/{number}/head:refs/heads/{branch}",
        cwd=checkout.path,
    )  # fmt: skip
    head = (await git("rev-parse", f"refs/heads/{branch}", cwd=checkout.path)).strip()
    await hand_over([checkout.path / ".git"], owner)
    return replace(checkout, base=tuple(sorted({*checkout.base, head}))), branch


async def mirror_state(mirror: Mirror) -> str:
    """What a checkout of the mirror depends on: its branches, tags and HEAD."""
    head, refs = await asyncio.gather(
        git("symbolic-ref", "--quiet", "HEAD", cwd=mirror.path),
        git("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags",
            cwd=mirror.path),
    )  # fmt: skip
    return hashlib.sha256(f"{head}\n{refs}".encode()).hexdigest()


async def take_standby(
    mirror: Mirror, standby: Path, destination: Path, *, owner: int | None = None
) -> Checkout | None:
    """The checkout waiting on standby, moved to `destination`, brought up to the
    mirror first if the origin has moved since it was made; `owner`'s (see
    `hand_over`), which it already is when it was made for the same owner."""
    taken = standby / f"taken-{secrets.token_hex(4)}"
    try:
        (standby / "ready").rename(taken)  # only one run can take it
    except OSError:
        return None
    try:
        state = json.loads((taken / "state.json").read_text())
        # Compared as shown: the run's URL may carry an installation token minted for
        # it, which the standby's never does.
        if display_url(str(state.get("url"))) != display_url(mirror.url):
            return None
        current = state.get("mirror") == await mirror_state(mirror)
        if state.get("owner") != owner:
            return None  # made for another sandbox user (the setting changed)
        destination.parent.mkdir(parents=True, exist_ok=True)
        (taken / "repo").rename(destination)
        if not (destination / ".git" / "HEAD").is_file():
            destination.rename(taken / "repo")
            return None
        if current:
            return Checkout(
                url=mirror.url,
                path=destination,
                default_branch=state["default_branch"],
                base=tuple(state["base"]),
                mirror_objects=mirror.objects,
            )
        try:
            caught_up = await _catch_up(mirror, destination)
            await hand_over([destination], owner)
            return caught_up
        except GitError:
            destination.rename(taken / "repo")  # not half a checkout: the run clones
            return None
    except (OSError, ValueError, KeyError, GitError):
        return None
    finally:
        # What is left (a stale checkout) is thrown away when the next one is
        # readied, not while this run waits.
        with contextlib.suppress(OSError):
            taken.rename(standby / f"trash-{secrets.token_hex(4)}")


async def _catch_up(mirror: Mirror, path: Path) -> Checkout:
    """A standby checkout brought up to the mirror as it is now: what a fresh clone of
    it would be, with only the files that changed written (a clone writes every
    file, which for a large repository is nearly all of its cost)."""
    await git(
        "fetch", "--quiet", "--prune", "--no-write-fetch-head", "--", str(mirror.path),
        "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*", cwd=path,
    )  # fmt: skip
    branch = mirror.default_branch or (
        (await git("symbolic-ref", "--short", "HEAD", cwd=mirror.path)).strip()
    )
    remote = f"refs/remotes/origin/{branch}"
    await git("symbolic-ref", "refs/remotes/origin/HEAD", remote, cwd=path)
    await git("checkout", "--quiet", "--force", "-B", branch, remote, cwd=path)
    # A fresh clone has the default branch alone, and nothing that is not tracked.
    local = await git("for-each-ref", "--format=%(refname:short)", "refs/heads", cwd=path)
    others = [name for name in local.split() if name != branch]
    if others:
        await git("branch", "--quiet", "-D", *others, cwd=path)
    await git("clean", "--quiet", "-ffdx", cwd=path)
    base, _ = await _origin_refs(path)
    return mirror.checkout(path, branch, base)


async def prepare_standby(mirror: Mirror, standby: Path, *, owner: int | None = None) -> None:
    """Make the checkout the next run will take, unless one is waiting already."""
    for leftover in standby.glob("trash-*"):
        await remove(leftover)
    if (standby / "ready").exists():
        return
    standby.mkdir(parents=True, exist_ok=True)
    building = standby / f"building-{secrets.token_hex(4)}"
    try:
        state = await mirror_state(mirror)
        checkout = await clone(mirror, building / "repo", owner=owner)
        record = {
            "url": mirror.url,
            "mirror": state,
            "owner": owner,
            "default_branch": checkout.default_branch,
            "base": list(checkout.base),
        }
        (building / "state.json").write_text(json.dumps(record))
        with contextlib.suppress(OSError):  # another standby got there first
            building.rename(standby / "ready")
    finally:
        await remove(building)


async def remove(path: Path) -> None:
    """Delete a folder tree, however deep, without following links in it, whatever
    modes an agent left in it."""
    for command in _removal(path):
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await asyncio.shield(process.wait())  # half a removal is worse than a late one


def remove_now(path: Path) -> None:
    """`remove`, for code that runs in a thread of its own."""
    for command in _removal(path):
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _removal(path: Path) -> tuple[tuple[str, ...], ...]:
    # An agent can take away its own write permission on what it made (and a copy
    # keeps it); rm -rf would then stop halfway (not as root, which ignores modes).
    # chmod -R follows no links.
    return (
        ("chmod", "-R", "u+rwX", "--", str(path)),
        ("rm", "-rf", "--one-file-system", "--", str(path)),
    )


async def committed(checkout: Checkout, paths: Sequence[str]) -> str:
    """What the checkout's HEAD has at `paths` (files, or every file of folders), as
    `git ls-tree -z` says it (entries end with NUL): blob ids read from git's objects,
    so a link in the work tree leads nowhere. Nothing for an empty repository."""
    if not await _has_head(checkout.path):
        return ""
    return await git(
        "--literal-pathspecs", "ls-tree", "-r", "-z", "--full-tree", "HEAD", "--", *paths,
        cwd=checkout.path,
    )  # fmt: skip


async def _has_head(path: Path) -> bool:
    try:
        await git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=path)
    except GitError:
        return False
    return True


def protected_paths(checkout: Checkout) -> list[Path]:
    """Paths the agent must not change: they would run code when git is used on the checkout."""
    git_dir = checkout.path / ".git"
    return [git_dir / "config", git_dir / "hooks"]


@contextlib.asynccontextmanager
async def _locked(lock_file: Path) -> AsyncIterator[None]:
    """One fetch into a mirror at a time, across processes."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
