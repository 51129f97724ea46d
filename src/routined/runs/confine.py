"""The run's sandboxes: their layouts and command lines, and the caps they run within.

Claude Code, the setup script and the finishing scripts each run in a sandbox of the
run (`routined.sandbox.bubblewrap`), in its resource group
(`routined.sandbox.resources`); a run that goes past a cap has its sandbox ended at
once, and the cap named as why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from routined import timeutil, workspace
from routined.config import Settings
from routined.runs.failure import Failure, RunFailure
from routined.runs.scope import Scope
from routined.sandbox import bubblewrap, resources

log = logging.getLogger(__name__)


def claude(settings: Settings) -> Path:
    """Claude Code's binary; a run that cannot have it fails as the sandbox would,
    whether the setup script or the agent asks first."""
    try:
        return bubblewrap.claude_binary(settings.claude_path)
    except bubblewrap.SandboxUnavailable as error:
        raise RunFailure(Failure.SANDBOX_UNAVAILABLE, str(error)) from error


def layout(scope: Scope, *, also_readable: Sequence[Path] = ()) -> bubblewrap.Layout:
    """The layout of the sandbox the setup script and the agent run in."""
    checkouts = scope.checkouts
    assert scope.egress_socket is not None  # the proxy is up before any sandbox
    return bubblewrap.run_layout(
        run_dir=scope.run_dir,
        cwd=checkouts[0].path,
        protected=[path for c in checkouts for path in workspace.protected_paths(c)],
        readable=[claude(scope.settings), *borrowed(checkouts), *also_readable],
        masked=scope.host.masked,
        egress_socket=scope.egress_socket,
    )


def sandboxed(scope: Scope, layout: bubblewrap.Layout, program: Path) -> list[str]:
    """The command line that runs `program` in a sandbox of the run, in its own user
    namespaces when routined is root (made at the first)."""
    settings = scope.settings
    if scope.host.owner is not None and scope.namespaces is None:
        folder = settings.runs_dir / scope.run_dir.name / "private"
        scope.namespaces = bubblewrap.run_namespaces(settings.sandbox_uid, folder)
    namespaces = scope.namespaces if scope.host.owner is not None else None
    return scope.host.sandboxes.command(layout, program, namespaces=namespaces)


def finishing_sandbox(scope: Scope, cwd: Path) -> list[str]:
    """The command line that runs bash in the finishing sandbox (no network, the
    workspace only) in `cwd`, within the run's caps while its group lives."""
    finishing = bubblewrap.finishing_layout(
        run_dir=scope.run_dir, cwd=cwd, readable=borrowed(scope.checkouts), masked=scope.host.masked
    )
    command = sandboxed(scope, finishing, Path("/bin/bash"))
    return scope.group.enter_command(command) if scope.group is not None else command


def borrowed(checkouts: Sequence[workspace.Checkout]) -> list[Path]:
    """The mirrors' objects the checkouts read, each once."""
    return list(dict.fromkeys(c.mirror_objects for c in checkouts))


async def make_group(scope: Scope) -> resources.RunGroup:
    """The run's resource group, with its routine's caps (the server's defaults for
    what it leaves out)."""
    settings, spec = scope.settings, scope.spec
    try:
        caps = resources.Caps.of(settings, spec.limits.caps())
        if spec.public_only:
            # An account's routine gets no more of the machine than the operator's
            # defaults give, whatever its file asks.
            caps = caps.at_most(resources.Caps.of(settings, {}))
        return await asyncio.to_thread(scope.host.sandboxes.group, spec.run_id, caps)
    except (resources.ResourceError, ValueError) as error:
        raise RunFailure(Failure.SANDBOX_UNAVAILABLE, str(error)) from None


async def enforce_caps(group: resources.RunGroup, run_dir: Path) -> resources.Breach:
    """Wait until the run goes past a cap; then its sandbox ends at once."""
    breach = await resources.watch(group, writable(run_dir))
    await bubblewrap.stop(f"{run_dir}/")
    return breach


async def stop(
    enforcing: asyncio.Task[resources.Breach], group: resources.RunGroup, run_dir: Path
) -> resources.Breach | None:
    """The end of a program in the run's sandbox, on every path out (a cancel
    included): the caps no longer watched, the sandbox stopped and its set-id bits
    stripped; the cap the run went past, if any."""
    try:
        return await stop_enforcing(enforcing, group)
    finally:
        await stop_sandbox(run_dir)


async def stop_enforcing(
    enforcing: asyncio.Task[resources.Breach], group: resources.RunGroup
) -> resources.Breach | None:
    """The cap the run went past, if any: the watcher's, or the kernel's counters
    (a process killed at the memory cap just before the sandbox ended)."""
    if not enforcing.done():
        enforcing.cancel()
    try:
        return await enforcing
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # measuring failed; the kernel's counters still say
        log.exception("watching the caps of %s failed", group.name)
    return group.breach()


async def stop_sandbox(run_dir: Path) -> None:
    """End every process of the run's sandbox; then nothing it made keeps a
    set-user-id or set-group-id bit."""
    await bubblewrap.stop(f"{run_dir}/")
    await asyncio.to_thread(bubblewrap.strip_privilege_bits, writable(run_dir))


def writable(run_dir: Path) -> list[Path]:
    """The run's folders its sandbox may change."""
    return [run_dir / "workspace", run_dir / "home", run_dir / "tmp"]


def ago(seconds: float) -> str:
    return timeutil.format_duration(timedelta(seconds=int(seconds)))
