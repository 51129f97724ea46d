"""The agent's walls: a bubblewrap sandbox around Claude Code.

The sandbox starts from nothing and shows only what is listed: the system's
software folders (`/usr`, `/etc`, `/opt`, …) read-only, with secrets in them
masked; the run's workspace, home and temp folders, writable; and, read-only,
the objects the run's checkouts borrow from their mirrors. Everything else
(other users' homes, routined's home, `/srv`, `/var`, `/tmp`) is simply not
there. It has its own empty network namespace: its only way out is the run's
egress proxy (`routined.egress`), reached through a Unix socket that a small
bridge inside serves as 127.0.0.1:3128. Where the sandbox runtime's seccomp
helper is installed, nothing inside can create Unix sockets.

The Agent SDK starts Claude Code by running a file; routined writes one per run
(`write_launcher`) that strips the environment down to what the agent may see
and `exec`s bubblewrap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shlex
import shutil
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import claude_agent_sdk

SOCKET_INSIDE = "/run/routined/egress.sock"
PROXY_PORT = 3128
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
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
_DIE_WITH_ROUTINED = (
    "/usr/bin/setpriv --pdeathsig KILL -- " if Path("/usr/bin/setpriv").exists() else ""
)


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
    seccomp_helper: Path | None
    system_roots: tuple[str, ...] = SYSTEM_ROOTS


def run_layout(
    *,
    run_dir: Path,
    cwd: Path,
    protected: Iterable[Path],
    readable: Iterable[Path],
    masked: Iterable[Path],
    egress_socket: Path | None,
    seccomp_helper: Path | None,
) -> Layout:
    """A run's sandbox: its folders under `run_dir` are all it may change.

    `readable` are shown read-only (the agent's binary, borrowed objects);
    `masked` are hidden even where a system folder would show them (secret
    files, routined's home); `protected` are made read-only inside the
    writable folders (git metadata that would run code).
    """
    return Layout(
        cwd=cwd,
        writable=(run_dir / "workspace", run_dir / "home", run_dir / "tmp"),
        readable=tuple(readable),
        read_only_inside=tuple(path for path in protected if path.exists()),
        masked=tuple(masked),
        egress_socket=egress_socket,
        seccomp_helper=seccomp_helper,
    )


def bwrap_command(layout: Layout, program: Path) -> list[str]:
    """The bubblewrap command line that runs `program` (arguments follow) in the sandbox."""
    args = [
        "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-all",
        # Root would otherwise keep the host's user namespace; an own one is what
        # makes the capability drop below real.
        "--unshare-user",
    ]
    args += ["--dev", "/dev", "--proc", "/proc", "--ro-bind-try", "/sys", "/sys"]
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
    for name in emptied:
        args += ["--tmpfs", name]
    for path in layout.masked:
        if path.exists() and not path.is_dir():
            args += ["--ro-bind", "/dev/null", str(path)]
    helper = (layout.seccomp_helper,) if layout.seccomp_helper is not None else ()
    for path in dict.fromkeys((*layout.readable, *helper)):
        args += ["--ro-bind", str(path), str(path)]
    for path in layout.writable:
        args += ["--bind", str(path), str(path)]
    for path in layout.read_only_inside:
        args += ["--ro-bind", str(path), str(path)]
    command = [str(program)]
    if layout.seccomp_helper is not None:
        # The helper maps root in a nested user namespace, which needs this one
        # capability; it drops everything before it runs the program.
        command = [str(layout.seccomp_helper), *command]
    if layout.egress_socket is not None:
        args += ["--bind", str(layout.egress_socket), SOCKET_INSIDE]
        command = ["/bin/bash", "-c", _BRIDGE, "routined-sandbox", *command]
    for name in emptied:
        args += ["--remount-ro", name]
    args += ["--remount-ro", "/", "--cap-drop", "ALL"]
    if layout.seccomp_helper is not None:
        args += ["--cap-add", "CAP_SETFCAP"]
    args += ["--chdir", str(layout.cwd), "--", *command]
    return args


def agent_environment(
    *,
    home: Path,
    tmp: Path,
    model_base_url: str,
    model_api_key: str,
    extra: dict[str, str],
) -> dict[str, str]:
    """Everything the agent's process sees in its environment, and nothing else."""
    env = {
        "PATH": SYSTEM_PATH,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TERM": "dumb",
        "IS_SANDBOX": "1",
        "ANTHROPIC_BASE_URL": model_base_url,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "HTTP_PROXY": PROXY_URL,
        "HTTPS_PROXY": PROXY_URL,
        "http_proxy": PROXY_URL,
        "https_proxy": PROXY_URL,
    }
    if model_api_key:
        env["ANTHROPIC_API_KEY"] = model_api_key
    # Certificate paths, for operators whose traffic passes a company proxy.
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "TZ"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra)
    return env


def write_launcher(
    path: Path, *, run_id: str, command: list[str], keep: Iterable[str], pid_file: Path
) -> None:
    """Write the file the Agent SDK runs as Claude Code; it holds no secret values.

    It records its process id (bubblewrap's, after `exec`) so routined can stop
    the sandbox itself; asks the kernel to kill it if routined dies; and removes
    every variable not kept by name. Values never appear on a command line,
    where other local users could read them.
    """
    names = " ".join(sorted({*keep, *SDK_VARIABLES}))
    path.write_text(
        "#!/bin/bash\n"
        f"# Written by routined for run {run_id}: the Agent SDK runs this file as\n"
        "# Claude Code. It keeps only the environment the agent may see, then\n"
        "# starts the agent inside the run's sandbox.\n"
        f"echo $$ > {shlex.quote(str(pid_file))}\n"
        f"keep=' {names} '\n"
        "drop=()\n"
        "while IFS= read -r -d '' entry; do\n"
        "  name=${entry%%=*}\n"
        '  case "$keep" in *" $name "*) continue ;; esac\n'
        '  drop+=(-u "$name")\n'
        "done < <(/usr/bin/env -0)\n"
        f'exec {_DIE_WITH_ROUTINED}/usr/bin/env "${{drop[@]}}" {shlex.join(command)} "$@"\n'
    )
    path.chmod(0o700)


async def stop(pid_file: Path) -> None:
    """Kill a sandbox started by a launcher of this process, and wait until it is gone.

    The launcher's process becomes bubblewrap. Killing bubblewrap normally takes
    the sandbox's whole process namespace down with it, but not if it is killed
    in the instant before its child asked to die with it; so every process
    below it is killed too, deepest first, until none is left.
    """
    try:
        pid = int(pid_file.read_text().strip())
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return
    # Only a child of this process: a process id reused by another is left alone.
    if f"\nPPid:\t{os.getpid()}\n" not in status:
        return
    for _ in range(500):
        family = [*reversed(_descendants(pid)), pid]
        alive = [member for member in family if _running(member)]
        if not alive:
            return
        for member in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        await asyncio.sleep(0.01)  # the kernel is tearing the namespace down


def _descendants(root: int) -> list[int]:
    """Every process below `root`, parents before children."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


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


def seccomp_helper(configured: Path | None) -> Path | None:
    """The sandbox runtime's apply-seccomp for this machine, if installed."""
    if configured is not None:
        return configured
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    if arch is None:
        return None
    relative = Path("node_modules/@anthropic-ai/sandbox-runtime/vendor/seccomp") / arch
    for root in (Path.cwd(), *Path(__file__).resolve().parents):
        candidate = root / relative / "apply-seccomp"
        if candidate.is_file():
            return candidate
    return None


async def check_available(helper: Path | None) -> None:
    """Start an empty sandbox once, so a machine that cannot is reported plainly."""
    missing = [tool for tool in ("bwrap", "socat") if shutil.which(tool) is None]
    if missing:
        raise SandboxUnavailable(
            f"{' and '.join(missing)} not found; install the Debian packages "
            "bubblewrap and socat (`make run` does)"
        )
    probe = Layout(
        cwd=Path("/"),
        writable=(),
        readable=(),
        read_only_inside=(),
        masked=(),
        egress_socket=None,
        seccomp_helper=helper,
    )
    process = await asyncio.create_subprocess_exec(
        *bwrap_command(probe, Path("/bin/true")),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise SandboxUnavailable(
            "bubblewrap cannot start a sandbox here: "
            + (stderr.decode(errors="replace").strip() or f"exit {process.returncode}")
            + " (user namespaces must be enabled)"
        )
