"""The real sandbox: what a process inside can and cannot reach.

Each test runs a shell through the same launcher and bubblewrap command line the
worker builds for Claude Code, with the run's egress proxy behind it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from routined import sandbox, workspace
from routined.egress import EgressPolicy, EgressProxy
from routined.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.anyio
HELPER = sandbox.seccomp_helper(None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Box:
    run_dir: Path
    checkout: workspace.Checkout
    repo: Path
    routined_home: Path
    user_home: Path
    fake: FakeAnthropic

    async def run(self, script: str, *, parent_env: dict[str, str] | None = None) -> Result:
        with tempfile.TemporaryDirectory(prefix="routined-test-") as folder:
            socket = Path(folder) / "egress.sock"
            layout = sandbox.run_layout(
                run_dir=self.run_dir,
                cwd=self.repo,
                protected=[self.repo / ".git" / "config", self.repo / ".git" / "hooks"],
                readable=[p for p in (self.checkout.borrowed_objects,) if p is not None],
                routined_home=self.routined_home,
                executables=[p for p in (HELPER,) if p is not None],
                egress_socket=socket,
                seccomp_helper=HELPER,
            )
            env = sandbox.agent_environment(
                home=self.run_dir / "home",
                tmp=self.run_dir / "tmp",
                model_base_url=self.fake.base_url,
                model_api_key="sk-ant-test",
                extra={},
            )
            launcher = self.run_dir / "private" / "launch"
            sandbox.write_launcher(
                launcher,
                run_id="run_test",
                command=sandbox.bwrap_command(layout, Path("/bin/sh")),
                keep=env,
            )
            proxy = EgressProxy(EgressPolicy.model_api_only(self.fake.base_url), lambda _: None)
            await proxy.start(socket)
            try:
                process = await asyncio.create_subprocess_exec(
                    str(launcher),
                    "-c",
                    script,
                    env={**os.environ, **(parent_env or {}), **env},
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await process.communicate()
            finally:
                await proxy.close()
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())


@pytest.fixture
def box(
    tmp_path: Path, fake_api: FakeAnthropic, origin: Path, monkeypatch: pytest.MonkeyPatch
) -> Box:
    user_home = tmp_path / "user-home"
    user_home.mkdir()
    (user_home / ".netrc").write_text("machine github.com password hunter2\n")
    monkeypatch.setenv("HOME", str(user_home))
    routined_home = tmp_path / "routined-home"
    run_dir = routined_home / "runs" / "run_test"
    for folder in ("workspace", "home", "tmp", "private"):
        (run_dir / folder).mkdir(parents=True)
    (routined_home / "routined.db").write_text("the store")
    repo = run_dir / "workspace" / "app"
    checkout = asyncio.run(workspace.clone(str(origin), repo))
    return Box(run_dir, checkout, repo, routined_home, user_home, fake_api)


async def test_the_workspace_is_writable_and_the_system_is_not(box: Box) -> None:
    result = await box.run("echo made > made.txt && touch /usr/local/routined-probe")
    assert (box.repo / "made.txt").read_text() == "made\n"
    assert "Read-only file system" in result.err
    assert not Path("/usr/local/routined-probe").exists()


async def test_routined_home_and_the_users_home_are_hidden_and_read_only(box: Box) -> None:
    result = await box.run(
        f"cat {box.routined_home}/routined.db; cat {box.user_home}/.netrc; "
        f"ls -A {box.user_home}; echo x > {box.routined_home}/planted"
    )
    assert "the store" not in result.out and "hunter2" not in result.out
    assert "No such file" in result.err
    assert "Read-only file system" in result.err
    assert not (box.routined_home / "planted").exists()


async def test_tmp_and_run_are_private(box: Box) -> None:
    with tempfile.NamedTemporaryFile(prefix="routined-host-canary-") as canary:
        result = await box.run("ls -A /tmp /run; echo scratch > /tmp/scratch")
        assert Path(canary.name).name not in result.out
    assert result.code == 0
    assert not Path("/tmp/scratch").exists()


async def test_git_metadata_that_could_run_code_is_read_only(box: Box) -> None:
    result = await box.run(
        "git config core.fsmonitor 'touch /tmp/pwned' ; echo x > .git/hooks/post-commit"
    )
    assert result.code != 0
    assert "fsmonitor" not in (box.repo / ".git" / "config").read_text()
    assert not (box.repo / ".git" / "hooks" / "post-commit").exists()


async def test_everyday_git_works_inside(box: Box, tmp_path: Path) -> None:
    result = await box.run(
        "git switch --quiet -c claude/fix origin/main && echo fix > fix.txt && git add fix.txt "
        "&& git -c user.name=a -c user.email=a@b commit --quiet -m fix && git log --format=%s -1"
    )
    assert result.out.strip() == "fix", result.err


async def test_only_the_allowed_environment_gets_in(box: Box) -> None:
    result = await box.run("env", parent_env={"ROUTINED_DATABASE_URL": "postgresql://secret"})
    seen = dict(line.split("=", 1) for line in result.out.splitlines() if "=" in line)
    assert "ROUTINED_DATABASE_URL" not in seen and "secret" not in result.out
    assert seen["HOME"] == str(box.run_dir / "home")
    assert seen["IS_SANDBOX"] == "1"
    assert seen["ANTHROPIC_BASE_URL"] == box.fake.base_url
    assert seen["HTTPS_PROXY"] == sandbox.PROXY_URL


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_network_is_the_model_api_through_the_proxy_and_nothing_else(box: Box) -> None:
    port = box.fake.port
    result = await box.run(
        f"curl -s -o /dev/null -w 'model:%{{http_code}}\\n' http://127.0.0.1:{port}/v1/models; "
        f"curl -s -D - -o /dev/null http://127.0.0.2:{port}/ | tr -d '\\r'; "
        f"curl -s --noproxy '*' -m 5 http://127.0.0.1:{port}/ || echo direct:refused"
    )
    assert "model:404" in result.out  # the fake's answer: the request got there
    assert "HTTP/1.1 403" in result.out and "x-deny-reason: host_not_allowed" in result.out
    assert "direct:refused" in result.out


@pytest.mark.skipif(HELPER is None, reason="the sandbox runtime's seccomp helper is not installed")
async def test_unix_sockets_cannot_be_created(box: Box) -> None:
    result = await box.run(
        "python3 -c 'import socket; socket.socket(socket.AF_UNIX)' && echo created"
    )
    assert "created" not in result.out
    assert "PermissionError" in result.err or "Operation not permitted" in result.err
