"""The walls around a run, attacked as an attacker would: through a real `routined serve`,
a scripted hostile agent in the real sandbox, and a local user of the same machine.

- No descriptor of routined's reaches a sandbox or a git process; an agent that
  steals every socket it can see captures no fire.
- `serve` comes back at once after `kill -9` in the middle of a clone, and the
  git processes it left are ended.
- What an agent makes belongs to the sandbox user (not root) and keeps no
  set-user-id bit; routined's home is its own alone, whatever the umask.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from routined import runs, workspace
from routined.config import Settings
from routined.db import Store
from routined.models import Routine
from routined.sandbox import bubblewrap
from routined.testing.fake_anthropic import FakeAnthropic, bash, text
from tests.conftest import branches, git, make_origin, poll_until, push_commit

pytestmark = pytest.mark.agent
ROUTINED = str(Path(sys.executable).with_name("routined"))
FIRE_HEADERS = {
    "anthropic-beta": "experimental-cc-routine-2026-04-01",
    "anthropic-version": "2023-06-01",
}


def cli_env(settings: Settings) -> dict[str, str]:
    env = {
        **os.environ,
        "ROUTINED_HOME": str(settings.home),
        "ANTHROPIC_BASE_URL": settings.anthropic_base_url,
        "ANTHROPIC_API_KEY": settings.anthropic_api_key.reveal(),
        "ROUTINED_HEARTBEAT_INTERVAL": "0.5",
        "ROUTINED_POLL_INTERVAL": "0.2",
        "ROUTINED_ROUTINE_HOURLY_CAP": "1000",
    }
    env.pop("ROUTINED_PUBLIC_URL", None)
    env.pop("ROUTINED_DATABASE_URL", None)
    return env


def routined(settings: Settings, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [ROUTINED, *args],
        env=cli_env(settings),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@contextlib.contextmanager
def serving(
    settings: Settings, port: int = 0, *, workers: int = 2
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`routined serve`, and the URL it serves at; stopped (or killed) at the end."""
    process = subprocess.Popen(
        [ROUTINED, "serve", "--port", str(port)],
        env={**cli_env(settings), "ROUTINED_WORKERS": str(workers)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"serving at (http://\S+)", line)
    try:
        assert found, f"serve printed {line!r}{process.stdout.read() if not found else ''}"
        # Drained, so that what it prints never fills the pipe and blocks it.
        threading.Thread(target=process.stdout.read, daemon=True).start()
        yield process, found.group(1)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


@dataclass
class Server:
    """One `routined serve` the module's attacks share, with its home and an origin."""

    settings: Settings
    url: str
    origin: Path
    folder: Path

    def apply(self, name: str, body: str) -> dict[str, str]:
        """Apply routine `name` (with an API trigger); its token as `routined token` says.
        `body` holds the routine's fields; `{origin}` in it is the origin's path."""
        path = self.folder / f"{name}.yaml"
        fields = body.replace("{origin}", str(self.origin))
        path.write_text(f"routines:\n  - name: {name}\n{fields}    triggers:\n      - type: api\n")
        routined(self.settings, "apply", "-f", str(path))
        issued: dict[str, str] = json.loads(routined(self.settings, "token", name, "--json"))
        return issued

    def fire(self, issued: dict[str, str], text: str = "") -> str:
        fire_url = re.sub(r"^http://[^/]+", self.url, issued["url"])
        answer = httpx.post(
            fire_url,
            headers={**FIRE_HEADERS, "Authorization": f"Bearer {issued['token']}"},
            json={"text": text} if text else None,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        session: str = answer.json()["claude_code_session_id"]
        return session

    def run(self, session: str) -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(f"{self.url}/sessions/{session}", timeout=10).json()
        return found

    def ended(self, session: str, seconds: float = 120) -> dict[str, Any]:
        poll_until(
            f"run {session} ends", lambda: self.run(session)["status"] in runs.TERMINAL, seconds
        )
        return self.run(session)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_api: FakeAnthropic) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("walls")
    settings = Settings.from_env(
        {
            "ROUTINED_HOME": str(folder / "home"),
            "ANTHROPIC_BASE_URL": fake_api.base_url,
            "ANTHROPIC_API_KEY": "sk-ant-test",
        }
    )
    origin = make_origin(folder / "origin")
    with serving(settings, workers=4) as (_, url):
        yield Server(settings, url, origin, folder)


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def socket_inodes(pid: int) -> dict[int, str]:
    """The sockets a process holds: inode → the descriptor's number."""
    held = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                held[int(target[8:-1])] = fd.name
    return held


def listening_inode(port: int) -> int:
    """The inode of the socket listening on 127.0.0.1:`port` (from the kernel's table)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], int(fields[9])
        if local == f"0100007F:{port:04X}" and state == "0A":  # 0A: LISTEN
            return inode
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def git_processes(starter: int) -> list[int]:
    """Processes of the git sessions `starter` (a routined process) started, helpers too."""
    mark = f"{workspace.OWNER_VARIABLE}={starter}:".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if any(v.startswith(mark) for v in environ.read_bytes().split(b"\0")):
                found.append(int(environ.parent.name))
    return found


class Staller:
    """A "git server" on loopback that takes connections and never answers: a clone
    from it waits for ever, as one from a stalled remote does."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                self.held.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


def test_serve_restarts_at_once_after_kill_9_mid_clone_and_no_git_holds_its_socket(
    settings: Settings, tmp_path: Path
) -> None:
    staller = Staller()
    try:
        port = free_port()
        own = Server(settings, f"http://127.0.0.1:{port}", tmp_path, tmp_path)
        issued = own.apply(
            "stalled",
            "    prompt: never gets this far\n"
            "    repositories:\n"
            f"      - url: http://127.0.0.1:{staller.port}/app.git\n",
        )
        with serving(settings, port) as (server, _):
            own.fire(issued)
            poll_until("git reaches the stalled remote", lambda: bool(staller.held))
            poll_until("git is running", lambda: bool(git_processes(server.pid)))
            listener = listening_inode(port)
            assert listener in socket_inodes(server.pid)
            gits = git_processes(server.pid)
            # git and its helper (git-remote-http): neither holds the server's socket.
            assert len(gits) >= 2
            for pid in gits:
                assert listener not in socket_inodes(pid), f"git {pid} holds the listener"
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=10)
            orphans = [pid for pid in gits if Path(f"/proc/{pid}").exists()]
            assert orphans, "the stalled git did not outlive the killed server"

        with serving(settings, port) as (_, again):
            assert again.endswith(f":{port}")
            assert httpx.get(f"{again}/healthz", timeout=5).json() == {"status": "ok"}
            # The new server's worker ends what the killed one left.
            poll_until(
                "orphaned git processes are ended",
                lambda: not any(Path(f"/proc/{pid}").exists() for pid in orphans),
            )
    finally:
        staller.close()


