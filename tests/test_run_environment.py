"""A run's environment, whole: network levels, the setup script and its cache, secrets,
connectors, limits and any agent CLI.

Real parts throughout, as in tests/test_agent_runs.py: the `routined` command, the
store, git with bare origins, bubblewrap, the egress proxy and the real Claude Code
binary against the scripted model on loopback. What needs neither the real binary nor
the sandbox (a setup script failing or out of time, limits, push prefixes, an agent
CLI's output) runs on the fast harness: tests/test_fast_runs.py and test_stage_*.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from routined.config import Settings
from routined.db import Store
from routined.models import Run, RunEvent
from routined.testing.fake_anthropic import FakeAnthropic, bash, text, tool_use, write_file
from tests.conftest import git, push_commit
from tests.test_agent_runs import ROUTINED, cli_env, routined, run_here, stored_events

pytestmark = pytest.mark.agent
PROBE_SERVER = Path(__file__).with_name("mcp_probe_server.py")


def apply(settings: Settings, tmp_path: Path, origin: Path, prompt: str, extra: str) -> Store:
    """Apply one routine, `docs-nightly`, with `extra` YAML lines under it."""
    path = tmp_path / "routines.yaml"
    path.write_text(
        "routines:\n"
        "  - name: docs-nightly\n"
        f"    prompt: {json.dumps(prompt)}\n"
        "    repositories:\n"
        f"      - url: {origin}\n" + extra
    )
    routined(settings, "apply", "-f", str(path))
    return Store(settings.database_url.reveal())


def run_once(settings: Settings, store: Store) -> Run:
    """Run `docs-nightly` here, to its end."""
    return asyncio.run(run_here(settings, store, "docs-nightly", None))


def run_succeeds(settings: Settings, store: Store) -> tuple[Run, list[RunEvent]]:
    ended = run_once(settings, store)
    assert ended.status == "succeeded", ended.error
    return ended, stored_events(settings, ended.id)


def session_init(events: list[RunEvent]) -> dict[str, Any]:
    """What Claude Code says of the session as it starts: its tools, MCP servers, skills."""
    [init] = [e for e in events if e.kind == "agent.system"]
    assert init.data is not None
    data: dict[str, Any] = init.data["data"]
    return data


def set_secret(settings: Settings, name: str, given: str) -> None:
    """`routined secret set NAME`, the value on stdin."""
    subprocess.run(
        [ROUTINED, "secret", "set", name],
        input=given,
        env=cli_env(settings),
        check=True,
        capture_output=True,
        text=True,
    )


def tool_results(events: list[RunEvent]) -> str:
    return " ".join(json.dumps(e.data) for e in events if e.kind == "agent.user")


@pytest.fixture
def outside_service() -> Iterator[int]:
    """An HTTP server on 127.0.0.2: to the sandbox, a host elsewhere on the network."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"outside-service-says-hello"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("level", ["none", "custom"])
def test_network_none_refuses_a_host_that_custom_allows(
    settings: Settings,
    origin: Path,
    tmp_path: Path,
    fake_api: FakeAnthropic,
    outside_service: int,
    level: str,
) -> None:
    marker = f"[case:network-{level}]"
    fake_api.script(
        marker,
        [
            [bash(f"curl -s -w ' status:%{{http_code}}' http://127.0.0.2:{outside_service}/")],
            [text("Fetched.")],
        ],
    )
    environment = (
        "    environment:\n      network: none\n"
        if level == "none"
        else f"    environment:\n      network: custom\n"
        f"      allowed_hosts: ['127.0.0.2:{outside_service}']\n"
    )
    store = apply(settings, tmp_path, origin, f"Fetch. {marker}", environment)
    # The model API answered every turn either way: the run got to its end.
    _, events = run_succeeds(settings, store)
    said = tool_results(events)
    if level == "none":
        assert "status:403" in said and "outside-service-says-hello" not in said
        [denied] = [e for e in events if e.kind == "egress.denied"]
        assert denied.data == {
            "host": "127.0.0.2",
            "port": outside_service,
            "deny_reason": "host_not_allowed",
        }
    else:
        assert "outside-service-says-hello status:200" in said
        assert not [e for e in events if e.kind == "egress.denied"]
    [network] = [e for e in events if e.kind == "environment.network"]
    assert network.data == {"level": level}


