"""The real sandbox: what a process inside can and cannot reach.

Each test runs a shell through the same launcher and bubblewrap command line the
worker builds for Claude Code, with the run's egress proxy behind it. A folder of
the test stands in for a system folder (like /opt), so that hiding inside shown
folders is tested, not just the absence of folders never shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from routined import workspace
from routined.sandbox import bubblewrap
from routined.sandbox.egress import EgressPolicy, EgressProxy, ModelGateway
from routined.testing.fake_anthropic import FakeAnthropic
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Box:
    host: Path  # shown inside, like a system folder
    run_dir: Path
    checkout: workspace.Checkout
    routined_home: Path
    user_home: Path
    secret_file: Path
    fake: FakeAnthropic

    @property
    def repo(self) -> Path:
        return self.checkout.path

    def launcher(self, socket: Path) -> tuple[Path, dict[str, str]]:
        """The launcher the worker would write for this run, and the agent's environment."""
        layout = bubblewrap.run_layout(
            run_dir=self.run_dir,
            cwd=self.repo,
            protected=workspace.protected_paths(self.checkout),
            readable=[self.checkout.mirror_objects],
            masked=[self.routined_home, self.user_home, self.secret_file],
            egress_socket=socket,
        )
        layout = dataclasses.replace(layout, system_roots=(*layout.system_roots, str(self.host)))
        env = bubblewrap.agent_environment(
            home=self.run_dir / "home", tmp=self.run_dir / "tmp", extra={}
        )
        launcher = self.run_dir / "private" / "launch-agent"
        bubblewrap.write_launcher(
            launcher,
            run_id="run_test",
            command=bubblewrap.bwrap_command(layout, Path("/bin/sh")),
            keep=env,
        )
        return launcher, env

    async def run(self, script: str, *, parent_env: dict[str, str] | None = None) -> Result:
        with tempfile.TemporaryDirectory(prefix="routined-test-") as folder:
            socket = Path(folder) / "egress.sock"
            launcher, env = self.launcher(socket)
            proxy = EgressProxy(
                EgressPolicy(), lambda _: None, ModelGateway(self.fake.base_url, "sk-ant-test")
            )
            await proxy.start(socket)
            owner = bubblewrap.owner(bubblewrap.SANDBOX_UID)
            if owner is not None:
                os.chown(socket, owner, owner)
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
async def box(
    tmp_path: Path, fake_api: FakeAnthropic, origin: Path, monkeypatch: pytest.MonkeyPatch
) -> Box:
    host = tmp_path / "host"
    user_home = host / "user-home"
    user_home.mkdir(parents=True)
    (user_home / ".netrc").write_text("machine github.com password hunter2\n")
    monkeypatch.setenv("HOME", str(user_home))
    (host / "shared.txt").write_text("anyone may read this\n")
    secret_file = host / "db-url"
    secret_file.write_text("postgresql://routined:s3cret@db/routined\n")
    routined_home = host / "routined-home"
    run_dir = routined_home / "runs" / "run_test"
    for folder in ("workspace", "home", "tmp", "private"):
        (run_dir / folder).mkdir(parents=True)
    (routined_home / "routined.db").write_text("the store")
    mirror = await workspace.sync_mirror(str(origin), routined_home / "mirrors")
    owner = bubblewrap.owner(bubblewrap.SANDBOX_UID)
    checkout = await workspace.clone(mirror, run_dir / "workspace" / "app", owner=owner)
    await workspace.hand_over([run_dir / "workspace", run_dir / "home", run_dir / "tmp"], owner)
    return Box(host, run_dir, checkout, routined_home, user_home, secret_file, fake_api)


async def test_the_workspace_is_writable_and_the_system_is_not(box: Box) -> None:
    result = await box.run("echo made > made.txt; touch /usr/local/routined-probe /planted")
    assert (box.repo / "made.txt").read_text() == "made\n"
    assert result.err.count("Read-only file system") == 2
    assert not Path("/usr/local/routined-probe").exists()


async def test_homes_and_secret_files_are_hidden_inside_shown_folders(box: Box) -> None:
    result = await box.run(
        f"cat {box.host}/shared.txt; cat {box.routined_home}/routined.db; "
        f"cat {box.user_home}/.netrc; cat {box.secret_file}; echo end; "
        f"echo x > {box.routined_home}/planted"
    )
    assert "anyone may read this" in result.out  # the folder is shown ...
    assert "the store" not in result.out  # ... but not what is masked in it
    assert "hunter2" not in result.out and "s3cret" not in result.out
    assert "end" in result.out
    assert "Read-only file system" in result.err
    assert not (box.routined_home / "planted").exists()


