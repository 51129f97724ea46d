"""Delivery: the agent's work lands where its push rules allow.

1. `routined.runs.outbox` brings what the agent left out of its sandbox into an
   outbox, a bare repository routined owns, every object checked by git's fsck
   (work it refuses is never pushed: `outbox.UnsafeObjects`), each new commit
   naming its session.
   Work adding a file over the routine's `limits.max_file_mb` is never pushed
   either (`large_files.FileTooLarge`); one over half of it is said.
2. `plan` decides, from the repository's `PushRules`, what goes where and how:
   by default every target is a new branch under the prefix (`claude/`).
3. Pushes go from the outbox to the origin. A branch under the prefix is only
   ever created, never moved: a name already taken gets the run's suffix. Only
   when the rules allow it does a branch outside the prefix keep its name, moved
   forward only, or rewritten only if the origin still has what the run saw, and
   never when the branch carries commits by others than routined; a push refused
   is delivered under the prefix instead, so no work is lost. Each pushed branch
   carries what it changes against the default branch.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from routined.runs import large_files
from routined.runs.large_files import DEFAULT_MAX_FILE_MB, LargeFile
from routined.runs.outbox import AgentWork, Packing, outbox_of, pack
from routined.workspace import Checkout, GitError, git, local_repository, remove

BRANCH_PREFIX = "claude/"
MAX_PUSHES = 50


class Mode(StrEnum):
    """How a push may write its branch on the origin."""

    CREATE = "create"  # a new branch only: one that exists is never moved
    FAST_FORWARD = "fast-forward"  # new, or moved forward: the origin refuses anything else
    FORCE = "force"  # may rewrite it, if the origin still has what the run's checkout saw


@dataclass(frozen=True)
class PushRules:
    """Where one repository of a routine lets the agent's work land.

    By default, only new branches under `prefix`. `unrestricted`: a branch outside
    it that the agent made or moved keeps its name, moved only forward, or rewritten
    too with `force`; the default branch is pushed only with `default_branch`.
    Branches under the prefix are routined's own: always created, never moved.
    """

    prefix: str = BRANCH_PREFIX
    unrestricted: bool = False
    force: bool = False
    default_branch: bool = False


RESTRICTED = PushRules()


@dataclass(frozen=True)
class Push:
    sha: str
    branch: str
    source: str
    mode: Mode = Mode.CREATE
    # Under the prefix: where the work goes if the origin refuses it under the
    # branch's own name. None for CREATE, where a taken name gets the suffix.
    fallback: str | None = None


@dataclass(frozen=True)
class Pushed:
    repository: str
    branch: str
    sha: str
    source: str
    # What the commit changes against the default branch as the run's checkout had it.
    files: int
    insertions: int
    deletions: int

    def as_dict(self) -> dict[str, str | int]:
        return {
            "repository": self.repository,
            "branch": self.branch,
            "sha": self.sha,
            "source": self.source,
            "files": self.files,
            "insertions": self.insertions,
            "deletions": self.deletions,
        }


def total(pushed: Sequence[Pushed]) -> dict[str, int] | None:
    """What the pushed branches change, added up; None when nothing was pushed."""
    if not pushed:
        return None
    return {
        "files": sum(p.files for p in pushed),
        "insertions": sum(p.insertions for p in pushed),
        "deletions": sum(p.deletions for p in pushed),
    }


@dataclass(frozen=True)
class OriginView:
    """The origin as routined knows it: its branches as the mirror has them, and
    every commit the origin's refs pointed at when the run's checkout was made."""

    heads: Mapping[str, str]
    base: frozenset[str]
    default_branch: str

    def lease(self, branch: str) -> str | None:
        """What the origin's `branch` must still be for a forced push over it: its
        commit when the run's checkout was made, "" if there was no such branch;
        None when that is not known."""
        # The checkout keeps the commits the origin's refs pointed at, not their
        # names; the mirror has the names and is fetched before every run. A
        # commit of the mirror's that the checkout never saw means the branch moved
        # after the checkout was made: forcing over it could drop commits the agent
        # never saw, so it is not forced.
        sha = self.heads.get(branch)
        if sha is None:
            return ""
        return sha if sha in self.base else None


@dataclass(frozen=True)
class Target:
    """Where a repository's work may land: `own_branch` is the run's branch, under
    `rules.prefix`; `suffix` sets a new branch apart when its name is taken;
    `author_email` is the one routined's commits carry (a branch with commits by
    anyone else is not moved); no file over `max_file_mb` MiB lands at all."""

    own_branch: str
    suffix: str
    author_email: str
    rules: PushRules = RESTRICTED
    max_file_mb: int = DEFAULT_MAX_FILE_MB


async def deliver(
    checkout: Checkout,
    packing: Packing,
    target: Target,
    *,
    scratch: Path,
    warn: Callable[[Sequence[LargeFile]], Awaitable[None]] | None = None,
) -> list[Pushed]:
    """Push what the agent left in `checkout` to its origin, as `target.rules` allow.

    `scratch` is a folder only routined can reach. Raises `outbox.UnsafeObjects` (a
    GitError) when git's fsck refuses any object of the work, and
    `large_files.FileTooLarge` (a GitError) when it adds a file over
    `target.max_file_mb` MiB, before anything is pushed; files over half of that are
    given to `warn`.
    """
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        work = await pack(checkout, packing, scratch)
        if work is None:
            return []
        pushes = plan(
            work,
            own_branch=target.own_branch,
            default_branch=checkout.default_branch,
            rules=target.rules,
        )
        if len(pushes) > MAX_PUSHES:
            raise GitError(
                f"{checkout.shown_url}: the agent left {len(pushes)} branches to deliver; "
                f"at most {MAX_PUSHES} are pushed per repository"
            )
        outbox = outbox_of(scratch)
        await _check_sizes(checkout, outbox, pushes, target.max_file_mb, warn)
        # Read once, before anything is pushed: a local origin is its own mirror,
        # and the pushes move it. Changes are measured before pushing too, so that
        # a failure leaves the origin as it was rather than half delivered.
        view = await origin_view(checkout)
        changes = {sha: await diffstat(outbox, view, sha) for sha in {p.sha for p in pushes}}
        landed = await push(checkout, outbox, pushes, target=target, view=view)
        return [
            Pushed(checkout.shown_url, branch, planned.sha, source, *changes[planned.sha])
            for planned, branch, source in landed
        ]
    finally:
        await remove(scratch)


async def _check_sizes(
    checkout: Checkout,
    outbox: Path,
    pushes: Sequence[Push],
    max_file_mb: int,
    warn: Callable[[Sequence[LargeFile]], Awaitable[None]] | None,
) -> None:
    """Refuse the work if what would be pushed adds a file over `max_file_mb` MiB (an
    origin such as GitHub would refuse the push, and a half-delivered run helps no
    one); give those over half of it to `warn` (GitHub warns from 50 MiB)."""
    limit = max_file_mb * large_files.MIB
    large = await large_files.large_files(
        outbox, sorted({p.sha for p in pushes}), checkout.base, over=limit // 2
    )
    too_large = [file for file in large if file.size > limit]
    if too_large:
        raise large_files.refused(checkout.shown_url, too_large, max_file_mb)
    if large and warn is not None:
        await warn(large)


def plan(
    work: AgentWork, *, own_branch: str, default_branch: str, rules: PushRules = RESTRICTED
) -> list[Push]:
    """Which commits to push where, and how. Pure: the one place the rules are applied.

    1. Leftover changes, committed on top of HEAD, go to `own_branch`.
    2. Branches the agent made under the prefix keep their names, created only.
    3. With `rules.unrestricted`, any other branch keeps its name too (the default
       branch only with `rules.default_branch`): fast-forward only, or forced with
       `rules.force`. Should the origin refuse, its `fallback` under the prefix
       takes the work.
    4. Work that may not keep its name (another branch, a detached HEAD) is not
       lost: it goes under the prefix, as `own_branch` when it is the only such
       work, otherwise as `own_branch-<name>`.
    5. The branch HEAD is on, when leftovers were committed, is not pushed
       separately where it would land under the prefix (or is `own_branch`): the
       leftover commit carries its commits.
    """
    prefix = rules.prefix
    if not own_branch.startswith(prefix):
        raise ValueError(f"refusing to push outside {prefix}: {own_branch}")
    pushes: list[Push] = []
    if work.leftovers is not None:
        source = f"uncommitted changes on {work.head_branch or 'a detached HEAD'}"
        pushes.append(Push(work.leftovers, own_branch, source))
    # Work outside the prefix: where it is, its commit, how it may be pushed under
    # its own name (None: it may not) and why not.
    outside: list[tuple[str, str, str, Mode | None, str]] = []
    for branch in work.branches:
        carried = work.leftovers is not None and branch.name == work.head_branch
        if branch.name.startswith(prefix) and branch.name != prefix:
            if not (carried and branch.name == own_branch):
                pushes.append(Push(branch.sha, branch.name, f"branch {branch.name}"))
            continue
        mode, why = _own_name(branch.name, default_branch, rules)
        if not (carried and mode is None):
            outside.append((branch.name, f"branch {branch.name}", branch.sha, mode, why))
    if work.detached_head is not None and work.leftovers is None:
        why = (
            f"not on a branch; delivered under {prefix}"
            if rules.unrestricted
            else f"only {prefix} branches are pushed"
        )
        outside.append(("detached", "a detached HEAD", work.detached_head, None, why))
    alone = work.leftovers is None and len(outside) == 1
    for label, origin, sha, mode, why in outside:
        under = own_branch if alone else f"{own_branch}-{slug(label)}"
        if mode is None:
            pushes.append(Push(sha, under, f"{origin} ({why})"))
        else:
            pushes.append(Push(sha, label, origin, mode, fallback=under))
    return pushes


def _own_name(name: str, default_branch: str, rules: PushRules) -> tuple[Mode | None, str]:
    """How a branch outside the prefix may be pushed under its own name, or why not."""
    if not rules.unrestricted:
        return None, f"only {rules.prefix} branches are pushed"
    if name == default_branch and not rules.default_branch:
        return None, f"pushes to the default branch are not allowed; delivered under {rules.prefix}"
    return (Mode.FORCE if rules.force else Mode.FAST_FORWARD), ""


async def origin_view(checkout: Checkout) -> OriginView:
    """The origin's branches as its mirror has them now, with what the checkout saw."""
    listing = await git(
        f"--git-dir={checkout.mirror_objects.parent}",
        "for-each-ref", "--format=%(objectname) %(refname:lstrip=2)", "refs/heads",
    )  # fmt: skip
    heads = {}
    for line in listing.splitlines():
        sha, name = line.split(" ", 1)
        heads[name] = sha
    return OriginView(heads, frozenset(checkout.base), checkout.default_branch)


