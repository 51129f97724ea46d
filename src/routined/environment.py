"""A run's environment: its network, variables and secrets, and its setup script's cache.

The setup script runs in the run's sandbox before the agent, with the routine's
network level (see `routined.runs.setup`). What it leaves in the run's home (a
virtualenv in `~/.venv`, tools in `~/.local`, a package manager's cache) is its
result: it is kept, and the next run whose script, network and variables are
the same starts from a copy of that home instead of running the script again,
until the copy is older than the cache's age limit. `routined cache clear`
removes a routine's copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import secrets as random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from routined.sandbox import network
from routined.sandbox.egress import EgressPolicy
from routined.secrets import redaction, tree_redaction
from routined.workspace import remove

# Bumped when what a cache entry holds changes, so old entries are not restored.
_CACHE_FORMAT = 1
OUTPUT_LIMIT = 64 * 1024
OUTPUT_LINES = 200


@dataclass(frozen=True)
class Environment:
    """A routine's `environment:` as its row keeps it (see `routines.spec.EnvironmentSpec`)."""

    network: str = "trusted"
    allowed_hosts: tuple[str, ...] = ()
    include_trusted: bool = False
    setup_script: str | None = None
    cache_files: tuple[str, ...] = ()  # paths in the first repository the result depends on
    variables: Mapping[str, str] = field(default_factory=dict)
    # Each secret's name, and whether only the setup script gets it.
    secrets: tuple[tuple[str, bool], ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Environment:
        return cls(
            network=config.get("network", "trusted"),
            allowed_hosts=tuple(config.get("allowed_hosts", ())),
            include_trusted=bool(config.get("include_trusted", False)),
            setup_script=config.get("setup_script"),
            cache_files=tuple(config.get("setup_cache_files", ())),
            variables=dict(config.get("env", {})),
            secrets=tuple(
                (item["name"], bool(item.get("setup_only"))) for item in config.get("secrets", ())
            ),
        )

    @property
    def secret_names(self) -> list[str]:
        return [name for name, _ in self.secrets]

    def policy(self, extra_hosts: Sequence[str] = ()) -> EgressPolicy:
        return network.policy(
            self.network,
            self.allowed_hosts,
            include_trusted=self.include_trusted,
            extra_hosts=extra_hosts,
        )

    def setup_variables(self, revealed: Mapping[str, str]) -> dict[str, str]:
        """What the setup script sees on top of the sandbox's own: every secret."""
        return {**self.variables, **{name: revealed[name] for name, _ in self.secrets}}

    def agent_variables(self, revealed: Mapping[str, str]) -> dict[str, str]:
        """What the agent sees: the setup-only secrets are not there."""
        kept = {name: revealed[name] for name, setup_only in self.secrets if not setup_only}
        return {**self.variables, **kept}

    def cache_key(self, files: str = "") -> str:
        """What a setup result depends on: the script, where it may connect, the
        variables it is given (secrets by name only), the system it ran on and, with
        `cache_files`, `files`: what the repository has at those paths."""
        described: dict[str, Any] = {
            "format": _CACHE_FORMAT,
            "script": self.setup_script,
            "network": self.network,
            "allowed_hosts": sorted(self.allowed_hosts),
            "include_trusted": self.include_trusted,
            "variables": sorted(self.variables.items()),
            "secrets": sorted(self.secrets),
            "system": base_system(),
        }
        if self.cache_files:  # only then: other routines keep the keys they had
            described["files"] = [list(self.cache_files), files]
        return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:32]


@functools.cache
def base_system() -> str:
    """The system a setup script builds on: what it installs is only good for the same."""
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        release = ""
    return f"{platform.machine()} {hashlib.sha256(release.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class SetupOutcome:
    exit_code: int
    output: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return output_lines(self.output.encode())


def output_lines(said: bytes | bytearray) -> list[str]:
    """The last lines of what a setup script printed, as its events keep them."""
    return bytes(said).decode(errors="replace").splitlines()[-OUTPUT_LINES:]


# How a tool says what went wrong, at the start of a line: pip, cargo, npm, gcc and make
# say `error:`/`ERROR:`/`npm ERR!`, git says `fatal:`. Advice lines after it (pip's
# `hint:`, git's `hint:`, `note:`) are the least useful last line.
_ERROR_STARTS = ("error", "fatal", "npm err!", "e: ")
_ADVICE_STARTS = ("hint:", "note:", "help:")


