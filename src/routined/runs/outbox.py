"""Finishing: what the agent left leaves its sandbox as git objects, into an outbox.

Once the agent has stopped, routined never runs git on the host in a repository the
agent could change:

1. Inside the sandbox (no network), a script commits what the agent left
   uncommitted (through a private index: HEAD and the agent's index stay as
   they are) and packs every branch with new commits into a git bundle.
2. Outside, the bundle is fetched into an outbox: a bare repository routined owns
   that borrows the mirror's objects. Every object it brought is then checked with
   git's fsck (`check_objects`): git 2.39 (Debian 12's) ignores `transfer.fsckObjects`
   when it fetches from a bundle, so the check is made on the pack the fetch stored.
   Anything fsck flags (`.gitmodules` tricks, `.git` in a tree, broken objects) ends
   it with `UnsafeObjects`: nothing of that work leaves the outbox.
3. There every new commit gets the session's trailer (`routined.runs.trailers`).

What is in the outbox then is `AgentWork`, which `routined.runs.push` plans and pushes
(and `routined.runs.kept` keeps, when a run delivers nothing).
"""

from __future__ import annotations

import asyncio
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from routined.runs import trailers
from routined.workspace import Checkout, GitError, git, git_bytes

FINISH_TIMEOUT = 600.0
LEFTOVERS = "refs/routined/leftovers"
DETACHED = "refs/routined/detached"
_BRANCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_SAID_LIMIT = 65536
BUNDLE_LIMIT = 2 * 1024**3
_FSCK_SAID = re.compile(r"\berror: (.+)")
# What `index-pack --strict` says when it refuses objects, rather than failing.
_FSCK_REFUSALS = ("fsck error", "Not all child objects", "did not receive expected object")

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
class Packing:
    """How a run's work is packed, the same for a delivery and for kept work.

    `sandboxed(cwd)` is the command line that runs bash in the run's finishing sandbox
    (no network) working in `cwd`; `env` its environment; `message` the message of the
    commit that takes the agent's uncommitted work; `session_url` what the trailer of
    every new commit names.
    """

    sandboxed: Callable[[Path], list[str]]
    env: dict[str, str]
    message: str
    session_url: str


class UnsafeObjects(GitError):
    """git's fsck refused objects the agent's work brought: none of it may leave the
    outbox. The message holds git's own words; `code` is the run's failure code.

    A `GitError`, so that code which knows only git failures still stops there."""

    code = "unsafe_objects"


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


async def pack(checkout: Checkout, packing: Packing, scratch: Path) -> AgentWork | None:
    """Pack the agent's work in `checkout` into a fresh outbox, `outbox_of(scratch)`:
    the finishing script runs in the sandbox, and what it bundled is checked and
    fetched (`collect`). None if the agent left nothing new."""
    bundle = scratch / "agent.bundle"
    command = packing.sandboxed(checkout.path)
    said = await finish(command, packing.env, packing.message, checkout, bundle)
    return await collect(
        checkout,
        bundle=bundle,
        said=said,
        outbox=outbox_of(scratch),
        session_url=packing.session_url,
    )


def outbox_of(scratch: Path) -> Path:
    """The outbox `pack` fills in `scratch`."""
    return scratch / "outbox.git"


