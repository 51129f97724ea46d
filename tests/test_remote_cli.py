"""The `routined` command against a real `routined serve` with --server and an API key.

The server is a subprocess on its own store (SQLite in ROUTINED_HOME) with one
worker that runs the real Claude Code binary against the fake model API. The
commands run here, in process, once against the server (`--server URL` or
ROUTINED_URL, with ROUTINED_API_KEY) and once against the same store directly;
what they print must be the same.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from routined.cli import app
from routined.config import Settings
from routined.http import fire as fire_api
from routined.testing.fake_anthropic import FakeAnthropic, bash, text
from routined.timeutil import iso
from tests.conftest import start_serve

ROUTINED = str(Path(sys.executable).with_name("routined"))
DEADLINE = 60.0
MARKER = "[case:remote-cli]"

runner = CliRunner()


@dataclass
class Server:
    url: str
    key: str
    settings: Settings

    def remote(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """The command against the server, with the key."""
        return runner.invoke(
            app, ["--server", self.url, *args], env={"ROUTINED_API_KEY": self.key, **(env or {})}
        )

    def local(self, *args: str) -> Result:
        """The command on the store itself (no --server), as the operator."""
        return runner.invoke(app, list(args), env={"ROUTINED_URL": None, "ROUTINED_API_KEY": None})


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    return result.stdout


def as_json(result: Result) -> Any:
    return json.loads(ok(result))


@pytest.fixture
def environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, fake_api: FakeAnthropic
) -> dict[str, str]:
    """The server's settings; the in-process commands share them through os.environ."""
    env = {
        "ROUTINED_HOME": str(settings.home),
        "ANTHROPIC_BASE_URL": settings.anthropic_base_url,
        "ANTHROPIC_API_KEY": settings.anthropic_api_key.reveal(),
        "ROUTINED_HEARTBEAT_INTERVAL": "0.5",
        "ROUTINED_WORKERS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in (
        "ROUTINED_DATABASE_URL",
        "ROUTINED_URL",
        "ROUTINED_API_KEY",
        "ROUTINED_PUBLIC_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    return env


@pytest.fixture
def server(
    environment: dict[str, str], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    """`routined serve` on a free port, and an admin key of the default account."""
    made = as_json(runner.invoke(app, ["key", "create", "ops", "--scope", "admin", "--json"]))
    assert made["account"] == "default" and made["key"].startswith("rtdk_")
    process, url = start_serve({**os.environ, **environment})
    try:
        # The store's own commands name the server's URL as the server does (the
        # session URLs they print), as ROUTINED_PUBLIC_URL would in a deployment.
        monkeypatch.setenv("ROUTINED_PUBLIC_URL", url)
        yield Server(url, made["key"], settings)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def routines_file(tmp_path: Path, origin: Path) -> Path:
    path = tmp_path / "routines.yaml"
    path.write_text(
        "routines:\n"
        "  - name: nightly\n"
        f"    prompt: Tidy up. {MARKER}\n"
        f"    repositories: [{{url: {origin}}}]\n"
        "    triggers:\n"
        "      - type: api\n"
        "      - {type: schedule, cron: '0 9 * * 1-5'}\n"
    )
    return path


def wait_for(
    what: str, check: Callable[[], bool], explain: Callable[[], str], seconds: float = DEADLINE
) -> None:
    """Poll for a state the server brings about, within a deadline."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {seconds} s:\n{explain()}")


def same_output(server: Server, command: list[str]) -> bool:
    """Whether the command prints the same through the server as on the store. Answers
    that depend on the clock (next runs, usage windows) may differ once, when a minute or
    an hour turns between the two; the next pair is then taken at the same time again."""
    return any(ok(server.remote(*command)) == ok(server.local(*command)) for _ in range(2))


def test_the_cli_manages_a_server_as_it_manages_the_store(
    server: Server, tmp_path: Path, origin: Path, fake_api: FakeAnthropic
) -> None:
    # The agent of the first run works until it is stopped.
    fake_api.script(
        MARKER, [[bash("echo working > work.txt && sleep 60")], [text("never reached")]]
    )
    applied = ok(server.remote("apply", "-f", str(routines_file(tmp_path, origin))))
    assert "nightly created" in applied
    assert "nightly unchanged" in ok(
        server.remote("apply", "-f", str(routines_file(tmp_path, origin)))
    )

    [listed] = as_json(server.remote("list", "--json"))
    assert (listed["name"], listed["repositories"]) == ("nightly", [str(origin)])
    assert "nightly" in ok(server.remote("list"))
    shown = as_json(server.remote("show", "nightly", "--json"))
    assert [t["type"] for t in shown["triggers"]] == ["api", "schedule"]
    assert "cron 0 9 * * 1-5" in ok(server.remote("show", "nightly"))

    assert ok(server.remote("pause", "nightly")).strip() == "nightly paused"
    assert as_json(server.remote("show", "nightly", "--json"))["paused"] is True
    assert ok(server.remote("pause", "nightly")).strip() == "nightly was already paused"
    assert ok(server.remote("resume", "nightly")).strip() == "nightly resumed"

    # A token from the server fires its fire endpoint; the worker takes the run.
    issued = as_json(server.remote("token", "nightly", "--json"))
    assert issued["trigger_id"] == shown["triggers"][0]["id"]
    assert issued["url"].startswith(f"{server.url}/") and issued["trigger_id"] in issued["url"]
    since = time.time()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    fired = httpx.post(
        issued["url"],
        json={"text": "from the API"},
        headers={
            "authorization": f"Bearer {issued['token']}",
            "anthropic-version": fire_api.ANTHROPIC_VERSION,
            "anthropic-beta": server.settings.accepted_betas[-1],
        },
        timeout=30,
    )
    assert fired.status_code == 200, fired.text
    api_session = fired.json()["claude_code_session_id"]
    # Its agent is at work once the model is asked.
    assert fake_api.wait_for_request(MARKER, after=since, timeout=DEADLINE) is not None

    # A run by hand waits in the queue behind it (one worker).
    by_hand = as_json(server.remote("fire", "nightly", "--text", "by hand", "--json"))
    [newest, api_run] = as_json(server.remote("runs", "--json"))
    assert (newest["id"], newest["status"], newest["trigger"]) == (
        by_hand["run_id"],
        "queued",
        "manual",
    )
    assert (api_run["session_id"], api_run["trigger"]) == (api_session, "api")
    assert api_run["status"] in ("preparing", "running"), ok(server.remote("logs", api_session))

    assert (
        ok(server.remote("cancel", by_hand["run_id"])).strip()
        == f"run {by_hand['run_id']} cancelled"
    )
    stopping = ok(server.remote("cancel", api_session))
    assert stopping.strip() == f"run {api_run['id']}: asked its worker to stop it"
    wait_for(
        "the worker stopping the run",
        lambda: as_json(server.remote("runs", "--json"))[1]["status"] == "cancelled",
        explain=lambda: ok(server.remote("logs", api_session)),
    )
    again = server.remote("cancel", api_run["id"])
    assert again.exit_code == 1 and "is cancelled; it is past cancelling" in again.output

    logs = ok(server.remote("logs", api_run["id"]))
    assert "fired over the API through trigger" in logs and "cancel" in logs
    events = [
        json.loads(line) for line in ok(server.remote("logs", api_session, "--json")).splitlines()
    ]
    assert events[0]["to_status"] == "queued" and events[-1]["to_status"] == "cancelled"
    assert "cancelled by API key" in (events[-1]["reason"] or "")

    decisions = as_json(server.remote("events", "--json"))
    assert [(d["trigger_type"], d["outcome"]) for d in decisions] == [
        ("manual", "fired"),
        ("api", "fired"),
    ]
    assert "fired by hand (API key" in ok(server.remote("events"))
    [usage] = as_json(server.remote("usage", "--json"))
    assert usage["account"] == "default"
    if usage["hour_resets_at"] == iso(hour + timedelta(hours=1)):  # no new hour since the fires
        assert (usage["runs_today"], usage["api_runs_this_hour"]) == (2, 1), usage

    keys = as_json(server.remote("key", "list", "--json"))
    assert [(k["name"], k["scope"], k["revoked_at"]) for k in keys] == [("ops", "admin", None)]
    assert all("key" not in k for k in keys)
    assert "ops" in ok(server.remote("key", "list"))

    # The server and the store say the same, to the byte.
    for command in (
        ["list", "--json"],
        ["show", "nightly", "--json"],
        ["runs", "--json"],
        ["events", "--json"],
        ["usage", "--json"],
        ["key", "list", "--json"],
        ["logs", api_run["id"], "--json"],
        ["logs", api_run["id"]],
    ):
        assert same_output(server, command), command

    # ROUTINED_URL names the server as --server does.
    by_env = runner.invoke(
        app, ["runs", "--json"], env={"ROUTINED_URL": server.url, "ROUTINED_API_KEY": server.key}
    )
    assert json.loads(ok(by_env)) == as_json(server.remote("runs", "--json"))


def test_a_files_errors_from_the_server_each_name_the_file(
    server: Server, tmp_path: Path, origin: Path
) -> None:
    # What a new user saw (issue 16): the server's lines after the first said `request:`.
    path = tmp_path / "routines.yaml"
    path.write_text(
        f"routines:\n  - name: nightly\n    promt: Tidy up.\n    repositories:\n      - {origin}\n"
    )
    for result in (server.remote("apply", "-f", str(path)), server.local("apply", "-f", str(path))):
        assert result.exit_code == 1
        said = " ".join(result.output.split())
        assert "request" not in said
        assert said.index(f"{path}: routines[0] (nightly).promt: unknown field") < said.index(
            f"{path}: routines[0] (nightly).repositories[0]: a repository is a mapping; "
            f"write `- url: {origin}`"
        )


def test_a_missing_or_wrong_key_is_a_clear_error(server: Server) -> None:
    missing = runner.invoke(app, ["--server", server.url, "list"], env={"ROUTINED_API_KEY": None})
    assert missing.exit_code == 1
    assert f"--server {server.url}: set ROUTINED_API_KEY" in missing.output
    assert "Traceback" not in missing.output
    wrong = server.remote("list", env={"ROUTINED_API_KEY": "rtdk_" + "x" * 44})
    assert wrong.exit_code == 1 and "invalid or revoked API key" in wrong.output
    not_a_key = server.remote("runs", env={"ROUTINED_API_KEY": "rtd_notakey"})
    assert not_a_key.exit_code == 1 and "invalid or revoked API key" in not_a_key.output


def test_an_unreachable_server_is_a_clear_error(environment: dict[str, str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = runner.invoke(
        app, ["--server", url, "list"], env={"ROUTINED_API_KEY": "rtdk_" + "x" * 44}
    )
    assert result.exit_code == 1
    assert f"cannot reach {url}" in result.output
    assert "Traceback" not in result.output