async def diffstat(outbox: Path, view: OriginView, sha: str) -> tuple[int, int, int]:
    """Files, insertions and deletions of `sha` against the default branch as the
    run's checkout had it."""
    base = view.heads.get(view.default_branch)
    if base is not None and base not in view.base:
        # The mirror's default branch moved after the checkout was made (another
        # run's fetch, or a push to a local origin): the work left it where the
        # two histories meet.
        try:
            base = (await git("merge-base", base, sha, cwd=outbox, confined=True)).strip()
        except GitError:
            base = None  # no history in common: all of it is new
    if base is None:  # an empty origin, or unrelated work: measured from nothing
        base = (await git("hash-object", "-t", "tree", "--stdin", cwd=outbox, stdin=b"")).strip()
    said = await git(
        "diff", "--shortstat", "--find-renames", base, sha, "--", cwd=outbox, confined=True
    )
    files, insertions, deletions = (
        int(found.group(1)) if (found := re.search(rf"(\d+) {word}", said)) else 0
        for word in (r"files? changed", r"insertions?\(\+\)", r"deletions?\(-\)")
    )
    return files, insertions, deletions


async def push(
    checkout: Checkout,
    outbox: Path,
    pushes: Sequence[Push],
    *,
    target: Target,
    view: OriginView,
) -> list[tuple[Push, str, str]]:
    """Push each planned branch as its mode says; one refused under its own name
    (by the origin, or because it carries others' commits) goes to its fallback
    under the prefix, as a new branch. Each push with the branch it landed on and
    its source, as said to people."""
    rules = target.rules
    landed = []
    for planned in pushes:
        branch, source = planned.branch, planned.source
        if planned.mode is Mode.CREATE:
            branch = await _create(checkout, outbox, planned.sha, branch, target)
        else:
            _check_allowed(planned, rules, checkout.default_branch)
            others = await _others(outbox, view, planned.branch, target.author_email)
            if others:
                shown = ", ".join(others[:3]) + (" and others" if len(others) > 3 else "")
                taken, note = False, f"the branch carries commits by others ({shown})"
            else:
                taken, note = await _update(checkout, outbox, planned, view)
            if taken:
                source += note
            elif planned.fallback is None:
                raise GitError(f"{branch}: refused ({note}), and no branch to deliver it to")
            else:
                source = f"{source} ({note}; delivered under {rules.prefix})"
                branch = await _create(checkout, outbox, planned.sha, planned.fallback, target)
        landed.append((planned, branch, source))
    return landed


