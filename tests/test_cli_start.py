"""The CLI starts without what its commands do not need (bench/cli_start.py times it).

Each command runs in a fresh interpreter as the `routined` script dispatches it; what
it imported is read from `sys.modules` afterwards. No timing: only what was loaded.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from alembic.script import ScriptDirectory
from sqlalchemy import select
from typer.testing import CliRunner

from routined import db, runs
from routined.cli import app
from routined.cli.local import Local
from routined.config import Settings
from routined.db import Store
from routined.models import Routine
from routined.routines.apply import apply
from routined.routines.load import parse_document

# What the server, the runs and migrations need, and the listings do not; and what
# only applying a routine (its spec: YAML, `regex` through GitHub's event filters,
# h11 through the egress rules it checks) or the vault (cryptography) needs.
HEAVY = [
    "anthropic",
    "fastapi",
    "starlette",
    "uvicorn",
    "claude_agent_sdk",
    "alembic",
    "httpx",
    "yaml",
    "regex",
    "h11",
    "cryptography",
]

_DISPATCH = """
import gc, json, sys
from routined.__main__ import main
sys.argv = ["routined", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    assert not exit.code, exit.code
with open({loaded!r}, "w") as out:
    json.dump({{"modules": sorted(sys.modules), "collecting": gc.isenabled()}}, out)
"""


def _fill(store: Store, origin: Path) -> None:
    now = datetime.now(UTC)
    document = {
        "routines": [
            {
                "name": "nightly",
                "prompt": "Tidy up.",
                "repositories": [{"url": str(origin)}],
                "triggers": [
                    {"type": "schedule", "schedule": "weekdays at 09:00"},
                    {"type": "api"},
                ],
            }
        ]
    }
    spec = parse_document(document, source="test", base=None, now=now)
    with store.transaction() as session:
        apply(session, spec, now=now)
    with store.transaction() as session:
        routine = session.scalars(select(Routine)).one()
        for text in ("one", "two"):
            run = runs.create(
                session,
                routine,
                trigger_type="api",
                trigger_id=None,
                text=text,
                now=now,
                reason="t",
            )
        # One as a finished run leaves it, with every part a run's answer can hold.
        run.status, run.started_at, run.finished_at = "succeeded", now, now
        run.branches = [{"repository": "o/r", "branch": "claude/x", "sha": "0" * 40, "files": 1}]
        run.summary, run.cost_usd = "Done.", 0.0123
        run.diff_stat = {"files": 1, "insertions": 2, "deletions": 0}
        run.usage = {"input_tokens": 10, "output_tokens": 5}


@pytest.fixture
def home(tmp_path: Path, origin: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    settings = Settings.from_env({"ROUTINED_HOME": str(home)})
    store = Store(settings.database_url.reveal())
    try:
        store.migrate()
        _fill(store, origin)
    finally:
        store.dispose()
    return home


def _started(home: Path, tmp_path: Path, *argv: str) -> dict[str, Any]:
    """What a command run as the `routined` script left: the modules it loaded, and
    whether the collector is on."""
    loaded = tmp_path / "loaded.json"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ROUTINED_")}
    environment["ROUTINED_HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-c", _DISPATCH.format(loaded=str(loaded)), *argv],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    started: dict[str, Any] = json.loads(loaded.read_text())
    return started


def _loaded(home: Path, tmp_path: Path, *argv: str) -> set[str]:
    return set(_started(home, tmp_path, *argv)["modules"])


@pytest.mark.parametrize("argv", [["list"], ["runs"], ["runs", "nightly", "--limit", "5"]])
def test_the_listings_load_neither_the_server_nor_the_agent(
    home: Path, tmp_path: Path, argv: list[str]
) -> None:
    loaded = _loaded(home, tmp_path, *argv)
    assert "routined.cli" in loaded  # the command ran
    assert [name for name in HEAVY if name in loaded] == []


@pytest.mark.parametrize("argv", [["list"], ["runs"], ["--version"]])
def test_start_up_leaves_the_collector_on(home: Path, tmp_path: Path, argv: list[str]) -> None:
    # It waits while the commands load (`routined.cli.common.loading`), no longer.
    assert _started(home, tmp_path, *argv)["collecting"] is True


def test_commands_run_in_a_callers_process_freeze_none_of_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a process that runs one command leaves what loads out of the collector's
    # passes; a test's process keeps its garbage collectable.
    monkeypatch.setenv("ROUTINED_HOME", str(home))
    frozen = gc.get_freeze_count()
    done = CliRunner().invoke(app, ["runs", "--json"])
    assert done.exit_code == 0, done.output
    assert gc.get_freeze_count() == frozen
    assert gc.isenabled()


def test_version_is_answered_before_the_commands_load(home: Path, tmp_path: Path) -> None:
    loaded = _loaded(home, tmp_path, "--version")
    assert [name for name in [*HEAVY, "typer", "sqlalchemy"] if name in loaded] == []


async def _through_app(local: Local, path: str, params: dict[str, Any]) -> httpx.Response:
    async with local.app_client() as client:
        return await client.get(f"/api/v1{path}", params=params)


@pytest.mark.parametrize(
    ("path", "params"),
    [("/routines", {}), ("/runs", {"limit": 20}), ("/runs", {"routine": "nightly", "limit": 1})],
)
def test_the_store_here_answers_listings_as_the_app_does(
    home: Path, path: str, params: dict[str, Any]
) -> None:
    settings = Settings.from_env({"ROUTINED_HOME": str(home)})
    store = Store(settings.database_url.reveal())
    try:
        local = Local(settings, store)
        direct = local.answer("GET", path, params, explain=str)
        served = asyncio.run(_through_app(local, path, params))
        assert served.status_code == 200
        # The same JSON, byte for byte: `--json` prints it as it comes.
        assert json.dumps(direct) == json.dumps(served.json())
        assert direct
    finally:
        store.dispose()


def test_head_revision_is_read_as_alembic_reads_it() -> None:
    config = db._alembic_config()
    assert db._head_revision() == ScriptDirectory.from_config(config).get_current_head()


def test_the_store_here_refuses_as_the_app_does(home: Path) -> None:
    settings = Settings.from_env({"ROUTINED_HOME": str(home)})
    store = Store(settings.database_url.reveal())
    params: dict[str, Any] = {"routine": "nosuch", "limit": 20}
    try:
        local = Local(settings, store)
        said: list[str] = []

        def explain(message: str) -> str:
            said.append(message)
            return message

        with pytest.raises(typer.Exit):
            local.answer("GET", "/runs", params, explain=explain)
        served = asyncio.run(_through_app(local, "/runs", params))
        assert served.status_code == 404
        assert said == [served.json()["error"]["message"]]
    finally:
        store.dispose()