def test_an_unchanged_setup_script_is_not_run_again(
    settings: Settings, origin: Path, tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    marker = "[case:setup-cache]"
    fake_api.script(marker, [[bash("cat ~/.tool/version")], [text("Checked.")]])
    store = apply(
        settings,
        tmp_path,
        origin,
        f"Use the tool. {marker}",
        "    environment:\n"
        "      setup_script: |\n"
        "        mkdir -p ~/.tool\n"
        '        echo "built $(cat /proc/sys/kernel/random/uuid)" > ~/.tool/version\n'
        "        sleep 1  # stands for an install that takes a while\n",
    )

    _, first = run_succeeds(settings, store)
    _, second = run_succeeds(settings, store)
    [ran] = [e for e in first if e.kind == "setup.output"]
    assert ran.data is not None and ran.data["exit_code"] == 0
    assert not [e for e in second if e.kind in ("setup.output", "setup.started")]
    [cached] = [e for e in second if e.kind == "setup.cached"]
    assert cached.data is not None and cached.data["seconds"] < ran.data["seconds"]
    # The second agent saw what the first run's script built, not a new build.
    first_build = tool_results(first).split("built ", 1)[1][:36]
    assert first_build in tool_results(second)

    routined(settings, "cache", "clear", "docs-nightly")
    _, third = run_succeeds(settings, store)
    assert [e for e in third if e.kind == "setup.output"]
    assert first_build not in tool_results(third)


def test_a_setup_result_is_kept_only_while_its_lock_files_are_unchanged(
    settings: Settings, origin: Path, tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    marker = "[case:setup-cache-files]"
    fake_api.script(marker, [[bash("cat ~/.deps")], [text("Checked.")]])
    colleague = tmp_path / "colleague"
    push_commit(origin, colleague, "deps.lock", "left-pad 1.0\n")
    store = apply(
        settings,
        tmp_path,
        origin,
        f"Use the deps. {marker}",
        "    environment:\n"
        "      setup_script: cp deps.lock ~/.deps\n"
        "      setup_cache_files: [deps.lock, tools/missing.lock]\n",
    )

    def script_ran() -> bool:
        _, events = run_succeeds(settings, store)
        return any(e.kind == "setup.started" for e in events)

    _, events = run_succeeds(settings, store)
    [missing] = [e for e in events if e.kind == "setup.cache_files_missing"]
    assert missing.data == {"paths": ["tools/missing.lock"]}
    assert "setup.started" in [e.kind for e in events]
    assert not script_ran()
    push_commit(origin, colleague, "README.md", "# app, read me\n")  # not a lock file
    assert not script_ran()
    push_commit(origin, colleague, "deps.lock", "left-pad 1.1\n")
    assert script_ran()
    _, events = run_succeeds(settings, store)
    assert [e.kind for e in events if e.kind.startswith("setup.")] == [
        "setup.cache_files_missing",
        "setup.cached",
    ]
    assert "left-pad 1.1" in tool_results(events)


def test_secret_values_never_reach_events_logs_or_the_api(
    settings: Settings, origin: Path, tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    deploy, agent_token = "dpl-6f1c2a9e8b7d", "agt-0b9e77c3d2a1"
    marker = "[case:secrets]"
    fake_api.script(
        marker,
        [
            [
                bash(
                    "cat ~/.deployrc; echo agent sees ${DEPLOY_TOKEN:-no-deploy-token} $AGENT_TOKEN"
                )
            ],
            [text(f"Done; the token was {agent_token}.")],
        ],
    )
    set_secret(settings, "DEPLOY_TOKEN", deploy + "\n")  # as `echo … |` sends it
    set_secret(settings, "AGENT_TOKEN", agent_token)
    store = apply(
        settings,
        tmp_path,
        origin,
        f"Deploy. {marker}",
        "    environment:\n"
        "      env: {LOG_LEVEL: debug}\n"
        "      secrets: [AGENT_TOKEN, {name: DEPLOY_TOKEN, setup_only: true}]\n"
        "      setup_script: |\n"
        '        echo "token=$DEPLOY_TOKEN" > ~/.deployrc\n'
        '        echo "setup used $DEPLOY_TOKEN at $LOG_LEVEL"\n',
    )
    ended, events = run_succeeds(settings, store)
    stored = json.dumps([[e.kind, e.reason, e.data] for e in events])
    # The agent did print both: the setup file, and its own variable; the setup-only
    # secret was gone from its environment.
    said = tool_results(events)
    assert "token=[redacted:DEPLOY_TOKEN]" in said
    assert "agent sees no-deploy-token [redacted:AGENT_TOKEN]" in said
    [setup] = [e for e in events if e.kind == "setup.output"]
    assert setup.data is not None
    assert setup.data["lines"] == ["setup used [redacted:DEPLOY_TOKEN] at debug"]
    logs = routined(settings, "logs", ended.id).stdout
    shown = routined(settings, "show-run", ended.id, "--json").stdout
    listed = routined(settings, "runs", "--json").stdout
    for value in (deploy, agent_token):
        assert value not in stored
        assert value not in logs and value not in shown and value not in listed
        assert value not in (ended.summary or "") and value not in (ended.error or "")
    assert ended.summary == "Done; the token was [redacted:AGENT_TOKEN]."


def test_a_connector_shows_up_in_the_agents_tools(
    settings: Settings, origin: Path, tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    push_commit(origin, tmp_path / "pusher", "probe.py", PROBE_SERVER.read_text())
    marker = "[case:connector]"
    fake_api.script(
        marker, [[tool_use("mcp__probe__echo", text="ping")], [text("The probe answered.")]]
    )
    store = apply(
        settings,
        tmp_path,
        origin,
        f"Ask the probe. {marker}",
        "    connectors:\n      probe: {command: python3, args: [probe.py]}\n",
    )
    _, events = run_succeeds(settings, store)
    # Claude Code's own account of the session's tools (it offers MCP tools to the
    # model through its tool search, so they need not be in the first request).
    init = session_init(events)
    assert "mcp__probe__echo" in init["tools"]
    assert {"name": "probe", "status": "connected", "source": "dynamic"} in init["mcp_servers"]
    assert "probe says ping" in tool_results(events)


def test_max_turns_stops_a_longer_session_and_keeps_its_work(
    settings: Settings, origin: Path, tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    marker = "[case:max-turns]"
    fake_api.script(
        marker,
        [
            [write_file("one.md", "first turn\n")],
            [write_file("two.md", "second turn\n")],
            [write_file("three.md", "third turn\n")],
            [write_file("four.md", "fourth turn\n")],
            [text("All four written.")],
        ],
    )
    store = apply(
        settings, tmp_path, origin, f"Write four files. {marker}", "    limits: {max_turns: 2}\n"
    )
    ended = run_once(settings, store)
    assert ended.status == "failed"
    assert ended.error is not None and ended.error.startswith("budget: stopped at max_turns 2")
    [kept] = ended.branches
    files = git("ls-tree", "--name-only", kept["branch"], cwd=origin).split()
    assert {"one.md", "two.md"} <= set(files) and "three.md" not in files
    assert ended.usage and ended.usage["output_tokens"] > 0
    assert ended.diff_stat is not None and ended.diff_stat["files"] == 2


def test_any_agent_cli_gets_the_prompt_and_its_work_is_delivered(
    settings: Settings, origin: Path, tmp_path: Path
) -> None:
    script = (
        'cat > from-stdin.txt; cp "$ROUTINED_PROMPT_FILE" from-file.txt; '
        "echo working; echo 'Wrote both copies of the prompt.'"
    )
    store = apply(
        settings,
        tmp_path,
        origin,
        "Copy your prompt into two files.",
        f"    agent: {{command: [bash, -c, {json.dumps(script)}]}}\n",
    )
    ended, _ = run_succeeds(settings, store)
    [kept] = ended.branches
    assert kept["branch"].startswith("claude/docs-nightly-")
    for name in ("from-stdin.txt", "from-file.txt"):
        assert git("show", f"{kept['branch']}:{name}", cwd=origin) == (
            "Copy your prompt into two files."
        )
    assert ended.summary == "working\nWrote both copies of the prompt."
    outputs = [e for e in stored_events(settings, ended.id) if e.kind == "agent.output"]
    assert outputs and outputs[0].data == {"lines": ["working", "Wrote both copies of the prompt."]}


def test_what_a_repository_commits_for_claude_code_is_honoured(
    settings: Settings, origin: Path, tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    pusher = tmp_path / "pusher"
    push_commit(origin, pusher, "probe.py", PROBE_SERVER.read_text())
    push_commit(
        origin,
        pusher,
        ".mcp.json",
        json.dumps({"mcpServers": {"committed": {"command": "python3", "args": ["probe.py"]}}}),
    )
    push_commit(origin, pusher, "CLAUDE.md", "House rule: write dates as ISO 8601 (rule-7f3a).\n")
    (pusher / ".claude" / "skills" / "release-notes").mkdir(parents=True)
    push_commit(
        origin,
        pusher,
        ".claude/skills/release-notes/SKILL.md",
        "---\nname: release-notes\ndescription: Write release notes the house way.\n---\n"
        "List the merged pull requests.\n",
    )
    marker = "[case:repository-setup]"
    fake_api.script(marker, [[tool_use("mcp__committed__echo", text="pong")], [text("Done.")]])
    store = apply(settings, tmp_path, origin, f"Follow the house rules. {marker}", "")
    _, events = run_succeeds(settings, store)
    init = session_init(events)
    assert "mcp__committed__echo" in init["tools"]
    assert "release-notes" in json.dumps(init)
    assert "probe says pong" in tool_results(events)
    [first, *_] = fake_api.conversations(marker)
    assert "rule-7f3a" in json.dumps(first.body)


def test_a_runs_unexpected_failure_is_logged_without_its_secrets(
    settings: Settings,
    origin: Path,
    tmp_path: Path,
    fake_api: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    value = "tok-9d8c7b6a5f4e"
    set_secret(settings, "API_TOKEN", value)
    store = apply(
        settings,
        tmp_path,
        origin,
        "Work. [case:bug]",
        "    environment: {secrets: [API_TOKEN]}\n",
    )

    def broken(pushed: object) -> None:
        raise RuntimeError(f"a bug that quotes {value}")

    monkeypatch.setattr("routined.runs.executor.push.total", broken)
    ended = run_once(settings, store)
    assert ended.status == "failed"
    assert ended.error == "internal_error: RuntimeError: a bug that quotes [redacted:API_TOKEN]"
    [logged] = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert value not in logged.getMessage() and "[redacted:API_TOKEN]" in logged.getMessage()
