"""Files too large to deliver: GitHub refuses a push with a file over 100 MiB, and
warns over 50 MiB. Delivery (`routined.runs.push`) measures the blobs the agent's work
adds, in the outbox, before anything is pushed: over the routine's
`limits.max_file_mb` (default 100) that repository's work is refused with
`FileTooLarge`; over half of it the run's events say so.

Sizes are git's own (`cat-file --batch-check`) on the outbox's objects, which git's
fsck has already checked: the agent's files are never read.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from routined.workspace import GitError, git_bytes

DEFAULT_MAX_FILE_MB = 100  # GitHub's limit per file
MIB = 1024**2
_SHOWN_PATH = 300  # a path is the agent's text: only so much of it is shown


class FileTooLarge(GitError):
    """The agent's work adds a file over the routine's limit: none of that
    repository's work is pushed. `code` is the run's failure code.

    A `GitError`, so that code which knows only git failures still stops there."""

    code = "file_too_large"


@dataclass(frozen=True)
class LargeFile:
    """A file of the agent's work, as git names it in the first commit that adds it."""

    path: str
    size: int  # bytes

    def shown(self) -> str:
        return f"{self.path} ({self.size / MIB:.1f} MiB)"


async def large_files(
    outbox: Path, tips: Sequence[str], known: Collection[str], *, over: int
) -> list[LargeFile]:
    """The files of the commits `tips` that are larger than `over` bytes and that
    neither the commits in `known` (what the run's checkout saw) nor the mirror (the
    outbox's alternate) have already, largest first.

    1. `rev-list --objects` names each new object once, a blob with a path it has.
    2. `cat-file --batch-check` gives each its type and size; `%(rest)` carries the
       path through.
    """
    if not tips:
        return []
    wanted = [*tips, *(f"^{sha}" for sha in known)]
    listed = await git_bytes(
        "rev-list", "--objects", "--ignore-missing",
        "--stdin", "--not", "--alternate-refs",  # on the command line: stdin's lines stay
        cwd=outbox, stdin="\n".join(wanted).encode() + b"\n", confined=True,
    )  # fmt: skip
    if not listed:
        return []
    checked = await git_bytes(
        "cat-file", "--batch-check=%(objecttype) %(objectsize) %(rest)",
        cwd=outbox, stdin=listed if listed.endswith(b"\n") else listed + b"\n", confined=True,
    )  # fmt: skip
    found = []
    for line in checked.decode(errors="replace").splitlines():
        # rev-list cuts a path at a newline (git 2.39): such a path is shown up to it.
        kind, _, rest = line.partition(" ")
        size, _, path = rest.partition(" ")
        if kind == "blob" and size.isdigit() and int(size) > over:
            found.append(LargeFile(path[:_SHOWN_PATH] or "(unnamed)", int(size)))
    return sorted(found, key=lambda file: (-file.size, file.path))


def refused(shown_url: str, too_large: Sequence[LargeFile], limit_mb: int) -> FileTooLarge:
    """The error for work with files over the limit: each named with its size."""
    listed = ", ".join(file.shown() for file in too_large[:10])
    more = f" and {len(too_large) - 10} more" if len(too_large) > 10 else ""
    return FileTooLarge(
        f"{shown_url}: the agent's work adds files over {limit_mb} MiB "
        f"(limits.max_file_mb), so none of it is delivered: {listed}{more}"
    )