async def test_folders_outside_the_list_are_not_there(box: Box, origin: Path) -> None:
    result = await box.run(f"ls /root /home /srv /var/lib 2>&1; ls -A {origin}")
    assert result.out.count("No such file or directory") == 4
    assert result.out.split()[-1:] == ["objects"]  # the borrowed objects, and nothing else


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


async def test_borrowed_objects_are_read_only(box: Box) -> None:
    objects = box.checkout.mirror_objects
    result = await box.run(f"touch {objects}/planted; git log --oneline | wc -l")
    assert "Read-only file system" in result.err
    assert result.out.strip() == "2"  # the history is there, read through the mirror
    assert not (objects / "planted").exists()


async def test_everyday_git_works_inside(box: Box) -> None:
    result = await box.run(
        "git switch --quiet -c claude/fix origin/main && echo fix > fix.txt && git add fix.txt "
        "&& git -c user.name=a -c user.email=a@b commit --quiet -m fix && git log --format=%s -1"
    )
    assert result.out.strip() == "fix", result.err


async def test_only_the_allowed_environment_gets_in(box: Box) -> None:
    result = await box.run(
        "env",
        parent_env={
            "ROUTINED_DATABASE_URL": "postgresql://secret",
            "DB.PASSWORD": "hunter2",  # not a shell name: bash cannot even unset it
            "CLAUDE_CODE_OAUTH_TOKEN": "oauth-secret",
        },
    )
    seen = dict(line.split("=", 1) for line in result.out.splitlines() if "=" in line)
    for leaked in ("secret", "hunter2", "oauth-secret"):
        assert leaked not in result.out
    assert seen["HOME"] == str(box.run_dir / "home")
    assert seen["IS_SANDBOX"] == "1"
    assert seen["ANTHROPIC_BASE_URL"] == bubblewrap.MODEL_GATEWAY_URL
    assert seen["ANTHROPIC_API_KEY"] == bubblewrap.GATEWAY_API_KEY  # not the real one
    assert seen["HTTPS_PROXY"] == bubblewrap.PROXY_URL


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_network_is_the_model_gateway_and_nothing_else(box: Box) -> None:
    port = box.fake.port
    body = '{"model": "m", "messages": []}'
    result = await box.run(
        f"curl -s -o /dev/null -w 'gateway:%{{http_code}}\\n' -X POST "
        f"-H 'x-api-key: sk-stolen' -d '{body}' $ANTHROPIC_BASE_URL/v1/messages/count_tokens; "
        f"curl -s -D - -o /dev/null $ANTHROPIC_BASE_URL/v1/files | tr -d '\\r'; "
        f"curl -s -D - -o /dev/null http://127.0.0.2:{port}/ | tr -d '\\r'; "
        f"curl -s --noproxy '*' -m 5 http://127.0.0.1:{port}/ || echo direct:refused"
    )
    assert "gateway:200" in result.out  # the fake accepted: the real key was added
    [seen] = [r for r in box.fake.requests if r.body == {"model": "m", "messages": []}]
    assert seen.headers["x-api-key"] == "sk-ant-test"
    box.fake.requests.remove(seen)
    assert "x-deny-reason: path_not_allowed" in result.out  # the key is for Claude Code's calls
    assert "HTTP/1.1 403" in result.out and "x-deny-reason: host_not_allowed" in result.out
    assert "direct:refused" in result.out


async def test_no_capabilities_and_no_namespaces_of_its_own(box: Box) -> None:
    result = await box.run(
        "grep CapEff /proc/self/status; unshare -U true || echo no-userns; "
        "unshare -m true || echo no-mountns"
    )
    assert "CapEff:\t0000000000000000" in result.out
    assert "no-userns" in result.out and "no-mountns" in result.out


async def test_stop_ends_the_whole_sandbox(box: Box) -> None:
    started = box.repo / "started"
    running = asyncio.create_task(
        box.run(f"setsid sleep 60 & touch {started}; sleep 60; echo not-stopped")
    )
    await wait_until(started.exists)
    await bubblewrap.stop(f"{box.run_dir}/")
    result = await asyncio.wait_for(running, 10)
    assert "not-stopped" not in result.out
    assert result.code != 0
    assert run_processes(box.run_dir) == []