def error_line(lines: Sequence[str]) -> str:
    """The line of a failed script's output most likely to say why: the last one that
    starts like an error (`error: …`, `fatal: …`), else the last that is not advice
    (`hint: …`) nor blank, else the last that is not blank ("" when none)."""
    said = [line.strip() for line in lines if line.strip()]
    for line in reversed(said):
        if line.lower().startswith(_ERROR_STARTS):
            return line
    for line in reversed(said):
        if not line.lower().startswith(_ADVICE_STARTS):
            return line
    return said[-1] if said else ""


async def run_script(command: list[str], env: dict[str, str], said: bytearray) -> SetupOutcome:
    """Run the setup script `command` runs in its sandbox; what it printed (both
    streams, the end of it) is kept in `said` as it comes, so a caller that stops it
    early still has it. The caller bounds the time."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        while chunk := await process.stdout.read(65536):
            said += chunk
            del said[:-OUTPUT_LIMIT]
        code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return SetupOutcome(code, bytes(said).decode(errors="replace"), time.monotonic() - started)


def cache_folder(home: Path, routine_id: str) -> Path:
    """Where a routine's setup results are kept, under routined's home."""
    return home / "setup-cache" / routine_id


class SetupCache:
    """One routine's setup results: a copy of the home each left, by cache key.

    Runs of one routine may restore and keep at once, in several processes: a copy
    is restored under a shared lock and replaced under an exclusive one, so no entry
    goes away while a run copies it.
    """

    def __init__(self, folder: Path, max_age: float) -> None:
        self.folder = folder
        self.max_age = max_age

    def _entry(self, key: str) -> Path:
        return self.folder / key

    async def restore(self, key: str, home: Path, *, now: datetime) -> float | None:
        """Copy the cached home for `key` into `home`; its age in seconds, or None when
        there is none fresh enough. A copy that fails raises OSError, with `home`
        holding part of it."""
        async with self._locked(exclusive=False):
            entry = self._entry(key)
            try:
                made = json.loads((entry / "made.json").read_text())
                age = now.timestamp() - float(made["at"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
            if not 0 <= age <= self.max_age:
                return None  # replaced by the result of the script that runs now
            await _copy_tree(entry / "home", home)
            return age

    async def keep(
        self,
        key: str,
        home: Path,
        *,
        now: datetime,
        seconds: float,
        redactor: redaction.Redactor | None = None,
    ) -> bool:
        """Keep a copy of `home` as the result for `key`; it replaces the routine's
        other results, which no run will ask for again unless their script returns.

        Not kept (False) when the copy holds a value `redactor` knows: no secret is
        kept in plain text, and a redacted copy would not work."""
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f"{_PARTIAL}{random.token_hex(6)}"
        try:
            partial.mkdir(mode=0o700)
            await _copy_tree(home, partial / "home")
            if redactor is not None:
                changed = await asyncio.to_thread(
                    tree_redaction.redact_tree, partial / "home", redactor
                )
                if changed:
                    return False
            (partial / "made.json").write_text(
                json.dumps({"at": now.timestamp(), "seconds": seconds})
            )
            async with self._locked(exclusive=True):
                entry = self._entry(key)
                await remove(entry)
                partial.rename(entry)
                for other in self.folder.iterdir():
                    if other.name in (key, _LOCK) or _copying(other, now):
                        continue
                    await remove(other)
            return True
        finally:
            await remove(partial)

    @contextlib.asynccontextmanager
    async def _locked(self, *, exclusive: bool) -> AsyncIterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.folder / _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            await asyncio.to_thread(fcntl.flock, descriptor, mode)
            yield
        finally:
            os.close(descriptor)  # and with it the lock


_LOCK = ".lock"
_PARTIAL = ".partial-"
# A copy being made for `keep` is left alone this long; one older was abandoned
# (its run was cancelled, or its process died) and goes.
_ABANDONED_AFTER = 3600.0


def _copying(path: Path, now: datetime) -> bool:
    if not path.name.startswith(_PARTIAL):
        return False
    try:
        return now.timestamp() - path.stat().st_mtime < _ABANDONED_AFTER
    except OSError:
        return False


async def _copy_tree(source: Path, destination: Path) -> None:
    """Copy a folder's contents as they are (links stay links, nothing is followed);
    on file systems that can, the copy shares blocks until either side changes."""
    destination.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        "cp", "-a", "--reflink=auto", "--no-dereference", "--", f"{source}/.", str(destination),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, stderr = await process.communicate()
    finally:
        if process.returncode is None:  # cancelled: the copy stops with the run
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise OSError(f"could not copy {source}: {stderr.decode(errors='replace').strip()}")
