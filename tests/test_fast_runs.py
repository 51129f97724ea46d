"""Whole runs that went through the real Claude Code binary and bubblewrap only to
check a stage's logic, moved onto the fast harness (tests/stage_support.py): an agent
CLI does what the scripted model had Claude Code do, in the stand-in sandboxes.

Each test's assertions are as they were in tests/test_run_environment.py and
tests/test_github_runs.py; only how its run is set up and executed changed (the
routine's `agent:`, the in-process `apply`, and one max_duration shortened where no
assertion names it). The walls, the agent's own behaviour and one end-to-end run of
each stage stay there, on the real binary and sandbox.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from routined.config import Settings
from routined.db import Store
from routined.models import Run, RunEvent
from routined.testing.fake_anthropic import FakeAnthropic
from routined.testing.fake_github import FakeGitHub, generate_app_key
from tests.conftest import branches, git
from tests.github_support import (
    PR_TRIGGER,
    REPOSITORY,
    HubFactory,
    add_pull_head,
    raw,
    write_routines,
)
from tests.github_support import apply as apply_routines
from tests.stage_support import agent, apply_file, execute, open_store, queue, write_routine
from tests.test_agent_runs import stored_events
from tests.test_github_runs import OPENED, events_of, github_settings


def apply(settings: Settings, tmp_path: Path, origin: Path, prompt: str, extra: str) -> Store:
    """Apply one routine, `docs-nightly`, with `extra` YAML lines under it."""
    store = open_store(settings)
    apply_file(store, write_routine(tmp_path, origin, prompt=prompt, extra=extra))
    return store


def run_once(settings: Settings, store: Store) -> Run:
    """Run `docs-nightly` here, to its end."""
    return asyncio.run(execute(store, settings, queue(store)))


def run_succeeds(settings: Settings, store: Store) -> tuple[Run, list[RunEvent]]:
    ended = run_once(settings, store)
    assert ended.status == "succeeded", ended.error
    return ended, stored_events(settings, ended.id)


def run_delivery(
    settings: Settings, tmp_path: Path, origin: Path | str, prompt: str, extra: str
) -> Run:
    """Apply a PR routine, deliver the opened payload, decide it, and run the run here."""
    store = open_store(settings)
    factory = HubFactory(store, tmp_path)
    try:
        apply_routines(
            store, write_routines(tmp_path, origin, PR_TRIGGER, prompt=prompt, extra=extra)
        )
        hub = factory()
        hub.accepted("pull_request", raw(OPENED))
        assert hub.decide() == 1
        [run] = hub.runs()
        asyncio.run(execute(store, settings, run.id))
        return hub.run(run.id)
    finally:
        factory.close()
        store.dispose()


def test_a_failing_setup_script_fails_the_run_with_its_output(
    settings: Settings, origin: Path, tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    marker = "[case:setup-fails]"
    # On this harness the agent is a CLI: it would leave this file, had it started.
    started = tmp_path / "the-agent-started"
    store = apply(
        settings,
        tmp_path,
        origin,
        f"Never starts. {marker}",
        f"    agent: {{command: [touch, {json.dumps(str(started))}]}}\n"
        "    environment:\n"
        "      setup_script: |\n"
        "        echo installing the toolchain\n"
        "        echo 'no such package: frobnicate' >&2\n"
        "        exit 3\n",
    )
    ended = run_once(settings, store)
    assert ended.status == "failed"
    assert ended.error is not None and ended.error.startswith(
        "setup_failed: the setup script exited with status 3: no such package: frobnicate"
    )
    events = stored_events(settings, ended.id)
    [output] = [e for e in events if e.kind == "setup.output"]
    assert output.data is not None and output.data["exit_code"] == 3
    assert output.data["lines"] == ["installing the toolchain", "no such package: frobnicate"]
    assert not fake_api.conversations(marker)  # the agent never started
    assert not started.exists()
    assert branches(origin).keys() == {"main"}


def test_max_duration_ends_the_run_as_timed_out_with_its_work(
    settings: Settings, origin: Path, tmp_path: Path
) -> None:
    marker = "[case:max-duration]"
    store = apply(
        settings,
        tmp_path,
        origin,
        f"Hang. {marker}",
        "    limits: {max_duration: 4s}\n" + agent("echo partial > partial.txt && sleep 60"),
    )
    ended = run_once(settings, store)
    assert ended.status == "timed_out"
    assert ended.error == "timed_out: stopped after 4 seconds (limits.max_duration)"
    [kept] = ended.branches
    assert git("show", f"{kept['branch']}:partial.txt", cwd=origin) == "partial"


def test_each_repository_delivers_under_its_own_prefix(
    settings: Settings, origin: Path, tmp_path: Path
) -> None:
    second = tmp_path / "second.git"
    git("clone", "--quiet", "--bare", str(origin), str(second))
    marker = "[case:prefixes]"
    store = apply(
        settings,
        tmp_path,
        origin,
        f"Write in both. {marker}",
        f"      - url: {second}\n        branch_prefix: bots/nightly/\n"
        + agent('echo a > A.md && for d in ../*/; do [ "$d" = ../app/ ] || echo b > $d/B.md; done'),
    )
    ended, _ = run_succeeds(settings, store)
    by_repository = {Path(b["repository"]).name: b["branch"] for b in ended.branches}
    assert by_repository["app.git"].startswith("claude/docs-nightly-")
    assert by_repository["second.git"].startswith("bots/nightly/docs-nightly-")
    assert git("show", f"{by_repository['second.git']}:B.md", cwd=second) == "b"


def test_a_setup_script_stopped_at_max_duration_leaves_its_output(
    settings: Settings, origin: Path, tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    store = apply(
        settings,
        tmp_path,
        origin,
        "Never starts. [case:setup-hangs]",
        "    limits: {max_duration: 1s}\n"
        "    environment:\n"
        "      setup_script: |\n"
        "        echo fetching the toolchain\n"
        "        sleep 60\n",
    )
    ended = run_once(settings, store)
    assert ended.status == "failed"
    assert ended.error == (
        "setup_failed: the setup script was still running when the run reached its max_duration"
    )
    [output] = [e for e in stored_events(settings, ended.id) if e.kind == "setup.output"]
    assert output.reason == "the setup script was stopped at the run's max_duration"
    assert output.data == {"lines": ["fetching the toolchain"]}


def test_an_agent_cli_printing_an_endless_line_is_still_read_to_its_end(
    settings: Settings, origin: Path, tmp_path: Path
) -> None:
    script = "python3 -c \"print('x' * 3000000)\"; echo finished > done.txt; echo ok"
    store = apply(
        settings,
        tmp_path,
        origin,
        "Print a lot.",
        f"    agent: {{command: [bash, -c, {json.dumps(script)}]}}\n",
    )
    ended, _ = run_succeeds(settings, store)
    [kept] = ended.branches
    assert git("show", f"{kept['branch']}:done.txt", cwd=origin) == "finished"
    [output] = [e for e in stored_events(settings, ended.id) if e.kind == "agent.output"]
    assert output.data is not None
    long_line, last = output.data["lines"]
    assert long_line == "x" * 65536 and last == "ok"


def test_a_failed_github_call_is_recorded_and_the_work_stays(
    settings: Settings, origin: Path, tmp_path: Path
) -> None:
    marker = "[case:github-fails]"
    add_pull_head(origin, tmp_path)
    key_file = tmp_path / "app.pem"
    with FakeGitHub(private_key=generate_app_key(key_file)) as github:
        github.add_repository(REPOSITORY, git_dir=origin)
        github.add_installation(1, "Codertocat", ["Hello-World"], account_type="User")
        github.add_issue(REPOSITORY, "Spam")
        github.add_issue(REPOSITORY, "PR")
        github.fail("POST", r"/repos/Codertocat/Hello-World/pulls", 422, "Validation Failed")
        configured = github_settings(settings, github, key_file)
        ended = run_delivery(
            configured,
            tmp_path,
            origin,
            f"Fix it. {marker}",
            "    pull_requests: true\n    comment: true\n" + agent("printf 'A fix.\\n' > FIX.md"),
        )
        assert ended.status == "succeeded", ended.error
        [pushed] = ended.branches
        assert git("show", f"{pushed['branch']}:FIX.md", cwd=origin) == "A fix."
        store = Store(configured.database_url.reveal())
        try:
            events = [(e.kind, e.reason or "") for e in events_of(store, ended.id)]
        finally:
            store.dispose()
        errors = [reason for kind, reason in events if kind == "github.error"]
        assert len(errors) == 1
        assert errors[0].startswith(
            f"opening a pull request of {pushed['branch']} on {REPOSITORY}: "
        )
        assert "422" in errors[0] or "Validation Failed" in errors[0]
        assert github.pulls() == []
        # The comment still links the session, and names no pull request.
        [comment] = github.comments(REPOSITORY)
        assert f"/sessions/{ended.session_id}" in comment["body"]
        assert "pull request:" not in comment["body"]


class GitOverHttp:
    """git's smart HTTP (`git http-backend`) for the bare repositories under `root`, as
    github.com serves them to a GitHub App: Basic credentials `x-access-token:TOKEN`
    with an installation token the fake GitHub minted for the repository."""

    def __init__(self, root: Path, github: FakeGitHub) -> None:
        self.root, self.github = root, github
        self.refused = 0
        served = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                served.answer(self)

            def do_POST(self) -> None:
                served.answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def allowed(self, authorization: str, repository: str) -> bool:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        user, _, token = base64.b64decode(encoded).decode(errors="replace").partition(":")
        if user != "x-access-token" or not token:
            return False
        # Whether the token reaches the repository, as GitHub itself would say.
        reached = httpx.get(
            f"{self.github.base_url}/installation/repositories",
            headers={"authorization": f"token {token}"},
        )
        names = [r["full_name"].lower() for r in reached.json().get("repositories", [])]
        return reached.status_code == 200 and repository.lower() in names

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        path, _, query = request.path.partition("?")
        repository = "/".join(path.strip("/").split("/")[:2]).removesuffix(".git")
        if not self.allowed(request.headers.get("authorization", ""), repository):
            self.refused += 1
            request.send_response(401)
            request.send_header("WWW-Authenticate", 'Basic realm="GitHub"')
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        length = int(request.headers.get("content-length") or 0)
        body = request.rfile.read(length) if length else b""
        done = subprocess.run(
            ["git", "http-backend"],
            input=body,
            capture_output=True,
            env={
                **os.environ,
                "GIT_PROJECT_ROOT": str(self.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": request.command,
                "CONTENT_TYPE": request.headers.get("content-type", ""),
                "CONTENT_LENGTH": str(length),
                "HTTP_CONTENT_ENCODING": request.headers.get("content-encoding", ""),
                "REMOTE_USER": "x-access-token",
                "REMOTE_ADDR": "127.0.0.1",
            },
        )
        head, _, rest = done.stdout.partition(b"\r\n\r\n")
        headers = [line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line]
        status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
        request.send_response(status)
        for name, value in headers:
            if name.lower() != "status":
                request.send_header(name, value)
        request.send_header("Content-Length", str(len(rest)))
        request.end_headers()
        request.wfile.write(rest)


def test_a_repository_on_github_is_cloned_and_pushed_with_the_apps_token(
    settings: Settings, origin: Path, tmp_path: Path
) -> None:
    marker = "[case:github-clone]"
    hosted = tmp_path / "hosted"
    git("clone", "--quiet", "--bare", str(origin), str(hosted / "Codertocat" / "Hello-World.git"))
    bare = hosted / "Codertocat" / "Hello-World.git"
    add_pull_head(bare, tmp_path)
    key_file = tmp_path / "app.pem"
    github = FakeGitHub(private_key=generate_app_key(key_file)).start()
    served = GitOverHttp(hosted, github)
    try:
        github.web_url = served.origin
        github.add_repository(REPOSITORY, git_dir=bare)
        github.add_installation(1, "Codertocat", ["Hello-World"], account_type="User")
        url = f"{served.origin}/{REPOSITORY}.git"
        # The server asks for a token: without one, git is refused.
        anonymous = subprocess.run(
            ["git", "ls-remote", url],
            capture_output=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        assert anonymous.returncode != 0 and served.refused == 1
        # With an installation token, as the app would use it, git is served.
        token = github.mint_token(1)
        with_token = url.replace("http://", f"http://x-access-token:{token}@")
        assert git("ls-remote", with_token, "refs/heads/main") != ""
        ended = run_delivery(
            github_settings(settings, github, key_file),
            tmp_path,
            url,
            f"Fix it. {marker}",
            "    pull_requests: true\n" + agent("printf 'A fix.\\n' > FIX.md"),
        )
        assert ended.status == "succeeded", ended.error
        [pushed] = ended.branches
        assert git("show", f"{pushed['branch']}:FIX.md", cwd=bare) == "A fix."
        [pull] = github.pulls(REPOSITORY)
        assert pull["head"]["ref"] == pushed["branch"]
    finally:
        served.close()
        github.stop()
