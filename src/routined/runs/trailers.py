"""Trailers: every commit a run delivers names the session that made it.

The agent's commits are written again in the outbox (the bare repository routined
delivers from) with `Routine-Session: <session URL>` added to their messages, as
`git interpret-trailers` adds a trailer, unless they carry it already. Their trees,
authors, committers and dates stay as they were; a signature is dropped, since it
would no longer verify. Commits the origin had are never touched, so a branch
built on the origin's history still moves forward only.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from routined.workspace import git, git_bytes

KEY = "Routine-Session"
# More new commits than any agent session makes; past it work is delivered as it is
# rather than spend minutes writing it again.
MOST_STAMPED = 1000
# push.MAX_PUSHES branches, the leftovers and a detached HEAD: with more refs, the
# work is not delivered at all.
MAX_REFS = 52
_SIGNATURES = (b"gpgsig ", b"gpgsig-sha256 ")
# trailer.* settings of the host's user would change what is written.
_NO_HOST_CONFIG = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}


async def stamp(outbox: Path, refs_under: str, known: Collection[str], session_url: str) -> None:
    """Give the commits reachable from the refs under `refs_under`, and neither from
    the commits in `known` nor from the refs of the outbox's alternate (the mirror),
    the session's trailer; move the refs to what was written.

    At most MOST_STAMPED commits are written in all, the branches with the fewest new
    commits first; a branch that does not fit is left as it is. Past MAX_REFS refs
    nothing is: such work is refused for delivery anyway."""
    listing = await git("for-each-ref", "--format=%(objectname) %(refname)", refs_under, cwd=outbox)
    refs = [line.split(" ", 1) for line in listing.splitlines()]
    if len(refs) > MAX_REFS:
        return
    news = [(await _new_commits(outbox, tip, known), tip, ref) for tip, ref in refs]
    trailer = f"{KEY}: {session_url}"
    written: dict[str, str] = {}  # commit → as written again; the same for every ref
    for new, tip, ref in sorted(news, key=lambda found: len(found[0])):
        unwritten = [sha for sha in new if sha not in written]
        if len(written) + len(unwritten) > MOST_STAMPED:
            continue
        for sha in unwritten:
            written[sha] = await _stamped(outbox, sha, trailer, written)
        if written.get(tip, tip) != tip:
            await git("update-ref", ref, written[tip], tip, cwd=outbox)


async def _new_commits(outbox: Path, tip: str, known: Collection[str]) -> list[str]:
    """The commits of `tip` that are new, parents first (more than MOST_STAMPED
    means too many): reachable neither from what the checkout saw nor from anything
    the mirror (the outbox's alternate) has now, so that no commit of the origin is
    ever written again, even were one the checkout saw gone from the mirror."""
    wanted = [tip, *(f"^{sha}" for sha in known)]
    listed = await git(
        "rev-list", f"--max-count={MOST_STAMPED + 1}", "--topo-order", "--ignore-missing",
        "--stdin", "--not", "--alternate-refs",  # on the command line: stdin's lines stay
        cwd=outbox, stdin="\n".join(wanted).encode() + b"\n", confined=True,
    )  # fmt: skip
    return listed.split()[::-1]


async def _stamped(outbox: Path, sha: str, trailer: str, written: dict[str, str]) -> str:
    """`sha` written again with `trailer` and its parents as `written`; itself when
    nothing changes."""
    raw = await git_bytes("cat-file", "commit", sha, cwd=outbox, confined=True)
    header, _, message = raw.partition(b"\n\n")
    # A message without its final newline (some tools write them) would get the
    # trailer glued to its last line instead of in a paragraph of its own.
    ended = message if not message or message.endswith(b"\n") else message + b"\n"
    stamped = await git_bytes(
        "interpret-trailers", "--no-divider", "--if-exists", "addIfDifferent",
        "--trailer", trailer, cwd=outbox, stdin=ended, env=_NO_HOST_CONFIG,
    )  # fmt: skip
    if stamped.rstrip(b"\n") != message.rstrip(b"\n"):  # not only a newline added
        message = stamped
    rewritten = _header(header, written) + b"\n\n" + message
    if rewritten == raw:
        return sha
    made = await git("hash-object", "-t", "commit", "-w", "--stdin", cwd=outbox, stdin=rewritten)
    return made.strip()


def _header(header: bytes, written: dict[str, str]) -> bytes:
    """The commit's header with its parents as written again, and without signatures
    (a header line's continuation lines start with a space)."""
    kept: list[bytes] = []
    dropping = False
    for line in header.split(b"\n"):
        if line.startswith(b" "):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.startswith(_SIGNATURES)
        if dropping:
            continue
        if line.startswith(b"parent "):
            parent = line.removeprefix(b"parent ").decode()
            line = b"parent " + written.get(parent, parent).encode()
        kept.append(line)
    return b"\n".join(kept)