# Run inside the sandbox by the hostile agent, for a few seconds while fires arrive:
# take a copy of every socket any process it can see holds (pidfd_getfd, as the
# attack did) and accept on any that listens. It says when it has started.
_THIEF = r"""
import ctypes, json, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
BRIDGE = ("127.0.0.1", 3128)
stolen, listening, captured = set(), [], []
part = sys.argv[1]
open(f"thief-{part}.started", "w").close()
deadline = time.time() + 4
while time.time() < deadline:
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            pidfd = os.pidfd_open(int(pid))
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            copy = libc.syscall(438, pidfd, int(fd), 0)  # pidfd_getfd
            if copy < 0:
                continue
            stolen.add(f"{pid}:{fd}")
            s = socket.socket(fileno=copy)
            network = s.family in (socket.AF_INET, socket.AF_INET6)
            bound = s.getsockname() if network else None
            # A network listener other than the bridge's (which serves the agent's own
            # proxy): inside, nothing else listens, unless it came from outside.
            if network and bound != BRIDGE and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                listening.append(f"{pid}:{fd} {s.family.name} {bound}")
                s.settimeout(0.05)
                try:
                    conn, _ = s.accept()
                    conn.settimeout(2)
                    captured.append(conn.recv(65536).decode(errors="replace"))
                except OSError:
                    pass
            s.close()
        os.close(pidfd)
    time.sleep(0.05)
report = {"stolen": sorted(stolen), "listening": listening, "captured": captured}
open(f"thief-{part}.json", "w").write(json.dumps(report))
"""


