"""Accounts, plans and usage from the command line."""

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
    for name in ("ROUTINED_DATABASE_URL", "ROUTINED_TIMEZONE", "ROUTINED_PLANS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def write(tmp_path: Path, origin: Path, account: str | None = None) -> Path:
    path = tmp_path / "routines.yaml"
    owner = f"    account: {account}\n" if account else ""
    path.write_text(
        "routines:\n"
        "  - name: nightly\n"
        f"{owner}"
        "    prompt: Tidy up.\n"
        f"    repositories: [{{url: {origin}}}]\n"
        "    triggers: [{type: api}]\n"
    )
    return path


def test_a_fresh_install_has_the_default_account_on_the_unlimited_plan() -> None:
    listed = json.loads(runner.invoke(app, ["account", "list", "--json"]).output)
    assert [(a["id"], a["name"], a["plan"], a["extra_usage"], a["disabled"]) for a in listed] == [
        ("acct_default", "default", "unlimited", False, False)
    ]


def test_routines_belong_to_the_account_they_name(tmp_path: Path, origin: Path) -> None:
    refused = runner.invoke(app, ["apply", "-f", str(write(tmp_path, origin, "acme"))])
    assert refused.exit_code == 1
    assert "routines[0] (nightly).account: there is no account 'acme'" in refused.output
    assert "routined account create acme" in refused.output

    assert runner.invoke(app, ["account", "create", "acme", "--plan", "pro"]).exit_code == 0
    assert runner.invoke(app, ["account", "create", "acme"]).exit_code == 1  # once only
    bad_plan = runner.invoke(app, ["account", "create", "other", "--plan", "gold"])
    assert (
        bad_plan.exit_code == 1
        and "unknown plan 'gold'; the plans are: pro, max" in bad_plan.output
    )
    assert runner.invoke(app, ["apply", "-f", str(write(tmp_path, origin, "acme"))]).exit_code == 0
    [usage] = json.loads(runner.invoke(app, ["usage", "acme", "--json"]).output)
    assert (usage["plan"], usage["runs_per_day"], usage["remaining_today"]) == ("pro", 5, 5)
    assert usage["routines"] == [
        {"routine": "nightly", "manual_and_api_this_hour": 0, "remaining_this_hour": 30}
    ]


def test_manual_fires_count_against_the_plan_and_extra_usage_lets_them_go_on(
    tmp_path: Path, origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTINED_PLANS", "tiny:1,unlimited:none")
    runner.invoke(app, ["account", "create", "acme", "--plan", "tiny"])
    runner.invoke(app, ["apply", "-f", str(write(tmp_path, origin, "acme"))])
    assert runner.invoke(app, ["fire", "nightly"]).exit_code == 0
    refused = runner.invoke(app, ["fire", "nightly"])
    assert refused.exit_code == 1
    assert (
        "not started: account acme has started 1 runs today, plan tiny's limit of 1 a day"
        in refused.output
    )

    changed = runner.invoke(app, ["account", "plan", "acme", "tiny", "--extra-usage", "on"])
    assert changed.exit_code == 0 and "extra usage on" in changed.output
    assert runner.invoke(app, ["fire", "nightly"]).exit_code == 0
    [usage] = json.loads(runner.invoke(app, ["usage", "--json"]).output)[:1]
    assert (usage["account"], usage["runs_today"], usage["remaining_today"]) == ("acme", 2, 0)
    outcomes = [e["outcome"] for e in json.loads(runner.invoke(app, ["events", "--json"]).output)]
    assert outcomes == ["fired", "refused", "fired"]
    shown = runner.invoke(app, ["usage"]).output
    assert "acme (tiny, extra usage on): 2 of 1 runs today, 0 left" in shown


def test_disabling_an_account_is_reported(tmp_path: Path) -> None:
    assert runner.invoke(app, ["account", "disable", "default"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["account", "list", "--json"]).output)[0]["disabled"]
    assert runner.invoke(app, ["account", "enable", "default"]).exit_code == 0
    assert runner.invoke(app, ["account", "disable", "nobody"]).exit_code == 1
