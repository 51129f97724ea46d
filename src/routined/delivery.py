"""Delivery: the agent's work leaves as git objects and lands only on `claude/` branches.

routined never runs git on the host in a repository the agent could change. Once
the agent has stopped:

1. Inside the sandbox (no network), a script commits what the agent left
   uncommitted (through a private index: HEAD and the agent's index stay as
   they are) and packs every branch with new commits into a git bundle.
2. Outside, the bundle is fetched, with every object checked (`fsck`), into an
   outbox: a bare repository routined owns that borrows the mirror's objects.
3. `plan` decides what goes where; every target is under the prefix.
4. Pushes go from the outbox to the origin. They never force, and never move a
   branch that already exists: a name already taken gets the run's suffix.
"""

from __future__ import annotations

import asyncio
import re
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from routined.workspace import Checkout, GitError, git, remove

BRANCH_PREFIX = "claude/"
FINISH_TIMEOUT = 600.0
LEFTOVERS = "refs/routined/leftovers"
DETACHED = "refs/routined/detached"
_BRANCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_SAID_LIMIT = 65536
BUNDLE_LIMIT = 2 * 1024**3
MAX_PUSHES = 50
# For every git command of the finishing script: no configuration but the
# repository's own (read-only during the session), no hooks, no fsmonitor.
_FINISH_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_COUNT": "2",
    "GIT_CONFIG_KEY_0": "core.hooksPath",
    "GIT_CONFIG_VALUE_0": "/dev/null",
    "GIT_CONFIG_KEY_1": "core.fsmonitor",
    "GIT_CONFIG_VALUE_1": "false",
}

# Runs inside the sandbox, in the repository: `bash -c FINISH_SCRIPT finish MESSAGE`, with
# the commits the origin had as `^sha` lines on stdin. The bundle goes to stdout;
# HEAD's branch is the last `routined-head:` line on stderr.
FINISH_SCRIPT = r"""
set -euo pipefail
message=$1
{
  head_branch=$(git symbolic-ref --quiet --short HEAD) || head_branch=
  head=$(git rev-parse --quiet --verify 'HEAD^{commit}') || head=
  changes=$(git status --porcelain --untracked-files=all --ignore-submodules=all)
  if [ -n "$changes" ]; then
    export GIT_INDEX_FILE="$TMPDIR/routined-index"
    cp .git/index "$GIT_INDEX_FILE" 2>/dev/null || git read-tree ${head:-"--empty"}
    git add --all
    tree=$(git write-tree)
    commit=$(git commit-tree "$tree" ${head:+-p "$head"} -m "$message")
    git update-ref "$LEFTOVERS" "$commit"
    unset GIT_INDEX_FILE
  fi
  if [ -n "$head" ] && [ -z "$head_branch" ]; then git update-ref "$DETACHED" "$head"; fi
  refs=(--branches)
  for ref in "$LEFTOVERS" "$DETACHED"; do
    if git rev-parse --quiet --verify "$ref" >/dev/null; then refs+=("$ref"); fi
  done
} >&2 </dev/null
echo "routined-head: $head_branch" >&2
exec git bundle create - "${refs[@]}" --stdin
""".replace("$LEFTOVERS", LEFTOVERS).replace("$DETACHED", DETACHED)


@dataclass(frozen=True)
class LocalBranch:
    name: str
    sha: str


@dataclass(frozen=True)
class AgentWork:
    """What the bundle held: branches with new commits, HEAD's branch, leftovers."""

    branches: tuple[LocalBranch, ...]
    head_branch: str | None
    detached_head: str | None
    leftovers: str | None


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


async def deliver(
    checkout: Checkout,
    *,
    sandboxed: list[str],
    env: dict[str, str],
    message: str,
    scratch: Path,
    own_branch: str,
    suffix: str,
    prefix: str = BRANCH_PREFIX,
) -> list[Pushed]:
    """Push what the agent left in `checkout` to its origin, under `prefix`.

    `sandboxed` is the command line that runs bash in the run's sandbox (without
    network) in the checkout; `scratch` a folder only routined can reach.
    """
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        bundle = scratch / "agent.bundle"
        said = await finish(sandboxed, env, message, checkout, bundle)
        outbox = scratch / "outbox.git"
        work = await collect(checkout, bundle=bundle, said=said, outbox=outbox)
        if work is None:
            return []
        pushes = plan(work, own_branch=own_branch, prefix=prefix)
        if len(pushes) > MAX_PUSHES:
            raise GitError(
                f"{checkout.shown_url}: the agent left {len(pushes)} branches to deliver; "
                f"at most {MAX_PUSHES} are pushed per repository"
            )
        return await push(checkout, outbox, pushes, suffix=suffix, prefix=prefix)
    finally:
        await remove(scratch)


async def finish(
    command: list[str],
    env: dict[str, str],
    message: str,
    checkout: Checkout,
    bundle: Path,
) -> str:
    """Run the finishing script in a sandbox; its bundle goes to `bundle`, and the end
    of what it said on stderr comes back. Everything is bounded (time, the bundle's
    size, what is kept of stderr): the workspace is the agent's."""
    with bundle.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *command,
            "-c",
            FINISH_SCRIPT,
            "finish",
            message,
            env={**env, **_FINISH_GIT_ENV},
            stdin=asyncio.subprocess.PIPE,
            stdout=sink,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_limit_file_size,
        )
        assert process.stdin is not None and process.stderr is not None
        said = bytearray()
        try:
            async with asyncio.timeout(FINISH_TIMEOUT):
                process.stdin.write("".join(f"^{sha}\n" for sha in checkout.base).encode())
                process.stdin.close()
                while chunk := await process.stderr.read(65536):
                    said = (said + chunk)[-_SAID_LIMIT:]
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    return said.decode(errors="replace")


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (BUNDLE_LIMIT, BUNDLE_LIMIT))


