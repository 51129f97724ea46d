"""Schedules from the command line: preview, apply's checks, pause, show, list and events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routined.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ROUTINED_HOME", str(tmp_path / "home"))
    for name in ("ROUTINED_DATABASE_URL", "ROUTINED_TIMEZONE", "ROUTINED_MIN_SCHEDULE_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def write(tmp_path: Path, origin: Path, triggers: str, extra: str = "") -> Path:
    path = tmp_path / "routines.yaml"
    path.write_text(
        "routines:\n"
        "  - name: nightly\n"
        "    prompt: Tidy up.\n"
        f"    repositories: [{{url: {origin}}}]\n"
        f"    triggers: {triggers}\n" + extra
    )
    return path


def test_preview_gives_the_instants_around_a_spring_forward_day() -> None:
    # Europe/Berlin, 2027-03-28: 02:00 CET becomes 03:00 CEST, so 02:30 does not exist.
    result = runner.invoke(
        app,
        ["preview", "daily at 02:30", "--tz", "Europe/Berlin", "--from", "2027-03-27T00:00:00Z",
         "--count", "3", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["instants"] == [
        "2027-03-27T01:30:00Z",
        "2027-03-28T01:00:00Z",
        "2027-03-29T00:30:00Z",
    ]
    assert shown["local"] == [
        "2027-03-27T02:30:00+01:00", "2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00",
    ]  # fmt: skip


def test_preview_reads_a_from_without_offset_in_the_zone_and_prints_a_table() -> None:
    result = runner.invoke(
        app,
        [
            "preview",
            "weekdays at 09:00",
            "--tz",
            "Asia/Kolkata",
            "--from",
            "2026-11-28T00:00",
            "--count",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    # Saturday 28th in Kolkata: the next weekdays are Monday 30th and Tuesday 1st.
    assert "2026-11-30T03:30:00Z" in result.output and "2026-12-01T03:30:00Z" in result.output
    assert "Mon 2026-11-30 09:00 IST" in result.output


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("every tuesday", "is not a schedule; write one of"),
        ("*/30 * * * *", "fires every 30 minutes at its fastest"),
        ("0 9 * * * *", "has 6 fields; write 5"),
        ("once 2020-01-01T09:00", "never fires after"),
    ],
)
def test_preview_of_a_bad_spec_exits_non_zero_with_the_reason(spec: str, says: str) -> None:
    result = runner.invoke(app, ["preview", spec, "--tz", "UTC"])
    assert result.exit_code == 1
    assert says in result.output


def test_preview_refuses_an_unknown_zone() -> None:
    result = runner.invoke(app, ["preview", "hourly", "--tz", "Mars/Olympus"])
    assert result.exit_code == 1 and "unknown time zone 'Mars/Olympus'" in result.output


def test_apply_refuses_a_schedule_faster_than_the_floor_naming_the_interval(
    tmp_path: Path, origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, origin, "[{type: schedule, cron: '*/30 * * * *'}]")
    refused = runner.invoke(app, ["apply", "-f", str(path)])
    assert refused.exit_code == 1
    assert "routines[0] (nightly).triggers[0].cron" in refused.output
    assert (
        "fires every 30 minutes" in refused.output
        and "minimum interval between fires is 1 hour" in refused.output
    )
    assert json.loads(runner.invoke(app, ["list", "--json"]).output) == []
    # An operator may lower the floor.
    monkeypatch.setenv("ROUTINED_MIN_SCHEDULE_INTERVAL", "1800")
    assert runner.invoke(app, ["apply", "-f", str(path)]).exit_code == 0


@pytest.mark.parametrize(
    ("trigger", "says"),
    [
        ("{type: schedule}", "give exactly one of `schedule:`"),
        ("{type: schedule, schedule: hourly, cron: '0 * * * *'}", "give exactly one of"),
        (
            "{type: schedule, schedule: daily at 25:00}",
            "triggers[0].schedule: 'daily at 25:00': the time is 00:00 to 23:59",
        ),
        (
            "{type: schedule, schedule: hourly, timezone: Europe/Paris2}",
            "triggers[0].timezone: unknown time zone",
        ),
        ("{type: schedule, schedule: hourly, every: 2h}", "triggers[0].every: unknown field"),
        ("{type: cron}", "unknown trigger type 'cron'; supported: api, schedule"),
    ],
)
def test_apply_explains_a_bad_schedule_trigger(
    tmp_path: Path, origin: Path, trigger: str, says: str
) -> None:
    result = runner.invoke(app, ["apply", "-f", str(write(tmp_path, origin, f"[{trigger}]"))])
    assert result.exit_code == 1
    assert says in result.output


def test_show_lists_the_next_five_runs_and_list_the_next_one_in_its_zone(
    tmp_path: Path, origin: Path
) -> None:
    triggers = (
        "[{type: schedule, schedule: weekdays at 09:00, timezone: America/New_York}, {type: api}]"
    )
    assert (
        runner.invoke(app, ["apply", "-f", str(write(tmp_path, origin, triggers))]).exit_code == 0
    )
    shown = json.loads(runner.invoke(app, ["show", "nightly", "--json"]).output)
    schedule, api = shown["triggers"]
    assert api["type"] == "api" and "next_runs" not in api
    assert schedule["state"] == "scheduled" and schedule["timezone"] == "America/New_York"
    instants = [datetime.fromisoformat(i.replace("Z", "+00:00")) for i in schedule["next_runs"]]
    assert len(instants) == 5 and instants == sorted(instants) and instants[0] > datetime.now(UTC)
    for moment in instants:
        local = moment.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
        assert (local.hour, local.minute) == (9, 0) and local.weekday() < 5
    assert (shown["catch_up"], shown["overlap"], shown["catch_up_window"]) == (
        "latest",
        "skip",
        "7 days",
    )

    [listed] = json.loads(runner.invoke(app, ["list", "--json"]).output)
    assert listed["next_run"]["at"] == schedule["next_runs"][0]
    assert listed["next_run"]["local"].endswith("(America/New_York)")
    table = runner.invoke(app, ["list"]).output
    assert "09:00 E" in table and "America/New_York" in table


def test_pause_and_resume_and_a_manual_fire_leaves_the_schedule_alone(
    tmp_path: Path, origin: Path
) -> None:
    path = write(tmp_path, origin, "[{type: schedule, schedule: daily at 09:00}]")
    assert runner.invoke(app, ["apply", "-f", str(path)]).exit_code == 0
    before = json.loads(runner.invoke(app, ["show", "nightly", "--json"]).output)

    assert "nightly paused" in runner.invoke(app, ["pause", "nightly"]).output
    assert "already paused" in runner.invoke(app, ["pause", "nightly"]).output
    paused = json.loads(runner.invoke(app, ["show", "nightly", "--json"]).output)
    assert paused["paused"] and paused["triggers"][0]["state"] == "paused"

    fired = runner.invoke(app, ["fire", "nightly", "--json"])
    assert fired.exit_code == 0, fired.output
    after = json.loads(runner.invoke(app, ["show", "nightly", "--json"]).output)
    assert after["triggers"][0]["next_runs"] == before["triggers"][0]["next_runs"]

    assert "nightly resumed" in runner.invoke(app, ["resume", "nightly"]).output
    resumed = json.loads(runner.invoke(app, ["show", "nightly", "--json"]).output)
    assert not resumed["paused"] and resumed["triggers"][0]["state"] == "scheduled"

    [event] = json.loads(runner.invoke(app, ["events", "nightly", "--json"]).output)
    assert (event["trigger_type"], event["outcome"], event["scheduled_at"]) == (
        "manual",
        "fired",
        None,
    )
    assert event["run_id"] == json.loads(fired.output)["run_id"]
    assert "the routine is paused" in event["reason"]
    assert "fired by hand" in runner.invoke(app, ["events"]).output


def test_policies_are_applied_and_reported(tmp_path: Path, origin: Path) -> None:
    triggers = "[{type: schedule, schedule: hourly}]"
    runner.invoke(app, ["apply", "-f", str(write(tmp_path, origin, triggers))])
    changed = runner.invoke(
        app,
        [
            "apply",
            "-f",
            str(
                write(
                    tmp_path,
                    origin,
                    triggers,
                    "    catch_up: all\n    overlap: queue_one\n    stagger: 5m\n",
                )
            ),
        ],
    )
    assert changed.exit_code == 0
    assert "catch_up latest → all" in changed.output and "stagger 0 → 300" in changed.output
    shown = json.loads(runner.invoke(app, ["show", "nightly", "--json"]).output)
    assert (shown["catch_up"], shown["overlap"], shown["stagger"]) == (
        "all",
        "queue_one",
        "5 minutes",
    )
    bad = runner.invoke(
        app, ["apply", "-f", str(write(tmp_path, origin, triggers, "    overlap: sometimes\n"))]
    )
    assert bad.exit_code == 1 and "overlap" in bad.output and "queue_one" in bad.output