def _check_allowed(planned: Push, rules: PushRules, default_branch: str) -> None:
    """`plan` applies the rules; this keeps a mistake there from reaching the origin."""
    if (
        not rules.unrestricted
        or planned.branch.startswith(rules.prefix)
        or (planned.branch == default_branch and not rules.default_branch)
        or (planned.mode is Mode.FORCE and not rules.force)
    ):
        raise GitError(
            f"refusing to push {planned.branch} ({planned.mode}): the push rules do not allow it"
        )


async def _others(outbox: Path, view: OriginView, branch: str, author_email: str) -> list[str]:
    """Who else authored or committed commits of the origin's `branch` that its
    default branch does not have: the run may not move a branch someone else works
    on, even forward (nor one where someone rebased or amended routined's commits)."""
    tip = view.heads.get(branch)
    if tip is None:
        return []
    default = view.heads.get(view.default_branch)
    beyond = [f"^{default}"] if default is not None else []
    said = await git("log", "--format=%ae%n%ce", tip, *beyond, "--", cwd=outbox, confined=True)
    emails = {email.strip() or "(no email)" for email in said.lower().splitlines()}
    return sorted(emails - {author_email.lower()})


async def _create(checkout: Checkout, outbox: Path, sha: str, branch: str, target: Target) -> str:
    """Push `sha` as a new branch `branch`, or `branch-suffix` if that name is taken;
    the name it got."""
    try:
        await _create_as(checkout, outbox, sha, branch, target.rules.prefix)
        return branch
    except GitError as error:
        if "rejected" not in str(error):
            raise
    await _create_as(checkout, outbox, sha, f"{branch}-{target.suffix}", target.rules.prefix)
    return f"{branch}-{target.suffix}"


