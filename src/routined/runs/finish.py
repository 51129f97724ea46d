"""Stage: the agent's work → the outbox → pushed (`deliver`), and what stays of the
run once it ends (`settle`): delivered work removed, undelivered work kept safe to
inspect, secrets redacted from what stays. Also the same for a run whose worker
died (`settle_abandoned`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select

from routined import workspace
from routined.environment import Environment
from routined.ids import short
from routined.models import Routine, Run
from routined.runs import checkout, confine, kept, large_files, outbox, push, state, trailers
from routined.runs.failure import Failure, RunFailure
from routined.runs.large_files import LargeFile
from routined.runs.ledger import NO_SECRETS, Ledger
from routined.runs.scope import Host, Scope
from routined.sandbox import bubblewrap
from routined.secrets import redaction, tree_redaction, vault

log = logging.getLogger(__name__)

# Written in a run's private folder once what stays of it is safe (`_leave_safe`).
SETTLED = "settled"


async def deliver(scope: Scope) -> list[push.Pushed]:
    """Push each repository's work as the routine's rules allow; say what was pushed."""
    spec, run_dir, checkouts = scope.spec, scope.run_dir, scope.checkouts
    packing = _packing(scope)
    pushed: list[push.Pushed] = []
    # Fresh tokens: the ones the clones took may have expired during the session.
    origins = await checkout.authenticated(
        scope.settings, spec, [c.url for c in checkouts], Failure.DELIVERY_FAILED
    )
    for number, (repository, origin) in enumerate(zip(checkouts, origins, strict=True)):
        repository = dataclasses.replace(repository, url=origin)
        try:
            target = push.Target(
                own_branch=spec.own_branch(number),
                suffix=short(spec.run_id),
                author_email=scope.settings.git_author_email,
                rules=spec.push_rules[number],
                max_file_mb=spec.limits.max_file_mb,
            )
            scratch = run_dir / "private" / f"delivery-{number}"
            delivered = await push.deliver(
                repository, packing, target, scratch=scratch,
                warn=functools.partial(_warn_large, scope, repository.shown_url),
            )  # fmt: skip
        except (outbox.UnsafeObjects, large_files.FileTooLarge) as error:
            raise RunFailure(Failure(error.code), str(error), pushed=pushed) from error
        except (workspace.GitError, TimeoutError) as error:
            raise RunFailure(
                Failure.DELIVERY_FAILED, str(error) or "timed out", pushed=pushed
            ) from error
        if not delivered:
            await scope.ledger.event("git.push", f"nothing new to push to {repository.shown_url}")
        for item in delivered:
            await scope.ledger.event(
                "git.push", f"pushed {item.branch} ({item.source})", **item.as_dict()
            )
        pushed += delivered
    return pushed


async def _warn_large(scope: Scope, shown_url: str, large: Sequence[LargeFile]) -> None:
    """Files over half the limit are delivered, and said: GitHub warns from 50 MiB,
    and the same file a little larger in a later run is refused."""
    limit = scope.spec.limits.max_file_mb
    for file in large:
        await scope.ledger.event(
            "git.large_file",
            f"{shown_url}: {file.shown()} is over half the limit of {limit} MiB per file "
            "(limits.max_file_mb); delivered, but a file over the limit is not",
            repository=shown_url,
            path=file.path,
            size=file.size,
        )


def _packing(scope: Scope) -> outbox.Packing:
    """How the run's work is packed: in the finishing sandbox, its uncommitted work
    committed with a message naming the session."""
    session_url = state.session_url(scope.settings.public_url, scope.spec.session_id)
    message = (
        f"Work left uncommitted by routine {scope.spec.routine}\n\n{trailers.KEY}: {session_url}\n"
    )
    # A home of its own (the sandbox's private /tmp): the agent's home may
    # hold configuration planted for whatever runs after it.
    env = {
        "PATH": bubblewrap.SYSTEM_PATH,
        "HOME": "/tmp",  # noqa: S108 - the sandbox's own, empty
        "TMPDIR": "/tmp",  # noqa: S108
        "LANG": "C.UTF-8",
        **scope.host.author_env(),
    }
    return outbox.Packing(
        sandboxed=lambda cwd: confine.finishing_sandbox(scope, cwd),
        env=env,
        message=message,
        session_url=session_url,
    )


async def settle(ledger: Ledger, run_dir: Path, scope: Scope | None, *, delivered: bool) -> None:
    """Leave the run's folder as it stays, before the run's end is recorded: the
    home keeps Claude Code's transcript; delivered work is on the origin;
    undelivered work is kept, safe to inspect. `scope` is None when the run ended
    before its routine was loaded. The executor does this once, however the run ends."""
    run_id = ledger.claim.run_id
    try:
        await ledger.flush()
        await workspace.remove(run_dir / "tmp")
        if delivered:
            await workspace.remove(run_dir / "workspace")
        elif scope is not None and (run_dir / "workspace").exists():
            await _keep_work(scope)
    except Exception:  # the run's end is still recorded; the sweep removes the folder
        log.exception("run %s: its work could not be kept", run_id)
    # Whatever happened above: what stays must be safe.
    try:
        await _leave_safe(run_id, run_dir, ledger.redactor)
    except Exception:
        log.exception("run %s: its folder could not be left safe; it is removed", run_id)
        await workspace.remove(run_dir)


async def _keep_work(scope: Scope) -> None:
    """What the agent left, kept safe to inspect (see `routined.runs.kept`) since it was
    not delivered; each kept repository is said in an event."""
    run_dir = scope.run_dir
    try:
        kept_work = await kept.keep(run_dir, scope.checkouts, _packing(scope))
    except OSError:
        log.exception("run %s: its workspace could be neither sealed nor removed", run_dir.name)
        return
    for item in kept_work:
        said = ", ".join(item.missing) or "its work is in the bundle"
        await scope.ledger.event(
            "files.kept",
            f"kept {item.repository} for inspection ({said}); `routined inspect` shows how",
            **item.as_dict(run_dir),
        )


async def _leave_safe(run_id: str, run_dir: Path, redactor: redaction.Redactor | None) -> None:
    """What stays of a run holds no secret in plain text (its home keeps Claude
    Code's transcript, with every secret value redacted, and a later follow-up
    can still read it) and runs nothing for whoever looks at it."""
    # Sealed first: a link made a plain file holds its target as text, which is
    # then redacted with the rest.
    if (run_dir / "home").exists():
        try:
            await asyncio.shield(asyncio.to_thread(kept.seal, run_dir / "home"))
        except OSError:
            log.exception("run %s: its home could not be sealed; it is removed", run_id)
            await workspace.remove(run_dir / "home")
    for folder in (run_dir / "home", run_dir / "workspace"):
        if redactor:
            try:
                await asyncio.shield(
                    asyncio.to_thread(tree_redaction.redact_tree, folder, redactor)
                )
            except OSError as error:  # it may still hold a secret: it goes
                log.warning("run %s: %s; its %s is removed", run_id, error, folder.name)
                await workspace.remove(folder)
    (run_dir / "private").mkdir(mode=0o700, parents=True, exist_ok=True)
    (run_dir / "private" / SETTLED).touch()


async def settle_abandoned(host: Host, run_id: str) -> None:
    """Leave safe the folder of a run that ended without its worker (lost, after a
    crash), as `settle` would have: its workspace kept as a sealed tree (its work
    cannot be packed any more), its home sealed and redacted, or removed when its
    secrets cannot be known."""
    run_dir = host.settings.runs_dir / run_id
    private = run_dir / "private"
    private.mkdir(mode=0o700, parents=True, exist_ok=True)
    # One worker at a time, of those sharing this home.
    descriptor = os.open(private / ".settling", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return
    try:
        await _settle_abandoned(host, run_id, run_dir)
    finally:
        os.close(descriptor)


async def _settle_abandoned(host: Host, run_id: str, run_dir: Path) -> None:
    if (run_dir / "private" / SETTLED).exists():
        return
    if (run_dir / "workspace").exists():
        with contextlib.suppress(OSError):
            await kept.keep(run_dir, [], outbox.Packing(lambda _: [], {}, "", ""))
    redactor: redaction.Redactor | None
    try:
        redactor = await asyncio.to_thread(_redactor_of, host, run_id)
    except (LookupError, vault.VaultError):
        log.warning("run %s: its secrets cannot be read; its home is removed", run_id)
        await workspace.remove(run_dir / "home")
        redactor = None
    await _leave_safe(run_id, run_dir, redactor)


def _redactor_of(host: Host, run_id: str) -> redaction.Redactor:
    """What redacts a run's secrets, from the store (LookupError: it is not there)."""
    with host.store.transaction(readonly=True) as session:
        found = session.execute(
            select(Routine.account_id, Routine.environment).join(Run).where(Run.id == run_id)
        ).first()
        if found is None:
            raise LookupError(run_id)
        names = Environment.from_config(found.environment or {}).secret_names
        if not names:
            return NO_SECRETS
        return redaction.Redactor(
            vault.reveal(session, host.settings, account_id=found.account_id, names=names)
        )
