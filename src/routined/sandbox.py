"""The agent's walls: a bubblewrap sandbox around Claude Code.

The sandbox starts from nothing and shows only what is listed: the system's
software folders (`/usr`, `/etc`, `/opt`, …) read-only, with secrets in them
masked; the run's workspace, home and temp folders, writable; and, read-only,
the objects the run's checkouts borrow from their mirrors. Everything else
(other users' homes, routined's home, `/srv`, `/var`, `/tmp`) is simply not
there. It has its own empty network namespace: its only way out is the run's
egress proxy (`routined.egress`), reached through a Unix socket that a small
bridge inside serves as 127.0.0.1:3128. That proxy is also the agent's model
API: the agent holds no real API key. Inside, no process has any capability
and none can make a user namespace of its own.

The Agent SDK starts Claude Code by running a file; routined writes one per run
(`write_launcher`) that strips the environment down to what the agent may see
and `exec`s bubblewrap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import claude_agent_sdk

from routined.egress import PROXY_PORT

log = logging.getLogger(__name__)

SOCKET_INSIDE = "/run/routined/egress.sock"
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
# The agent's model API: the egress proxy answers plain requests itself and
# forwards them to the real one, adding the key the agent never sees.
MODEL_GATEWAY_URL = PROXY_URL
GATEWAY_API_KEY = "sk-ant-routined-gateway-holds-the-real-key"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What every sandbox shows, read-only: where software lives.
SYSTEM_ROOTS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
# Secrets that live in those folders anyway.
MASKED_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-")
MASKED_FOLDERS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d")

# Waits until the bridge accepts connections before the agent starts, so its
# first request cannot race the bridge. The probe is a connect through bash's
# /dev/tcp: it costs microseconds, where reading /proc/net/tcp walks the whole
# host's connection table.
_BRIDGE = f"""\
socat TCP-LISTEN:{PROXY_PORT},bind=127.0.0.1,reuseaddr,fork UNIX-CONNECT:{SOCKET_INSIDE} \\
2>/dev/null &
ready=0
while (( SECONDS < 10 )); do
  if exec 3<>/dev/tcp/127.0.0.1/{PROXY_PORT}; then ready=1; break; fi
done 2>/dev/null
if (( ! ready )); then
  echo "routined sandbox: the network bridge did not start" >&2
  exit 125
