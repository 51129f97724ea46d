"""Stage: the run's environment: its secrets, its network (one egress proxy for the
setup script and the agent), and the routine's setup script, run in the sandbox or
restored from what it left last time (see `routined.environment`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from routined import workspace
from routined.agents.home import seed_home
from routined.environment import SetupCache, cache_folder, error_line, output_lines, run_script
from routined.runs import confine
from routined.runs.failure import Failure, RunFailure
from routined.runs.scope import Scope
from routined.sandbox import bubblewrap
from routined.sandbox.egress import EgressDecision, EgressProxy, ModelGateway
from routined.secrets import vault

_DENIALS_RECORDED = 50


def reveal(scope: Scope) -> dict[str, str]:
    """The values of the secrets the routine lists (read from the vault)."""
    names = scope.spec.environment.secret_names
    if not names:
        return {}
    try:
        with scope.host.store.transaction(readonly=True) as session:
            return vault.reveal(
                session, scope.settings, account_id=scope.spec.account_id, names=names
            )
    except vault.VaultError as error:
        raise RunFailure(Failure.SECRETS_UNAVAILABLE, str(error)) from None


@contextlib.asynccontextmanager
async def egress(scope: Scope) -> AsyncIterator[None]:
    """The run's egress proxy at `scope.egress_socket`, with the run's network level,
    while the setup script and the agent run; every kind of refusal is recorded once
    for each target, and a summary of them at the end."""
    settings, spec, ledger = scope.settings, scope.spec, scope.ledger
    gateway = ModelGateway(settings.anthropic_base_url, settings.anthropic_api_key.reveal())
    policy = dataclasses.replace(
        spec.environment.policy(extra_hosts=_connector_hosts(spec.connectors)),
        public_only=spec.public_only,
        private_allowed=settings.allow_private_networks,
    )
    denied: Counter[str] = Counter()
    said: set[tuple[str, str]] = set()  # (target, reason) recorded as an event

    def on_decision(decision: EgressDecision) -> None:
        if decision.allowed:
            return
        target = f"{decision.host}:{decision.port}"
        denied[target] += 1
        # The first refusal of each kind for each target: the gateway refuses
        # Claude Code's own probes as well as an agent's attempts to reach out.
        if (target, decision.reason) not in said and len(said) < _DENIALS_RECORDED:
            said.add((target, decision.reason))
            detail = f" ({decision.detail})" if decision.detail else ""
            ledger.event_soon(
                "egress.denied",
                f"blocked {decision.method} to {target}: {decision.reason}{detail}",
                host=decision.host,
                port=decision.port,
                deny_reason=decision.reason,
                **({"detail": decision.detail} if decision.detail else {}),
            )

    # One proxy serves the setup script and the agent: the run's network level
    # holds for both.
    proxy = EgressProxy(policy, on_decision, gateway)
    socket_dir = Path(tempfile.mkdtemp(prefix="routined-"))
    scope.egress_socket = socket_dir / "egress.sock"
    limit, _ = scope.max_duration()
    scope.deadline = asyncio.get_running_loop().time() + limit
    try:
        await proxy.start(scope.egress_socket)
        owner = scope.host.owner
        if owner is not None:  # its folder stays routined's alone
            os.chown(scope.egress_socket, owner, owner)
        await ledger.event(
            "environment.network",
            f"network {policy.describe()}",
            level=spec.environment.network,
        )
        yield
    finally:
        await proxy.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
        if denied:
            await ledger.flush()
            total = sum(denied.values())
            await ledger.event(
                "egress.summary",
                f"{total} requests blocked to {len(denied)} hosts",
                blocked=dict(denied.most_common(_DENIALS_RECORDED)),
            )


async def set_up(scope: Scope) -> None:
    """Run the routine's setup script in the sandbox, or restore what it left last
    time (see `routined.environment`); a script that fails fails the run, as one
    that goes past a cap of the run does (named by the cap)."""
    host, spec, run_dir, ledger = scope.host, scope.spec, scope.run_dir, scope.ledger
    environment = spec.environment
    if environment.setup_script is None:
        return
    assert scope.group is not None
    home = run_dir / "home"
    cache = SetupCache(
        cache_folder(host.settings.home, spec.routine_id), host.settings.setup_cache_max_age
    )
    files = await _cache_files(scope)
    key = environment.cache_key(files)
    started = asyncio.get_running_loop().time()
    try:
        age = await cache.restore(key, home, now=host.clock())
    except OSError as error:
        await ledger.event("setup.cache_failed", f"the cached result was not restored: {error}")
        await workspace.remove(home)
        home.mkdir(mode=0o700)
        seed_home(home, host.seed_file)
        age = None
    if age is not None:
        seed_home(home, host.seed_file)  # the copy's seed may be older
        await workspace.hand_over([home], host.owner)
        took = asyncio.get_running_loop().time() - started
        await ledger.event(
            "setup.cached",
            f"the setup script's result from {confine.ago(age)} ago was restored in "
            f"{took:.2f} s; the script did not run",
            key=key,
            seconds=round(took, 3),
        )
        return
    await ledger.event("setup.started", "the setup script is running", key=key)
    script = run_dir / "private" / "setup.sh"
    script.write_text(environment.setup_script)
    await workspace.hand_over([home, script], host.owner)
    layout = confine.layout(scope, also_readable=[script])
    env = bubblewrap.agent_environment(
        home=home,
        tmp=run_dir / "tmp",
        extra={**host.author_env(), **environment.setup_variables(scope.revealed)},
    )
    group = scope.group
    command = group.enter_command(
        [*confine.sandboxed(scope, layout, Path("/bin/bash")), str(script)]
    )
    said = bytearray()
    enforcing = asyncio.create_task(confine.enforce_caps(group, run_dir))
    try:
        async with asyncio.timeout_at(scope.deadline) as timeout:
            outcome = await run_script(command, env, said)
    except TimeoutError:
        if not timeout.expired():
            raise
        await ledger.event(
            "setup.output",
            "the setup script was stopped at the run's max_duration",
            lines=output_lines(said),
        )
        raise RunFailure(
            Failure.SETUP_FAILED,
            "the setup script was still running when the run reached its max_duration",
        ) from None
    except asyncio.CancelledError:
        ledger.event_soon(
            "setup.output",
            "the setup script was stopped: the run was cancelled",
            lines=output_lines(said),
        )
        raise
    finally:
        breach = await confine.stop(enforcing, group, run_dir)
    if breach is not None:
        await ledger.event(
            "setup.output", f"the setup script was stopped: {breach}", lines=outcome.lines
        )
        raise RunFailure(Failure(breach.code), f"the setup script was stopped: {breach.message}")
    # The line most likely to say why (`error: externally-managed-environment`, not
    # pip's closing `hint: See PEP 668 …`): quoted in the run's error and its event.
    # Redacted before it is cut: a secret cut in two would not be known by its part.
    cause = scope.redactor.text(error_line(outcome.lines)) if outcome.exit_code != 0 else ""
    await ledger.event(
        "setup.output",
        f"the setup script exited with status {outcome.exit_code} after {outcome.seconds:.1f} s",
        exit_code=outcome.exit_code,
        seconds=round(outcome.seconds, 3),
        lines=outcome.lines,
        **({"error_line": cause[:500]} if cause else {}),
    )
    if outcome.exit_code != 0:
        raise RunFailure(
            Failure.SETUP_FAILED,
            f"the setup script exited with status {outcome.exit_code}"
            + (f": {cause[:500]}" if cause else "")
            + " (its output is in the run's events)",
        )
    try:
        kept_result = await cache.keep(
            key, home, now=host.clock(), seconds=outcome.seconds, redactor=scope.redactor
        )
    except OSError as error:
        await ledger.event("setup.cache_failed", f"the result was not cached: {error}")
    else:
        if not kept_result:
            await ledger.event(
                "setup.not_cached",
                "the setup script left a secret's value in the home: its result is not "
                "cached (no secret is kept in plain text), so the script runs every time",
            )


async def _cache_files(scope: Scope) -> str:
    """What the first repository, as cloned (before any script ran), has at the
    routine's `setup_cache_files`; a path it does not have is said, since the cache
    cannot follow it."""
    environment = scope.spec.environment
    if not environment.cache_files:
        return ""
    try:
        files = await workspace.committed(scope.checkouts[0], environment.cache_files)
    except workspace.GitError as error:
        raise RunFailure(Failure.SETUP_FAILED, f"setup_cache_files: {error}") from None
    found = [entry.split("\t", 1)[1] for entry in files.split("\0") if "\t" in entry]
    missing = [
        path
        for path in environment.cache_files
        if not any(name == path or name.startswith(f"{path}/") for name in found)
    ]
    if missing:
        await scope.ledger.event(
            "setup.cache_files_missing",
            f"setup_cache_files: the repository has no {', '.join(missing)}; "
            "the cache cannot follow what is not there",
            paths=missing,
        )
    return files


def _connector_hosts(connectors: dict[str, Any]) -> list[str]:
    """The hosts of the routine's remote MCP servers: the routine asked for them, so its
    network level lets them through."""
    hosts = []
    for definition in connectors.values():
        parts = urlsplit(str(definition.get("url") or ""))
        if parts.hostname:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            hosts.append(f"{host}:{parts.port}" if parts.port else host)
    return hosts