def run_processes(run_dir: Path) -> list[int]:
    """Processes whose command line names this run's folder (its sandboxes)."""
    marker = f"{run_dir}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


async def test_a_sandbox_dies_with_routined(box: Box, tmp_path: Path) -> None:
    """Even when routined is killed outright, none of its sandboxes lives on."""
    unused = tmp_path / "unused.sock"
    unused.touch()
    launcher, env = box.launcher(unused)
    started = box.repo / "started"
    stand_in = await asyncio.create_subprocess_exec(  # a routined that gets killed
        sys.executable,
        "-c",
        "import subprocess, sys; subprocess.Popen(sys.argv[1:]); sys.stdin.read()",
        str(launcher),
        "-c",
        f"touch {started}; sleep 60",
        env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE,
    )
    await wait_until(started.exists)
    stand_in.kill()
    await stand_in.wait()
    await wait_until(lambda: not run_processes(box.run_dir))


async def test_orphaned_sandboxes_are_reaped(box: Box, tmp_path: Path) -> None:
    """A sandbox whose starter died as it started (so bubblewrap never heard) is ended
    by the next sweep."""
    unused = tmp_path / "unused.sock"
    unused.touch()
    launcher, env = box.launcher(unused)
    started = box.repo / "started"
    orphaning = await asyncio.create_subprocess_exec(  # starts it, detached, and leaves
        sys.executable,
        "-c",
        "import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True)",
        "setsid",
        "--fork",
        str(launcher),
        "-c",
        f"touch {started}; sleep 60",
        env={**os.environ, **env},
    )
    await orphaning.wait()
    await wait_until(started.exists)
    runs_dir = box.run_dir.parent
    assert run_processes(box.run_dir)
    reaped = bubblewrap.reap_orphans(runs_dir)
    assert reaped
    await wait_until(lambda: not run_processes(box.run_dir))


async def test_a_masked_folder_inside_another_is_hidden_by_it(tmp_path: Path) -> None:
    # A store beside routined's home rather than in it: both folders are masked.
    outer = tmp_path / "srv"
    inner = outer / "routined-home"
    run_dir = inner / "runs" / "run_nested"
    for folder in ("workspace", "home", "tmp"):
        (run_dir / folder).mkdir(parents=True)
    (outer / "routined.db").write_text("the store")
    (inner / "secret.key").write_text("the key")
    await workspace.hand_over([run_dir / "workspace"], bubblewrap.owner(bubblewrap.SANDBOX_UID))
    tmp_path.chmod(0o755)  # shown as a system folder is: readable by anyone
    layout = bubblewrap.run_layout(
        run_dir=run_dir,
        cwd=run_dir / "workspace",
        protected=[],
        readable=[],
        masked=[inner, outer],
        egress_socket=None,
    )
    layout = dataclasses.replace(layout, system_roots=(*layout.system_roots, str(tmp_path)))
    process = await asyncio.create_subprocess_exec(
        *bubblewrap.bwrap_command(layout, Path("/bin/sh")),
        "-c",
        f"cat {outer}/routined.db {inner}/secret.key; echo made > made.txt; echo end",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert out.decode().split() == ["end"]
    assert (run_dir / "workspace" / "made.txt").read_text() == "made\n"


async def test_links_planted_over_protected_git_metadata_show_nothing_of_the_host(
    box: Box, tmp_path: Path
) -> None:
    """The attack: a setup script (an earlier sandbox of the run) made `.git/config` and
    `.git/hooks`, which the agent's sandbox shows read-only, links to a host file and
    to the host's /proc, relative so that they name the same paths inside: the
    agent's sandbox then showed the file, and every host process (other runs'
    environments among them) in its own /proc."""
    hidden = tmp_path / "host-only.txt"
    hidden.write_text("host-only, never shown\n")
    up = "../" * len((box.repo / ".git").parts[1:])
    planted = await box.run(
        f"mv .git .git-real && mkdir .git && ln -s {up}{str(hidden)[1:]} .git/config && "
        f"ln -s {up}proc .git/hooks"
    )
    assert planted.code == 0, planted.err
    agent = await box.run(f"cat {hidden}; ls -d /proc/[0-9]* | wc -l")
    assert "host-only" not in agent.out
    assert int(agent.out.split()[-1]) < 20, agent  # its own few processes, not the host's