async def collect(
    checkout: Checkout, *, bundle: Path, said: str, outbox: Path, session_url: str
) -> AgentWork | None:
    """Fetch the finishing script's bundle into a fresh outbox, its new commits given
    the session's trailer; None if nothing was new. Raises `UnsafeObjects` when git's
    fsck refuses any object it brought.

    `bundle` holds the script's stdout and `said` its stderr. Nothing in them is
    trusted: every object is checked before any other git command reads it, and
    HEAD's branch counts only if the bundle has that branch. A folder beside the
    outbox (`<outbox>.fsck`) serves the check.
    """
    if bundle.stat().st_size == 0:
        if "Refusing to create empty bundle" in said:
            return None
        # On a line of its own: cut at its start, a secret's end is still known there.
        raise GitError(f"{checkout.shown_url}: could not pack the agent's work:\n{said[-2000:]}")
    await git("init", "--quiet", "--bare", str(outbox))
    (outbox / "objects" / "info" / "alternates").write_text(f"{checkout.mirror_objects}\n")
    # transfer.fsckObjects is for gits that honour it with bundles; 2.39 does not,
    # hence check_objects.
    await git(
        "-c", "transfer.fsckObjects=true", "fetch", "--quiet", "--no-write-fetch-head",
        str(bundle), "+refs/*:refs/agent/*", cwd=outbox, confined=True,
    )  # fmt: skip
    await check_objects(outbox, checkout, outbox.with_name(outbox.name + ".fsck"))
    await trailers.stamp(outbox, "refs/agent", checkout.base, session_url)
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


async def check_objects(outbox: Path, checkout: Checkout, scratch: Path) -> None:
    """Check every object a fetch stored in `outbox` with git's fsck, as strictly as
    `transfer.fsckObjects` checks a push or a fetch; raise `UnsafeObjects` with git's
    words for anything it flags. Only what is new is read, never the whole mirror.

    1. A fetch from a bundle stores what it got as packs in the outbox's own object
       folder (never as loose objects), with the delta bases the bundle lacked
       appended from the mirror. Anything else there is refused.
    2. Objects of those packs that the mirror has already are the origin's: trees,
       commits and tags among them go on fsck's skip list, so that an origin with
       old warts (a zero-padded file mode in a tree the agent's work is a delta
       against) can still be worked on. Blobs never do: fsck judges a blob only when
       a tree it checks names it `.gitmodules` or `.gitattributes`.
    3. `git index-pack --strict` reads each pack again in a repository of its own
       (`scratch`) that borrows only the mirror's objects: every object is checked
       and every link it makes must lead to an object there or in the pack.
    """
    objects = outbox / "objects"
    loose = [folder.name for folder in objects.glob("[0-9a-f][0-9a-f]") if any(folder.iterdir())]
    if loose:
        raise GitError(
            f"{checkout.shown_url}: the fetch of the agent's work left loose objects, "
            "which the check does not cover; nothing is delivered"
        )
    await git("init", "--quiet", "--bare", str(scratch))
    (scratch / "objects" / "info" / "alternates").write_text(f"{checkout.mirror_objects}\n")
    for pack in sorted((objects / "pack").glob("*.pack")):
        index = await git_bytes(
            "show-index", cwd=scratch, stdin=pack.with_suffix(".idx").read_bytes()
        )
        names = [line.split()[1] for line in index.decode().splitlines()]
        known = await git(
            "cat-file", "--batch-check=%(objectname) %(objecttype)", cwd=scratch,
            stdin="".join(f"{name}\n" for name in names).encode(), confined=True,
        )  # fmt: skip
        skipped = [
            line.split()[0]
            for line in known.splitlines()
            if line.split()[1:] not in (["missing"], ["blob"])
        ]
        # Named relative to the folder git runs in: fsck's option list is split at
        # commas, which an absolute path could hold.
        (scratch / "skip").write_text("".join(f"{name}\n" for name in skipped))
        try:
            await git(
                "index-pack", "--strict=skiplist=skip", "-o", str(scratch / "check.idx"),
                str(pack), cwd=scratch, confined=True,
            )  # fmt: skip
        except GitError as error:
            said = str(error)
            if not any(refusal in said for refusal in _FSCK_REFUSALS):
                raise
            words = "; ".join(_FSCK_SAID.findall(said)) or said.rsplit(": ", 1)[-1]
            raise UnsafeObjects(
                f"{checkout.shown_url}: git's fsck refused the agent's work, so none of it "
                f"is delivered: {words[:2000]}"
            ) from None
        finally:
            (scratch / "check.idx").unlink(missing_ok=True)
