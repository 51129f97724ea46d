"""An agent's home: Claude Code's config seeded into each run's fresh home, and the
migration flags a finished session recorded, learnt back without trusting its files."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from claude_agent_sdk._cli_version import __cli_version__

# A fresh home with no Claude Code config makes each session do first-start work
# (an identity, one-time migrations). routined seeds it: an identity of its own,
# and the migration flags an earlier session recorded. Those flags are all an
# agent can influence, and all they do is spare work a fresh home has no need of.
_MIGRATION_FLAG = re.compile(r"[A-Za-z]{1,60}MigrationComplete|hasReset[A-Za-z]{1,60}")
_HEX_ID = re.compile(r"[0-9a-f]{64}")


def installation_config(config: object) -> dict[str, Any]:
    """The migration flags of a Claude Code config (`~/.claude.json`), checked."""
    if not isinstance(config, dict):
        return {}
    flags: dict[str, Any] = {
        key: True
        for key, value in config.items()
        if isinstance(key, str) and _MIGRATION_FLAG.fullmatch(key) and value is True
    }
    version = config.get("migrationVersion")
    if isinstance(version, int) and not isinstance(version, bool) and 0 <= version <= 10_000:
        flags["migrationVersion"] = version
    return flags


def seed_config(stored: object) -> dict[str, Any]:
    """The config a run's fresh home starts with: routined's identity for Claude Code
    (kept from `stored` when well-formed, else new) and the known migration flags."""
    stored = stored if isinstance(stored, dict) else {}
    identity = {
        key: value if isinstance(value, str) and _HEX_ID.fullmatch(value) else secrets.token_hex(32)
        for key in ("userID", "machineID")
        for value in [stored.get(key)]
    }
    started = stored.get("firstStartTime")
    if not (isinstance(started, str) and re.fullmatch(r"[0-9T:.Z-]{10,30}", started)):
        started = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        **identity,
        "firstStartTime": started,
        "firstStartVersion": __cli_version__,
        **installation_config(stored),
    }


def seed_home(home: Path, seed_file: Path) -> None:
    """Give a fresh home the seed of Claude Code's config (see `seed_config`)."""
    try:
        stored = json.loads(seed_file.read_text())
    except (OSError, ValueError):
        stored = {}
    write_fresh(home / ".claude.json", json.dumps(seed_config(stored)) + "\n")


def write_fresh(path: Path, text: str) -> None:
    """Write `path` as a new file, in a folder something else may have written to (a
    setup script, a cached home): whatever was there goes, and a link there is never
    followed to a file elsewhere on the host."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def learn_seed(home: Path, seed_file: Path) -> None:
    """Keep the migration flags a finished session recorded in its home's config.

    The file is the agent's: read without following links, as a regular file of
    bounded size, so it can neither block nor point routined at another file.
    """
    learned = installation_config(_read_small_json(home / ".claude.json"))
    try:
        seed = seed_config(json.loads(seed_file.read_text()))
    except (OSError, ValueError):
        seed = seed_config({})
    if learned and {**seed, **learned} != seed:
        partial = seed_file.with_suffix(".tmp")
        partial.write_text(json.dumps({**seed, **learned}))
        partial.replace(seed_file)


def _read_small_json(path: Path, limit: int = 65536) -> object:
    """JSON from a file someone else controls: no links, no FIFOs, no giants."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        return json.loads(os.read(descriptor, limit + 1)[:limit])
    except (OSError, ValueError):
        return None
    finally:
        os.close(descriptor)
