"""What is kept of a run that delivered nothing, in a form a person can inspect safely.

A run that ends without delivering (its delivery failed, it was cancelled, its setup
failed, routined hit a bug) leaves the agent's work in its workspace. Left as it is,
the workspace is a trap: the agent can move `.git`, plant `.git/commondir`, nest
repositories or lay out a bare one, each with a configuration of its own, and a
person's `git status` there runs its program (`core.fsmonitor`, `core.pager`, a
filter, `diff.external`). So `keep` turns it into:

- `runs/<run>/kept/<name>.bundle` for each checkout: the agent's branches, its
  uncommitted work and a detached HEAD, packed by delivery's own finishing script in
  the finishing sandbox and checked by git's fsck on the way out, exactly as for a
  delivery (`routined.runs.outbox`). Its refs are `refs/heads/<branch>`,
  `refs/routined/uncommitted` and `refs/routined/detached`. Listing a bundle's refs
  reads only its header, and fetching from it runs nothing of the agent's.
- `runs/<run>/workspace/<name>/`: the plain tree of the agent's files, sealed.
- `runs/<run>/kept/kept.json`: what was kept and why anything is missing, written
  last; `routined inspect RUN` reads it. Names are the agent's and may be any bytes:
  those that are not UTF-8 are written with `\\xNN` escapes for those bytes (as a
  shell's `$'…'` spells them), so the manifest is always text and always written.

Sealing (`seal`). git takes a folder for a repository when, in that folder or any
above it, it finds an entry `.git` (a folder, a file naming one elsewhere, or a link)
or a bare repository's layout: a `HEAD` beside `objects/` and `refs/`, or beside a
`commondir` file that says where those are. git 2.39's default
`safe.bareRepository=all` takes such a layout as it is, and reads its `config`. So:

1. Every entry named `.git`, in any letter case (a copy to a case-insensitive disk
   would make `.GIT` one), goes. It is metadata, not work: what it held of the
   agent's work is in the bundle. Renamed, it would still be a repository a person
   could `cd` into.
2. In every folder that holds a `HEAD` beside `objects`, `refs` or `commondir` (any
   one of them: wider than git's own rule, on purpose), `HEAD` is renamed
   `HEAD.routined-inert`: git needs it to see a repository there. Such a folder may
   be a repository's own test fixture (libgit2's are), so its files stay to be read.
3. Links become plain files holding their target, as git writes links with
   `core.symlinks=false`: a link could lead a person's `cd` out of the tree, into a
   folder the agent could write (the run's home). Fifos, sockets and device files
   go; no set-user-id or set-group-id bit stays.
4. Every `user.*` extended attribute of a file or folder goes: it is the agent's
   metadata, nothing a person needs to inspect the work, and a place a secret could
   hide that no one looks.
5. The folders above the plain tree are routined's own; `runs/<run>/workspace`
   itself, which the agent could write, is sealed with the rest.

A tree that cannot be sealed whole (a path too long to name, say) is removed, and
`kept.json` says so: half a seal would still be a trap.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shlex
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routined.ids import short
from routined.runs import outbox
from routined.runs.outbox import Packing
from routined.workspace import Checkout, GitError, git, remove, remove_now

KEPT = "kept"
MANIFEST = "kept.json"
UNCOMMITTED = "refs/routined/uncommitted"
DETACHED = "refs/routined/detached"
INERT_SUFFIX = ".routined-inert"
_REPOSITORY_MARKS = frozenset({"objects", "refs", "commondir"})
_LISTED = 200  # paths named in kept.json for each kind of change; the rest are counted
_AGENTS_ATTRIBUTES = "user."  # the one namespace of extended attributes the agent can write
NOT_A_CHECKOUT = "not a checkout the run recorded: only its files are kept"


@dataclass(frozen=True)
class Kept:
    """What is kept of one checkout's work; `missing` says why anything is not."""

    repository: str  # as shown: no credentials
    name: str  # the checkout's folder name under workspace/
    bundle: Path | None
    tree: Path | None
    refs: dict[str, str] = field(default_factory=dict)  # the bundle's refs → commits
    missing: tuple[str, ...] = ()

    def fetch_command(self, run_id: str) -> str | None:
        """The command that brings the bundle's work into a person's own clone, as
        remote-tracking refs of `run-<short run id>`; None without a bundle."""
        if self.bundle is None:
            return None
        remote = f"run-{short(run_id)}"
        specs = []
        if any(ref.startswith("refs/heads/") for ref in self.refs):
            specs.append(f"refs/heads/*:refs/remotes/{remote}/*")
        if any(ref.startswith("refs/routined/") for ref in self.refs):
            # A namespace of its own: the agent may have a branch named routined/….
            specs.append(f"refs/routined/*:refs/remotes/{remote}-routined/*")
        return shlex.join(["git", "fetch", str(self.bundle), *specs])

    def as_dict(self, run_dir: Path) -> dict[str, Any]:
        """As kept.json and the run's events hold it: text, whatever bytes names have."""
        return _shown(
            {
                "repository": self.repository,
                "name": self.name,
                "bundle": _relative(self.bundle, run_dir),
                "tree": _relative(self.tree, run_dir),
                "refs": self.refs,
                "missing": list(self.missing),
            }
        )