def test_a_hostile_agent_captures_no_fire_of_another_routine(
    server: Server, fake_api: FakeAnthropic
) -> None:
    """The thief runs twice: as the routine's setup script (a sandbox routined starts
    itself) and as the agent's command (a sandbox the Agent SDK starts)."""
    marker = "[case:thief]"
    thief_origin = make_origin(server.folder / "thief-origin")
    push_commit(thief_origin, server.folder / "thief-seed", "thief.py", _THIEF)
    fake_api.script(marker, [[bash("python3 thief.py agent")], [text("Done.")]])
    thief = server.apply(
        "thief",
        f"    prompt: steal {marker}\n"
        f"    repositories:\n      - url: {thief_origin}\n"
        "    environment:\n      setup_script: python3 thief.py setup\n",
    )
    gone = server.folder / "gone.git"
    git("init", "--quiet", "--bare", str(gone))
    victim = server.apply(
        "victim", f"    prompt: never runs here\n    repositories:\n      - url: {gone}\n"
    )
    shutil.rmtree(gone)  # its runs end at once (clone_failed): only its fires matter here
    before = set(branches(thief_origin))
    session = server.fire(thief)
    run_dir = server.settings.runs_dir / server.run(session)["id"]
    for part in ("setup", "agent"):
        started = run_dir / "workspace" / "app" / f"thief-{part}.started"
        poll_until(f"the thief starts in {part}", started.exists, 60)
        # While it looks, the victim's fires come in with their tokens: each is the
        # server's to answer, none the thief's to read.
        for number in range(5):
            server.fire(victim, f"the victim's request {number}")
    run = server.ended(session)
    assert run["status"] == "succeeded", run
    [delivered] = set(branches(thief_origin)) - before
    for part in ("setup", "agent"):
        report = json.loads(git("show", f"{delivered}:thief-{part}.json", cwd=thief_origin))
        assert report["stolen"], f"{part}: the thief took no socket: the attack did not run"
        assert report["listening"] == [], part
        assert report["captured"] == [], part