def plan(work: AgentWork, *, own_branch: str, prefix: str = BRANCH_PREFIX) -> list[Push]:
    """Which commits to push where. Pure: every target is under `prefix`.

    1. Leftover changes, committed on top of HEAD, go to `own_branch`; the branch
       HEAD is on is then not pushed separately when it is `own_branch` or outside
       the prefix, since the leftover commit carries its commits.
    2. Branches the agent made under the prefix keep their names.
    3. Work on any other branch (or a detached HEAD) is not lost: it goes under
       the prefix, as `own_branch` when it is the only such work, otherwise as
       `own_branch-<name>`.
    """
    if not own_branch.startswith(prefix):
        raise ValueError(f"refusing to push outside {prefix}: {own_branch}")
    pushes: list[Push] = []
    if work.leftovers is not None:
        source = f"uncommitted changes on {work.head_branch or 'a detached HEAD'}"
        pushes.append(Push(work.leftovers, own_branch, source))
    renamed: list[tuple[str, str]] = []
    for branch in work.branches:
        carried = work.leftovers is not None and branch.name == work.head_branch
        under_prefix = branch.name.startswith(prefix) and branch.name != prefix
        if carried and (branch.name == own_branch or not under_prefix):
            continue
        if under_prefix:
            pushes.append(Push(branch.sha, branch.name, f"branch {branch.name}"))
        else:
            renamed.append((branch.name, branch.sha))
    if work.detached_head is not None and work.leftovers is None:
        renamed.append(("detached", work.detached_head))
    alone = work.leftovers is None and len(renamed) == 1
    for label, sha in renamed:
        target = own_branch if alone else f"{own_branch}-{slug(label)}"
        origin = "a detached HEAD" if label == "detached" else f"branch {label}"
        pushes.append(Push(sha, target, f"{origin} (only {prefix} branches are pushed)"))
    return pushes


async def collect(checkout: Checkout, *, bundle: Path, said: str, outbox: Path) -> AgentWork | None:
    """Fetch the finishing script's bundle into a fresh outbox; None if nothing was new.

    `bundle` holds the script's stdout and `said` its stderr. Nothing in them is
    trusted: objects are checked as they are fetched, and HEAD's branch counts
    only if the bundle has that branch.
    """
    if bundle.stat().st_size == 0:
        if "Refusing to create empty bundle" in said:
            return None
        raise GitError(f"{checkout.shown_url}: could not pack the agent's work: {said[-2000:]}")
    await git("init", "--quiet", "--bare", str(outbox))
    (outbox / "objects" / "info" / "alternates").write_text(f"{checkout.mirror_objects}\n")
    await git(
        "-c", "transfer.fsckObjects=true", "fetch", "--quiet", "--no-write-fetch-head",
        str(bundle), "+refs/*:refs/agent/*", cwd=outbox, confined=True,
    )  # fmt: skip
    listing = await git(
        "for-each-ref", "--format=%(objectname) %(refname)", "refs/agent", cwd=outbox
    )
    branches, leftovers, detached = [], None, None
    for line in listing.splitlines():
        sha, ref = line.split(" ", 1)
        if ref == "refs/agent/" + LEFTOVERS.removeprefix("refs/"):
            leftovers = sha
        elif ref == "refs/agent/" + DETACHED.removeprefix("refs/"):
            detached = sha
        elif ref.startswith("refs/agent/heads/"):
            branches.append(LocalBranch(ref.removeprefix("refs/agent/heads/"), sha))
    marks = [line for line in said.splitlines() if line.startswith("routined-head: ")]
    head_branch = marks[-1].removeprefix("routined-head: ") if marks else ""
    if not _BRANCH_NAME.fullmatch(head_branch):
        head_branch = ""  # only a label: anything odd is dropped, not shown
    return AgentWork(tuple(branches), head_branch or None, detached, leftovers)


async def push(
    checkout: Checkout, outbox: Path, pushes: Sequence[Push], *, suffix: str, prefix: str
) -> list[Pushed]:
    """Push each planned branch as a new branch; a name already taken gets `-suffix`."""
    pushed = []
    for planned in pushes:
        for branch in (planned.branch, f"{planned.branch}-{suffix}"):
            if not branch.startswith(prefix):
                raise GitError(f"refusing to push outside {prefix}: {branch}")
            await git("check-ref-format", f"refs/heads/{branch}")
            try:
                # An empty lease means "only if the branch does not exist yet": the
                # agent cannot move a branch someone else made, even fast-forward.
                await git(
                    "push", "--porcelain", f"--force-with-lease=refs/heads/{branch}:",
                    "--", checkout.url, f"{planned.sha}:refs/heads/{branch}",
                    cwd=outbox, secret=checkout.url,
                )  # fmt: skip
            except GitError as error:
                if branch != planned.branch or "rejected" not in str(error):
                    raise
                continue
            pushed.append(Pushed(checkout.shown_url, branch, planned.sha, planned.source))
            break
    return pushed


def slug(text: str) -> str:
    """Lower-case letters, digits and single dashes: always part of a valid branch name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "work"