fi
exec 3>&-
exec "$@"
"""

# Variables the Agent SDK sets to speak with the CLI; they pass into the sandbox.
SDK_VARIABLES = (
    "CLAUDE_CODE_ENTRYPOINT",
    "CLAUDE_AGENT_SDK_VERSION",
    "CLAUDE_CODE_SDK_READS_SESSION_STATE",
    "CLAUDE_CODE_ENABLE_SDK_FILE_CHECKPOINTING",
    "CLAUDE_AGENT_SDK_CLIENT_APP",
    "CLAUDE_AGENT_SDK_DERIVED_CLIENT_APP",
)

# bubblewrap's --die-with-parent ends the sandbox when bubblewrap ends; this ends
# bubblewrap when routined does, even if routined is killed outright.
_SETPRIV = Path("/usr/bin/setpriv")


class SandboxUnavailable(RuntimeError):
    """This machine cannot run the sandbox; the message says what is missing."""


@dataclass(frozen=True)
class Layout:
    """What one sandbox shows."""

    cwd: Path
    writable: tuple[Path, ...]
    readable: tuple[Path, ...]
    read_only_inside: tuple[Path, ...]
    masked: tuple[Path, ...]
    egress_socket: Path | None
    system_roots: tuple[str, ...] = SYSTEM_ROOTS


def run_layout(
    *,
    run_dir: Path,
    cwd: Path,
    protected: Iterable[Path],
    readable: Iterable[Path],
    masked: Iterable[Path],
    egress_socket: Path | None,
) -> Layout:
    """The agent's sandbox: its folders under `run_dir` are all it may change.

    `readable` are shown read-only (the agent's binary, borrowed objects);
    `masked` are hidden even where a system folder would show them (secret
    files, routined's home); `protected` are made read-only inside the
    writable folders (git metadata that would run code). Every path given
    here must be routined's own: bubblewrap follows links in them.
    """
    return Layout(
        cwd=cwd,
        writable=(run_dir / "workspace", run_dir / "home", run_dir / "tmp"),
        readable=tuple(readable),
        read_only_inside=tuple(path for path in protected if path.exists()),
        masked=tuple(masked),
        egress_socket=egress_socket,
    )


def finishing_layout(
    *, run_dir: Path, cwd: Path, readable: Iterable[Path], masked: Iterable[Path]
) -> Layout:
    """The sandbox that packs the agent's work: the workspace only, and no network.

    Nothing is mounted from inside the workspace: after the agent, any path
    there may be a link the agent planted to a folder the sandbox hides.
    """
    return Layout(
        cwd=cwd,
        writable=(run_dir / "workspace",),
        readable=tuple(readable),
        read_only_inside=(),
        masked=tuple(masked),
        egress_socket=None,
    )


def bwrap_command(layout: Layout, program: Path) -> list[str]:
    """The command line that runs `program` (arguments follow) in the sandbox.

    It dies with the process that starts it.
    """
    args = [
        "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-all",
        # Root would otherwise keep the host's user namespace; an own one is what
        # makes the capability drop below real, and no further one may be made.
        "--unshare-user",
        "--disable-userns",
    ]
    args += ["--dev", "/dev", "--proc", "/proc"]
    args += ["--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--tmpfs", "/run"]  # noqa: S108 - private
    for root in layout.system_roots:
        path = Path(root)
        if path.is_symlink():
            args += ["--symlink", str(path.readlink()), root]
        elif path.is_dir():
            args += ["--ro-bind", root, root]
    for name in MASKED_FILES:
        args += ["--ro-bind-try", "/dev/null", name]
    # Masked folders become empty tmpfs mounts, made read-only only at the end,
    # once the run's own folders (which may lie inside them) are mounted.
    emptied = [name for name in MASKED_FOLDERS if Path(name).is_dir()]
    emptied += [str(path) for path in layout.masked if path.is_dir()]
    # A folder inside another masked one is hidden by it already; a second empty
    # mount there could not be made read-only.
    emptied = [
        name
        for name in dict.fromkeys(emptied)
        if not any(
            Path(name) != Path(outer) and Path(name).is_relative_to(outer) for outer in emptied
        )
    ]
    for name in emptied:
        args += ["--tmpfs", name]
    for path in layout.masked:
        if path.exists() and not path.is_dir():
            args += ["--ro-bind", "/dev/null", str(path)]
    for path in dict.fromkeys(layout.readable):
        args += ["--ro-bind", str(path), str(path)]
    for path in layout.writable:
        args += ["--bind", str(path), str(path)]
    for path in layout.read_only_inside:
        args += ["--ro-bind", str(path), str(path)]
    command = [str(program)]
    if layout.egress_socket is not None:
        args += ["--bind", str(layout.egress_socket), SOCKET_INSIDE]
        command = ["/bin/bash", "-c", _BRIDGE, "routined-sandbox", *command]
    for name in emptied:
        args += ["--remount-ro", name]
    args += ["--remount-ro", "/", "--cap-drop", "ALL", "--chdir", str(layout.cwd)]
    return [*_dies_with_routined(), *args, "--", *command]


def _dies_with_routined() -> list[str]:
    return [str(_SETPRIV), "--pdeathsig", "KILL", "--"] if _SETPRIV.exists() else []


def agent_environment(*, home: Path, tmp: Path, extra: dict[str, str]) -> dict[str, str]:
    """Everything the agent's process sees in its environment, and nothing else."""
    env = {
        "PATH": SYSTEM_PATH,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TERM": "dumb",
        "IS_SANDBOX": "1",
        "ANTHROPIC_BASE_URL": MODEL_GATEWAY_URL,
        "ANTHROPIC_API_KEY": GATEWAY_API_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "HTTP_PROXY": PROXY_URL,
        "HTTPS_PROXY": PROXY_URL,
        "http_proxy": PROXY_URL,
        "https_proxy": PROXY_URL,
        # The gateway is reached directly, not through the proxy it is part of.
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    # Certificate paths, for operators whose traffic passes a company proxy.
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "TZ"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra)
    return env


def write_launcher(path: Path, *, run_id: str, command: list[str], keep: Iterable[str]) -> None:
    """Write the file the Agent SDK runs as Claude Code; it holds no secret values.

    It removes every variable not kept by name (values never appear on a
    command line, where other local users could read them), then becomes the
    sandbox.
    """
    names = " ".join(sorted({*keep, *SDK_VARIABLES}))
    path.write_text(
        "#!/bin/bash\n"
        f"# Written by routined for run {run_id}: the Agent SDK runs this file as\n"
        "# Claude Code. It keeps only the environment the agent may see, then\n"
        "# starts the agent inside the run's sandbox.\n"
        f"keep=' {names} '\n"
        "drop=()\n"
        "while IFS= read -r -d '' entry; do\n"
        "  name=${entry%%=*}\n"
        '  case "$keep" in *" $name "*) continue ;; esac\n'
        '  drop+=(-u "$name")\n'
        "done < <(/usr/bin/env -0)\n"
        f'exec /usr/bin/env "${{drop[@]}}" {shlex.join(command)} "$@"\n'
    )
    path.chmod(0o700)


async def stop(marker: str) -> None:
    """Kill every sandbox this process started whose command line holds `marker`
    (a run's folder), with everything below it, and wait until all are gone.

    Killing bubblewrap normally takes the sandbox's process namespace down with
    it, but not if it is killed in the instant before its child asked to die with
    it, nor before the launcher has become bubblewrap; so the whole tree goes.
    """
    for _ in range(500):
        roots = [pid for pid in _children(os.getpid()) if marker in _cmdline(pid)]
        family = [member for root in roots for member in (root, *_descendants(root))]
        alive = [member for member in family if _running(member)]
        if not alive:
            return
        _kill_all(alive)
        await asyncio.sleep(0.01)  # the kernel is tearing the namespaces down
    log.warning("processes of %s survived SIGKILL for 5 s", marker)


def reap_orphans(runs_dir: Path) -> list[int]:
    """Kill sandboxes of runs under `runs_dir` whose starter is gone.

    A sandbox dies with the routined process that started it, except if that
    process died in the instant the sandbox was starting, before bubblewrap's
    child asked to die with its parent. Such orphans are found by their command
    line and ended here, when a worker starts and every so often after.
    """
    parents = _processes()
    orphans = [pid for pid in _sandboxes(runs_dir, parents) if parents[pid] == 1]
    _kill_all([member for root in orphans for member in (root, *_descendants(root))])
    return orphans


def runs_in_use(runs_dir: Path) -> set[str]:
    """The runs under `runs_dir` whose folders a sandbox on this machine is using,
    whoever started it: their folders must stay, whatever the store says."""
    named = re.compile(re.escape(f"{runs_dir}/") + r"([^/\s]+)")
    return {run for command in _sandboxes(runs_dir).values() for run in named.findall(command)}


def _sandboxes(runs_dir: Path, parents: dict[int, int] | None = None) -> dict[int, str]:
    """The bubblewrap processes of runs under `runs_dir`, with their command lines."""
    marker = f"{runs_dir}/"
    found = {}
    for pid in parents if parents is not None else _processes():
        command = _cmdline(pid)
        if marker in command and command.split(" ", 1)[0].endswith("bwrap"):
            found[pid] = command
    return found


def _kill_all(pids: list[int]) -> None:
    """Freeze every process first, so none can react to another's death, then kill."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _processes() -> dict[int, int]:
    """Every process id with its parent's."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    return parents


def _children(parent: int) -> list[int]:
    return [pid for pid, ppid in _processes().items() if ppid == parent]


def _descendants(root: int) -> list[int]:
    """Every process below `root`, parents before children."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _processes().items():
        children.setdefault(ppid, []).append(pid)
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def claude_binary(configured: Path | None) -> Path:
    if configured is not None:
        return configured
    bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    if not bundled.is_file():
        raise SandboxUnavailable(
            "Claude Code is not bundled with this claude-agent-sdk install; "
            "set ROUTINED_CLAUDE_PATH to a claude binary"
        )
    return bundled


async def check_available() -> None:
    """Start an empty sandbox once, so a machine that cannot is reported plainly."""
    missing = [tool for tool in ("bwrap", "socat") if shutil.which(tool) is None]
    if missing:
        raise SandboxUnavailable(
            f"{' and '.join(missing)} not found; install the Debian packages "
            "bubblewrap and socat (`make run` does)"
        )
    probe = Layout(
        cwd=Path("/"), writable=(), readable=(), read_only_inside=(), masked=(), egress_socket=None
    )
    process = await asyncio.create_subprocess_exec(
        *bwrap_command(probe, Path("/bin/true")),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        said = stderr.decode(errors="replace").strip() or f"exit {process.returncode}"
        need = (
            "bubblewrap 0.8 or newer"
            if "disable-userns" in said
            else "unprivileged user namespaces enabled"
        )
        raise SandboxUnavailable(f"bubblewrap cannot start a sandbox here: {said} (needs {need})")