@dataclass
class Sealed:
    """What sealing took out of a tree, as paths relative to it (the first few)."""

    git_metadata: list[str] = field(default_factory=list)
    repository_heads: list[str] = field(default_factory=list)
    links: int = 0
    dropped: list[str] = field(default_factory=list)  # fifos, sockets, devices
    attributes: int = 0  # user.* extended attributes removed
    counts: dict[str, int] = field(default_factory=dict)

    def note(self, kind: str, path: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        listed: list[str] = getattr(self, kind)
        if len(listed) < _LISTED:
            listed.append(path)

    def as_dict(self) -> dict[str, Any]:
        """As kept.json holds it: text, whatever bytes the paths have."""
        return _shown(
            {
                "git_metadata": self.git_metadata,
                "repository_heads": self.repository_heads,
                "links": self.links,
                "dropped": self.dropped,
                "attributes": self.attributes,
                "counts": self.counts,
            }
        )


async def keep(run_dir: Path, checkouts: Sequence[Checkout], packing: Packing) -> list[Kept]:
    """Keep what the agent left in `run_dir`'s workspace, safely (see the module's
    docstring); never raises for the run's own failures: what is missing is said.

    `packing` is delivery's. Call it once the agent's sandbox is gone, with every
    checkout the run made (none if it made none). If cancelled, the workspace is
    still sealed and `kept.json` written before the cancellation goes on. Raises
    OSError only if the workspace could be neither sealed nor removed.
    """
    folder = run_dir / KEPT
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    packed: list[tuple[dict[str, str], str | None]] = []
    try:
        for number, checkout in enumerate(checkouts):
            packed.append(
                await _pack(
                    checkout,
                    packing,
                    scratch=run_dir / "private" / f"keep-{number}",
                    destination=folder / f"{checkout.path.name}.bundle",
                )
            )
    finally:
        # Whatever happened above (a cancel among it), the workspace is sealed: left
        # as the agent made it, it would run its code for the first person to look.
        while len(packed) < len(checkouts):
            packed.append(({}, "packing stopped before this work: the run was stopped"))
        sealed, unsealed = await asyncio.shield(
            asyncio.to_thread(_seal_workspace, run_dir / "workspace")
        )
        kept = [
            _kept(checkout, folder, refs, why, unsealed)
            for checkout, (refs, why) in zip(checkouts, packed, strict=True)
        ]
        kept += _other_trees(run_dir / "workspace", {c.path.name for c in checkouts})
        _write_manifest(folder, run_dir, kept, sealed, unsealed)
    return kept


async def _pack(
    checkout: Checkout, packing: Packing, *, scratch: Path, destination: Path
) -> tuple[dict[str, str], str | None]:
    """Pack the agent's work in `checkout` into the bundle `destination` as delivery
    would collect it (fsck-checked, each commit naming the session); its refs, or
    why there is no bundle."""
    if checkout.path.is_symlink() or not checkout.path.is_dir():
        return {}, "the run ended before this repository was checked out"
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        work = await outbox.pack(checkout, packing, scratch)
        objects = outbox.outbox_of(scratch)
        refs: dict[str, str] = {}
        if work is not None:
            refs |= {f"refs/heads/{branch.name}": branch.sha for branch in work.branches}
            refs |= {UNCOMMITTED: work.leftovers} if work.leftovers else {}
            refs |= {DETACHED: work.detached_head} if work.detached_head else {}
        if not refs:
            return {}, "the agent left nothing new: no new commits, nothing uncommitted"
        for ref, sha in refs.items():
            await git("update-ref", ref, sha, cwd=objects)
        partial = scratch / "kept.bundle"
        await git(
            "bundle", "create", "--quiet", str(partial), *refs, "--stdin",
            cwd=objects, stdin="".join(f"^{sha}\n" for sha in checkout.base).encode(),
            confined=True,
        )  # fmt: skip
        partial.replace(destination)
        return refs, None
    except outbox.UnsafeObjects as error:
        return {}, _shown_text(f"not kept: {error}")
    except (GitError, TimeoutError, OSError) as error:
        return {}, _shown_text(f"the work could not be packed: {str(error) or 'timed out'}")
    finally:
        await remove(scratch)


def _kept(
    checkout: Checkout, folder: Path, refs: dict[str, str], why: str | None, unsealed: str | None
) -> Kept:
    missing = [why] if why else []
    tree: Path | None = checkout.path
    if unsealed is not None:
        tree = None
        missing.append(f"the plain tree was removed: {unsealed}")
    elif not checkout.path.is_dir():
        tree = None
        missing.append("there is no plain tree: the checkout's folder is not there")
    bundle = folder / f"{checkout.path.name}.bundle" if refs else None
    return Kept(checkout.shown_url, checkout.path.name, bundle, tree, refs, tuple(missing))


def _other_trees(space: Path, known: set[str]) -> list[Kept]:
    """Folders of the sealed workspace that are no checkout the run gave (a clone cut
    short, or what the agent made beside its checkouts): their files are kept too."""
    if not space.is_dir():
        return []
    return [
        Kept("", entry.name, None, Path(entry.path), {}, (NOT_A_CHECKOUT,))
        for entry in sorted(os.scandir(space), key=lambda entry: entry.name)
        if entry.is_dir(follow_symlinks=False) and entry.name not in known
    ]


def _seal_workspace(tree: Path) -> tuple[Sealed, str | None]:
    """Seal `tree` whole, or remove it; what was taken out, and why it was removed."""
    if not tree.exists():
        return Sealed(), None
    try:
        return seal(tree), None
    except (OSError, subprocess.SubprocessError) as error:
        remove_now(tree)
        if os.path.lexists(tree):
            raise  # neither sealed nor gone: never left for a person as it is
        return Sealed(), _shown_text(f"it could not be sealed ({error})")


def seal(tree: Path) -> Sealed:
    """Make `tree` a plain folder in place, which host git never takes for a
    repository, in it or anywhere below (see the module's docstring). Raises OSError
    when any of it cannot be done; the caller then removes the tree."""
    if tree.is_symlink() or not tree.is_dir():
        raise OSError(f"{tree}: not a folder")
    # An agent may have left folders it took its own permissions from; chmod -R
    # follows no links, and walks any depth.
    subprocess.run(
        ["chmod", "-R", "u+rwX,go-w,ug-s", "--", str(tree)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=True,
    )
    sealed = Sealed(attributes=_strip_attributes(tree))
    folders = [tree]
    while folders:  # a stack, not recursion: the agent chose the depth
        folder = folders.pop()
        with os.scandir(folder) as found:
            entries = list(found)
        names = {entry.name.casefold() for entry in entries}
        laid_out = "head" in names and not names.isdisjoint(_REPOSITORY_MARKS)
        for entry in entries:
            path = Path(entry.path)
            shown = str(path.relative_to(tree))
            folded = entry.name.casefold()
            if folded == ".git":
                _delete(path)
                sealed.note("git_metadata", shown)
                continue
            if laid_out and folded == "head":
                path = _set_aside(path)
                sealed.note("repository_heads", shown)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                target = os.fsencode(path.readlink())
                path.unlink()
                made = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(made, "wb") as plain:
                    plain.write(target)
                sealed.links += 1
            elif stat.S_ISDIR(mode):
                sealed.attributes += _strip_attributes(path)
                folders.append(path)
            elif stat.S_ISREG(mode):
                sealed.attributes += _strip_attributes(path)
            else:
                path.unlink()
                sealed.note("dropped", shown)
    return sealed


def _strip_attributes(path: Path) -> int:
    """Remove every `user.*` extended attribute of `path` itself; how many there were."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as error:
        if error.errno == errno.EOPNOTSUPP:  # a filesystem without them
            return 0
        raise
    agents = [name for name in names if name.startswith(_AGENTS_ATTRIBUTES)]
    for name in agents:
        os.removexattr(path, name, follow_symlinks=False)
    return len(agents)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_now(path)
    else:
        path.unlink()
    if os.path.lexists(path):
        raise OSError(f"{path}: could not be removed")


def _set_aside(path: Path) -> Path:
    """`path` renamed to a name git does not look for, unique in its folder."""
    aside, number = path.with_name(path.name + INERT_SUFFIX), 2
    while os.path.lexists(aside):
        aside, number = path.with_name(f"{path.name}{INERT_SUFFIX}-{number}"), number + 1
    path.rename(aside)
    return aside


def _write_manifest(
    folder: Path, run_dir: Path, kept: list[Kept], sealed: Sealed, unsealed: str | None
) -> None:
    record = {
        "repositories": [item.as_dict(run_dir) for item in kept],
        "sealed": sealed.as_dict(),
        "tree_removed": None if unsealed is None else _shown_text(unsealed),
    }
    partial = folder / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.chmod(0o600)
    partial.replace(folder / MANIFEST)


def load(run_dir: Path) -> list[Kept] | None:
    """What `keep` kept in `run_dir`, as its manifest says; None if it kept nothing
    (it never ran, or the run delivered)."""
    try:
        record = json.loads((run_dir / KEPT / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return [
        Kept(
            repository=str(item["repository"]),
            name=str(item["name"]),
            bundle=run_dir / item["bundle"] if item.get("bundle") else None,
            tree=run_dir / item["tree"] if item.get("tree") else None,
            refs={str(ref): str(sha) for ref, sha in (item.get("refs") or {}).items()},
            missing=tuple(str(why) for why in item.get("missing") or ()),
        )
        for item in record.get("repositories", [])
    ]


async def heads(bundle: Path) -> dict[str, str]:
    """The refs a bundle holds, as git reads them from its header alone."""
    listed = await git("bundle", "list-heads", str(bundle), cwd=bundle.parent)
    found = {}
    for line in listed.splitlines():
        sha, _, ref = line.partition(" ")
        found[ref] = sha
    return found


def _relative(path: Path | None, run_dir: Path) -> str | None:
    return None if path is None else str(path.relative_to(run_dir))


def _shown_text(text: str) -> str:
    """`text` made valid UTF-8: a name that is not (os gives its bytes as surrogates)
    gets `\\xNN` for each such byte, as a shell's `$'…'` spells it; other surrogates,
    which no name holds, `\\uNNNN`."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _shown(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with every string in it, dict keys too, made valid UTF-8 (`_shown_text`)."""
    shown: dict[str, Any] = _shown_data(record)
    return shown


def _shown_data(value: Any) -> Any:
    if isinstance(value, str):
        return _shown_text(value)
    if isinstance(value, dict):
        return {_shown_data(key): _shown_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_shown_data(item) for item in value]
    return value