def test_what_an_agent_makes_is_not_roots_and_runs_as_no_one_else(
    server: Server, fake_api: FakeAnthropic
) -> None:
    """The attack: the agent (root in the old sandbox) made a set-user-id shell in its
    home, for any local user to run as root on the host. Now nothing it makes is
    root's, no set-id bit survives, and no other local user reaches routined's home."""
    if os.geteuid() != 0:
        pytest.skip("the sandbox runs as routined's own user when routined is not root")
    marker = "[case:setuid]"
    fake_api.script(
        marker,
        [
            [
                bash(
                    "cp /bin/bash ~/sbash && chmod 6755 ~/sbash && "
                    "cp /bin/bash planted && chmod u+s,g+s planted && "
                    "git add planted && git commit -qm planted && ls -ln ~/sbash planted"
                )
            ],
            [text("Done.")],
        ],
    )
    issued = server.apply(
        "setuid", f"    prompt: escalate {marker}\n    repositories:\n      - url: {{origin}}\n"
    )
    run = server.ended(server.fire(issued))
    assert run["status"] == "succeeded", run
    settings = server.settings
    run_dir = settings.runs_dir / run["id"]
    planted = run_dir / "home" / "sbash"
    assert planted.is_file()
    info = planted.stat()
    assert info.st_uid == bubblewrap.SANDBOX_UID != 0
    assert not info.st_mode & (stat.S_ISUID | stat.S_ISGID)
    everything = [path for path in run_dir.rglob("*") if not path.is_symlink()]
    assert [p for p in everything if p.stat().st_mode & (stat.S_ISUID | stat.S_ISGID)] == []
    assert [p for p in (run_dir / "home").rglob("*") if p.lstat().st_uid == 0] == []
    # routined's home is its own alone, though everything ran under umask 022.
    assert os.umask(0o022) == 0o022
    assert stat.S_IMODE(settings.home.stat().st_mode) == 0o700
    for name in ("routined.db", "secret.key", "agent-seed.json"):
        if (settings.home / name).exists():
            assert stat.S_IMODE((settings.home / name).stat().st_mode) & 0o077 == 0, name
    # Another local user can neither read the store nor reach the run's files.
    for target in (settings.home / "routined.db", planted):
        tried = subprocess.run(
            ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "cat", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert tried.returncode != 0 and "Permission denied" in tried.stderr, target


def test_a_fork_bomb_and_a_huge_allocation_end_their_runs_while_another_succeeds(
    server: Server, fake_api: FakeAnthropic
) -> None:
    """A runaway run ends with the cap it hit, named, within seconds; the server and a
    run beside it go on as if nothing happened."""
    fake_api.script(
        "[case:bomb]",
        # Bounded (it ends by itself), but far past the run's cap.
        [[bash("for i in $(seq 3000); do sleep 120 & done; wait")], [text("Done.")]],
    )
    fake_api.script(
        "[case:hog]",
        # tail keeps the one endless line it reads: 8 GB, asked for as fast as it can.
        [[bash("head -c 8G /dev/zero | tail > /dev/null")], [text("Done.")]],
    )
    fake_api.script("[case:calm]", [[bash("echo calm > calm.txt")], [text("Done.")]])
    caps = "    limits:\n      pids: 400\n      memory: 512MiB\n      max_duration: 30m\n"
    issued = {
        case: server.apply(
            case,
            f"    prompt: go [case:{case}]\n    repositories:\n      - url: {{origin}}\n{caps}",
        )
        for case in ("bomb", "hog", "calm")
    }
    sessions = {case: server.fire(token) for case, token in issued.items()}
    results = {case: server.ended(session) for case, session in sessions.items()}
    assert results["calm"]["status"] == "succeeded", results["calm"]["error"]
    for case, code in (("bomb", "too_many_processes"), ("hog", "out_of_memory")):
        run = results[case]
        assert run["status"] == "failed", run
        assert str(run["error"]).startswith(f"{code}: "), run["error"]
        # Nothing of theirs is left running.
        run_dir = server.settings.runs_dir / run["id"]
        assert not any(f"{run_dir}/".encode() in _cmdline(pid) for pid in _pids())


def test_no_file_under_routined_home_holds_a_secret_a_run_printed(
    server: Server, fake_api: FakeAnthropic
) -> None:
    """The run prints its secret whole, and once so that Claude Code's 2,000-character
    preview of a long output cuts it in two; its setup script writes it to a file in
    the home. Afterwards nothing under routined's home holds the value, or its start."""
    value = "tok-" + secrets.token_hex(20)
    settings = server.settings
    routined(settings, "secret", "set", "DEPLOY_TOKEN", stdin=value)
    straddle = (
        "python3 -c \"import os; print('x' * 1990 + os.environ['DEPLOY_TOKEN'] + 'y' * 40000)\""
    )
    fake_api.script(
        "[case:printer]",
        [
            [bash('echo "the token is $DEPLOY_TOKEN"')],
            [bash(straddle)],
            [text(f"Done; the token was {value}.")],
        ],
    )
    issued = server.apply(
        "printer",
        "    prompt: print it [case:printer]\n"
        "    repositories:\n      - url: {origin}\n"
        "    environment:\n"
        '      setup_script: echo "//registry/:_authToken=$DEPLOY_TOKEN" > ~/.npmrc\n'
        "      secrets: [DEPLOY_TOKEN]\n",
    )
    run = server.ended(server.fire(issued))
    assert run["status"] == "succeeded", run
    home = settings.runs_dir / run["id"] / "home"
    transcripts = list(home.glob(".claude/projects/*/*.jsonl"))
    assert transcripts, "Claude Code kept no transcript to look in"
    assert "[redacted:DEPLOY_TOKEN]" in "".join(t.read_text() for t in transcripts)
    start = value[:10].encode()  # what the preview's cut leaves of it
    holding = [
        path
        for path in settings.home.rglob("*")
        if path.is_file() and not path.is_symlink() and start in path.read_bytes()
    ]
    assert holding == []
    events = routined(settings, "logs", run["id"], "--json")
    assert value[:10] not in events and "[redacted:DEPLOY_TOKEN]" in events


def test_an_accounts_routine_reaches_no_private_address_when_it_runs(
    server: Server, fake_api: FakeAnthropic
) -> None:
    """An account's routine is judged at apply (see test_reach) and again at every
    connection: here its names have come to mean this machine since (the rows say so
    as if DNS had changed), and neither the server's git nor the agent reaches it."""
    git_server, service = Staller(), Staller()
    try:
        fake_api.script(
            "[case:reach]",
            [
                [
                    bash(
                        f"curl -s --noproxy '' -o /dev/null -w 'status:%{{http_code}}' http://127.0.0.1:{service.port}/"
                    )
                ],
                [text("Done.")],
            ],
        )
        by_git = server.apply(
            "by-git",
            "    prompt: clone [case:reach]\n"
            f"    repositories:\n      - url: https://127.0.0.1:{git_server.port}/app.git\n",
        )
        by_agent = server.apply(
            "by-agent",
            "    prompt: call it [case:reach]\n"
            "    repositories:\n      - url: {origin}\n"
            "    environment:\n      network: custom\n"
            f"      allowed_hosts: ['127.0.0.1:{service.port}']\n",
        )
        store = Store(f"sqlite:///{server.settings.home / 'routined.db'}")
        try:
            with store.transaction() as session:
                for routine in session.scalars(
                    select(Routine).where(Routine.name.in_(["by-git", "by-agent"]))
                ):
                    routine.public_only = True
        finally:
            store.dispose()
        sessions = server.fire(by_git), server.fire(by_agent)
        cloned, called = (server.ended(session) for session in sessions)
        assert cloned["status"] == "failed"
        assert str(cloned["error"]).startswith("clone_failed: ")
        assert "loopback" in str(cloned["error"])
        assert called["status"] == "succeeded", called
        logs = routined(server.settings, "logs", called["id"], "--json")
        assert "status:403" in logs and "loopback" in logs, logs
        assert git_server.held == [] and service.held == []
    finally:
        git_server.close()
        service.close()


_DROP = (
    "python3 -c \"import ctypes; l = ctypes.CDLL(None); v = b'dead-drop-value'; "
    "print('dropped', l.syscall(248, b'user', b'dead-drop', v, len(v), -4))\""  # add_key, @u
)
_PICK = (
    'python3 -c "import ctypes; l = ctypes.CDLL(None); '
    "k = l.syscall(250, 10, -4, b'user', b'dead-drop', 0); "  # keyctl(KEYCTL_SEARCH)
    "b = ctypes.create_string_buffer(64); n = l.syscall(250, 11, k, b, 64); "  # KEYCTL_READ
    "print('picked', b.raw[:max(n, 0)])\""
)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the syscall numbers are x86_64's")
def test_one_run_leaves_nothing_in_the_kernel_for_another(
    server: Server, fake_api: FakeAnthropic
) -> None:
    """The attack: a run dropped a secret into its user's keyring, which outlived it,
    and a later run (of another account) picked it up. Each run now has user
    namespaces of its own, and with them its own keyrings."""
    fake_api.script("[case:drop]", [[bash(_DROP)], [text("Done.")]])
    fake_api.script("[case:pick]", [[bash(_PICK)], [text("Done.")]])
    drop = server.apply(
        "drop", "    prompt: drop [case:drop]\n    repositories:\n      - url: {origin}\n"
    )
    pick = server.apply(
        "pick", "    prompt: pick [case:pick]\n    repositories:\n      - url: {origin}\n"
    )
    dropped = server.ended(server.fire(drop))
    picked = server.ended(server.fire(pick))
    assert (dropped["status"], picked["status"]) == ("succeeded", "succeeded")
    said = routined(server.settings, "logs", dropped["id"], "--json")
    assert re.search(r"dropped \d{3,}", said), "the key was not dropped: the attack did not run"
    said = routined(server.settings, "logs", picked["id"], "--json")
    assert "picked b''" in said and "dead-drop-value" not in said