def _origin_umask(checkout: Checkout) -> int | None:
    """A local origin is the operator's, and every run's sandbox reads its objects:
    what routined pushes there is written as git under a usual umask would write it,
    not kept private as routined's own files are."""
    return 0o022 if local_repository(checkout.url) is not None else None


async def _create_as(checkout: Checkout, outbox: Path, sha: str, branch: str, prefix: str) -> None:
    if not branch.startswith(prefix):
        raise GitError(f"refusing to push outside {prefix}: {branch}")
    await git("check-ref-format", f"refs/heads/{branch}")
    # An empty lease means "only if the branch does not exist yet": the agent
    # cannot move a branch someone else made, even fast-forward.
    await git(
        *checkout.network, "push", "--porcelain", f"--force-with-lease=refs/heads/{branch}:",
        "--", checkout.url, f"{sha}:refs/heads/{branch}",
        cwd=outbox, secret=checkout.url, umask=_origin_umask(checkout),
    )  # fmt: skip


async def _update(
    checkout: Checkout, outbox: Path, planned: Push, view: OriginView
) -> tuple[bool, str]:
    """Push `planned` under its own name as its mode allows: whether the origin took
    it, and a note for its source (when refused, why)."""
    ref = f"refs/heads/{planned.branch}"
    await git("check-ref-format", ref)
    options, lease = [], ""
    if planned.mode is Mode.FORCE:
        # --force-with-lease, against the branch's commit when the run's checkout
        # was made (`OriginView.lease`), never a plain force.
        known = view.lease(planned.branch)
        if known is None:
            return False, _MOVED
        options, lease = [f"--force-with-lease={ref}:{known}"], known
    try:
        # Without a force option the origin takes only a new branch or a fast-forward.
        said = await git(
            *checkout.network, "push", "--porcelain", *options,
            "--", checkout.url, f"{planned.sha}:{ref}",
            cwd=outbox, secret=checkout.url, umask=_origin_umask(checkout),
        )  # fmt: skip
    except GitError as error:
        why = _refusal(str(error))
        if why is None:  # not a refusal (the network, credentials): delivery fails
            raise
        return False, why
    forced = any(line.startswith("+\t") for line in said.splitlines())
    return True, f" (force-pushed over {lease})" if forced else ""


_MOVED = "the branch has moved on the origin since the run's checkout was made"
_REFUSED = re.compile(r"!\t\S+\t\[(rejected|remote rejected)\] \((.*)\)$", re.MULTILINE)
_REASONS = {
    "non-fast-forward": "not a fast-forward of the origin's branch",
    "fetch first": "the origin's branch has commits the run's checkout did not have",
    "stale info": _MOVED,
}


def _refusal(said: str) -> str | None:
    """Why the origin refused a push, from git's porcelain output; None if it did not."""
    found = _REFUSED.search(said)
    if found is None:
        return None
    kind, reason = found.groups()
    if kind == "rejected" and reason in _REASONS:
        return _REASONS[reason]
    return f"the origin refused it: {reason[:200]}"


def slug(text: str) -> str:
    """Lower-case letters, digits and single dashes: always part of a valid branch name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "work"
