"""Trailers: every commit a run delivers names the session that made it.

The agent's commits are written again in the outbox (the bare repository routined
delivers from) with `Routine-Session: <session URL>` added to their messages, as
`git interpret-trailers` adds a trailer, unless they carry it already. Their trees,
authors, committers and dates stay as they were; a signature is dropped, since it
would no longer verify. Commits the origin had are never touched, so a branch
built on the origin's history still moves forward only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from routined.workspace import git, git_bytes

KEY = "Routine-Session"
# More new commits than any agent session makes; past it a run's work is delivered as
# it is rather than spend minutes writing it again.
MOST_STAMPED = 1000
_SIGNATURES = (b"gpgsig ", b"gpgsig-sha256 ")
# trailer.* settings of the host's user would change what is written.
_NO_HOST_CONFIG = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}


async def stamp(outbox: Path, refs_under: str, known: Iterable[str], session_url: str) -> int:
    """Give the commits reachable from the refs under `refs_under`, and neither from
    the commits in `known` nor from the refs of the outbox's alternate (the mirror),
    the session's trailer; move the refs to what was written.
    Returns how many commits were written again (0 when there were more than
    MOST_STAMPED)."""
    listing = await git("for-each-ref", "--format=%(objectname) %(refname)", refs_under, cwd=outbox)
    refs = [line.split(" ", 1) for line in listing.splitlines()]
    if not refs:
        return 0
    # New: not reachable from what the checkout saw, nor from anything the mirror
    # (the outbox's alternate) has now, so that no commit of the origin is ever
    # written again, even were one the checkout saw gone from the mirror.
    wanted = [sha for sha, _ in refs] + [f"^{sha}" for sha in known]
    listed = await git(
        "rev-list", "--reverse", "--topo-order", "--ignore-missing", "--stdin",
        "--not", "--alternate-refs",  # on the command line: the lines read stay as they are
        cwd=outbox, stdin="\n".join(wanted).encode() + b"\n", confined=True,
    )  # fmt: skip
    order = listed.split()
    if len(order) > MOST_STAMPED:
        return 0
    trailer = f"{KEY}: {session_url}"
    written: dict[str, str] = {}
    for sha in order:
        raw = await git_bytes("cat-file", "commit", sha, cwd=outbox, confined=True)
        header, _, message = raw.partition(b"\n\n")
        stamped = await git_bytes(
            "interpret-trailers", "--no-divider", "--if-exists", "addIfDifferent",
            "--trailer", trailer, cwd=outbox, stdin=message, env=_NO_HOST_CONFIG,
        )  # fmt: skip
        if stamped.rstrip(b"\n") != message.rstrip(b"\n"):  # not only a newline added
            message = stamped
        rewritten = _header(header, written) + b"\n\n" + message
        if rewritten == raw:
            continue
        made = await git(
            "hash-object", "-t", "commit", "-w", "--stdin", cwd=outbox, stdin=rewritten
        )
        written[sha] = made.strip()
    for sha, ref in refs:
        if sha in written:
            await git("update-ref", ref, written[sha], sha, cwd=outbox)
    return len(written)


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
