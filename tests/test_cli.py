"""The `routined` command on the embedded store: output shapes and clear failures."""

from __future__ import annotations

import json
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


def test_an_invalid_file_exits_non_zero_and_changes_nothing(tmp_path: Path, origin: Path) -> None:
    path = routines_file(tmp_path, origin, triggers="[{type: cron}]")
    result = runner.invoke(app, ["apply", "-f", str(path)])
    assert result.exit_code == 1
    assert f"{path}: routines[0] (nightly).triggers[0].type: unknown trigger type 'cron'" in (
        result.output
    )
    assert json.loads(runner.invoke(app, ["list", "--json"]).output) == []


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
