"""The `routined` command on the embedded store: output shapes and clear failures."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routined.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ROUTINED_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ROUTINED_DATABASE_URL", raising=False)
    monkeypatch.delenv("ROUTINED_PUBLIC_URL", raising=False)
    return tmp_path / "home"


def routines_file(tmp_path: Path, origin: Path, triggers: str = "[{type: api}]") -> Path:
    path = tmp_path / "routines.yaml"
    path.write_text(
        "routines:\n"
        f"  - {{name: nightly, prompt: Tidy up., repositories: [{{url: {origin}}}], "
        f"triggers: {triggers}}}\n"
    )
    return path


def test_apply_list_token_fire_runs(tmp_path: Path, origin: Path) -> None:
    applied = runner.invoke(app, ["apply", "-f", str(routines_file(tmp_path, origin))])
    assert applied.exit_code == 0 and "nightly created" in applied.output
    listed = json.loads(runner.invoke(app, ["list", "--json"]).output)
    assert [(r["name"], r["repositories"], r["last_run"]) for r in listed] == [
        ("nightly", [str(origin)], None)
    ]
    assert listed[0]["triggers"][0]["has_token"] is False
    issued = json.loads(runner.invoke(app, ["token", "nightly", "--json"]).output)
    assert (
        issued["url"]
        == f"http://127.0.0.1:8080/v1/claude_code/routines/{issued['trigger_id']}/fire"
    )
    assert json.loads(runner.invoke(app, ["list", "--json"]).output)[0]["triggers"][0]["has_token"]
    human = runner.invoke(app, ["token", "nightly"]).output
    assert "shown only now" in human and "curl -X POST" in human
    fired = json.loads(runner.invoke(app, ["fire", "nightly", "--text", "hi", "--json"]).output)
    assert fired["session_id"].startswith("session_")
    [run] = json.loads(runner.invoke(app, ["runs", "--json"]).output)
    assert {"id", "session_id", "routine", "status", "trigger", "branches", "created_at",
            "finished_at", "error"} <= set(run)  # fmt: skip
    assert (run["routine"], run["status"], run["trigger"], run["branches"]) == (
        "nightly", "queued", "manual", [],
    )  # fmt: skip
    logs = runner.invoke(app, ["logs", run["session_id"]])
    assert "queued" in logs.output and "fired by hand" in logs.output


def test_show_json_names_each_triggers_routine_as_the_trigger_list_does(
    tmp_path: Path, origin: Path
) -> None:
    # Issue 16: `show --json` had `"routine": null` on every trigger.
    triggers = "[{type: api}, {type: schedule, cron: '0 9 * * *', timezone: UTC}]"
    path = routines_file(tmp_path, origin, triggers=triggers)
    assert runner.invoke(app, ["apply", "-f", str(path)]).exit_code == 0
    shown = json.loads(runner.invoke(app, ["show", "nightly", "--json"]).output)
    assert [t["routine"] for t in shown["triggers"]] == ["nightly", "nightly"]
    [listed] = json.loads(runner.invoke(app, ["list", "--json"]).output)
    assert [t["routine"] for t in listed["triggers"]] == ["nightly", "nightly"]


def test_an_invalid_file_exits_non_zero_and_changes_nothing(tmp_path: Path, origin: Path) -> None:
    path = routines_file(tmp_path, origin, triggers="[{type: cron}]")
    result = runner.invoke(app, ["apply", "-f", str(path)])
    assert result.exit_code == 1
    assert f"{path}: routines[0] (nightly).triggers[0].type: unknown trigger type 'cron'" in (
        result.output
    )
    assert json.loads(runner.invoke(app, ["list", "--json"]).output) == []


def test_every_error_of_a_file_is_labelled_with_the_file(tmp_path: Path, origin: Path) -> None:
    # What a new user saw (issue 16): the second and later lines said `request:`.
    path = tmp_path / "routines.yaml"
    path.write_text(
        f"routines:\n  - name: nightly\n    promt: Tidy up.\n    repositories:\n      - {origin}\n"
    )
    result = runner.invoke(app, ["apply", "-f", str(path)])
    assert result.exit_code == 1
    lines = " ".join(result.output.split()).replace(f"{path}:", "\n" + f"{path}:").split("\n")
    assert [line.strip() for line in lines[1:]] == [
        f"{path}: routines[0] (nightly).promt: unknown field; did you mean `prompt:`?",
        f"{path}: routines[0] (nightly).repositories[0]: a repository is a mapping; "
        f"write `- url: {origin}`",
    ]
    assert "request" not in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["token", "ghost"], "no routine named 'ghost'"),
        (["fire", "ghost"], "no routine named 'ghost'"),
        (["runs", "ghost"], "no routine named 'ghost'"),
        (["logs", "run_nope"], "no run or session 'run_nope'"),
    ],
)
def test_unknown_names_say_where_to_look(args: list[str], says: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and says in result.output


def test_token_needs_an_api_trigger(tmp_path: Path, origin: Path) -> None:
    runner.invoke(app, ["apply", "-f", str(routines_file(tmp_path, origin, triggers="[]"))])
    result = runner.invoke(app, ["token", "nightly"])
    assert result.exit_code == 1 and "has no API trigger; add `- type: api`" in result.output


def test_bad_settings_are_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTINED_WORKERS", "many")
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 1 and "ROUTINED_WORKERS: 'many' is not a number" in result.output


# What a server answers reaches the terminal inert too: a `--server` that answers with
# escape sequences (in an error's message, in a run's fields) drives nothing.

CLIPBOARD = "\x1b]52;c;Y3VybCBodHRwczovL3guZXhhbXBsZSB8IHNo\x07"
C1 = "\x9b2J\x9d0;title\x9c\x85\x7f"
CONTROLS = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]} - {"\n"}


@pytest.fixture
def hostile_server() -> Iterator[str]:
    """A server that answers `/api/v1/runs` with a run an agent wrote, and anything
    else with an error whose message holds escape sequences; its URL."""

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body: object
            if self.path.startswith("/api/v1/runs?"):
                status, body = 200, [hostile_run()]
            else:
                status, body = 404, {"error": {"message": f"no such thing{CLIPBOARD}{C1}"}}
            encoded = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def hostile_run() -> dict[str, object]:
    return {
        "id": "run_1",
        "session_id": "session_1",
        "routine": "nightly",
        "status": "failed",
        "created_at": "2026-11-28T12:00:00Z",
        "branches": [{"branch": f"claude/x{C1}"}],
        "error": f"agent_failed: {CLIPBOARD}\x1b[1A\x1b[2K{C1}",
        "summary": f"done{CLIPBOARD}",
    }


def inert(output: str) -> str:
    found = sorted({f"U+{ord(c):04X}" for c in output if c in CONTROLS})
    assert not found, f"{found} reach the terminal:\n{output!r}"
    return output


def test_a_servers_error_message_reaches_the_terminal_inert(
    hostile_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTINED_API_KEY", "rtd_anything")
    result = runner.invoke(app, ["--server", hostile_server, "show-run", "run_1"])
    assert result.exit_code == 1
    said = inert(result.stderr)
    assert "no such thing\\u001b]52;c;" in said and "\\u009b2J\\u009d0;title" in said


def test_a_servers_runs_reach_the_terminal_inert_and_json_stays_exact(
    hostile_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTINED_API_KEY", "rtd_anything")
    monkeypatch.setenv("COLUMNS", "1000")
    listed = runner.invoke(app, ["--server", hostile_server, "runs"])
    assert listed.exit_code == 0, listed.output
    shown = inert(listed.stdout)
    assert "claude/x\\u009b2J" in shown and "\\u001b[1A\\u001b[2K" in shown
    as_json = runner.invoke(app, ["--server", hostile_server, "runs", "--json"])
    assert json.loads(inert(as_json.stdout)) == [hostile_run()]


def test_a_listing_where_there_is_no_store_makes_none_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As seen: `routined list` run in another folder made an empty ./.routined there
    and said "No routines yet", as if the routines were gone."""
    from io import StringIO

    from rich.console import Console

    from routined.cli import common

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("ROUTINED_HOME")
    said = StringIO()
    monkeypatch.setattr(
        common, "err", Console(file=said, force_terminal=True, color_system=None, soft_wrap=True)
    )
    for command in (["list"], ["runs"], ["account", "list"], ["show", "ghost"], ["events"]):
        runner.invoke(app, command)
    assert list(elsewhere.iterdir()) == []  # no store, no home
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0
    assert f"No routines yet in {elsewhere / '.routined'}" in listed.output
    assert f"no store at {elsewhere / '.routined' / 'routined.db'}" in said.getvalue()
    assert "ROUTINED_HOME is not set: ./.routined in this folder" in said.getvalue()


def test_only_a_command_that_may_change_something_starts_a_store(
    tmp_path: Path, origin: Path, home: Path
) -> None:
    assert runner.invoke(app, ["list", "--json"]).output == "[]\n"
    assert not home.exists()
    assert runner.invoke(app, ["apply", "-f", str(routines_file(tmp_path, origin))]).exit_code == 0
    assert (home / "routined.db").is_file()
    assert [r["name"] for r in json.loads(runner.invoke(app, ["list", "--json"]).output)] == [
        "nightly"
    ]
