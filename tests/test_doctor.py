"""`routined doctor`: what this machine gives runs, as an operator reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from routined.config import Settings
from routined.db import Store
from routined.testing.fake_anthropic import FakeAnthropic

ROUTINED = str(Path(sys.executable).with_name("routined"))


def doctor(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ROUTINED_", "ANTHROPIC_"))}
    return subprocess.run(
        [ROUTINED, "doctor"],
        env={**clean, "ROUTINED_HOME": str(home), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_ready_machine_says_ok_for_each_part(tmp_path: Path, fake_api: FakeAnthropic) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    done = doctor(home, ANTHROPIC_API_KEY="sk-ant-test", ANTHROPIC_BASE_URL=fake_api.base_url)
    assert done.returncode == 0, done.stdout + done.stderr
    topics = [line.split(":")[0].split()[-1] for line in done.stdout.splitlines() if ":" in line]
    for topic in ("sandbox", "caps", "home", "git", "Code", "key"):
        assert topic in topics, done.stdout
    expected = "host user 65533" if os.geteuid() == 0 else "routined's own user"
    assert expected in done.stdout
    assert "fail" not in done.stdout


def test_what_stops_runs_fails_it_and_says_what_to_do(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    done = doctor(home)
    assert done.returncode == 1
    assert "fail model API key: ANTHROPIC_API_KEY is not set" in done.stdout
    # A home others can reach is said, with the fix.
    assert f"{home} is 0755" in done.stdout and "chmod 700" in done.stdout


def test_a_model_api_that_refuses_the_key_fails_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    with FakeAnthropic(api_key="sk-ant-right") as api:
        done = doctor(home, ANTHROPIC_API_KEY="sk-ant-wrong", ANTHROPIC_BASE_URL=api.base_url)
    assert done.returncode == 1
    assert f"fail model API: {api.base_url} refused the key (401: invalid x-api-key)" in (
        done.stdout
    )
    assert "check ANTHROPIC_API_KEY" in done.stdout


def test_a_store_behind_and_no_server_are_said_with_what_to_do(
    tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    settings = Settings.from_env({"ROUTINED_HOME": str(home)})
    store = Store(settings.database_url.reveal())
    store.migrate(revision="0001")
    _stored, newest = store.revisions()
    store.dispose()
    done = doctor(
        home,
        ANTHROPIC_API_KEY="sk-ant-test",
        ANTHROPIC_BASE_URL=fake_api.base_url,
        ROUTINED_PUBLIC_URL="http://127.0.0.1:9",
    )
    assert done.returncode == 0, done.stdout  # neither stops a run
    assert f"is at migration 0001, the newest is {newest}" in done.stdout
    assert "warn public URL: nothing answers at http://127.0.0.1:9" in done.stdout
    assert "GiB free where runs' checkouts and homes live" in done.stdout
