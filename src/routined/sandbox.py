"""The agent's walls: a bubblewrap sandbox around Claude Code.

Inside, the whole system is read-only; the run's workspace, home and temp folders
are the only writable places on disk; routined's home and the service user's home
are hidden behind empty read-only folders; `/tmp` and `/run` are private and
empty. The sandbox has its own empty network namespace: its only way out is
the run's egress proxy (`routined.egress`), reached through a Unix socket that a
small bridge inside serves as 127.0.0.1:3128. Where the sandbox runtime's
seccomp helper is installed, the agent also cannot create Unix sockets.

The Agent SDK starts Claude Code by running a file; routined writes one per run
(`write_launcher`) that empties the environment down to what the agent may see
and `exec`s bubblewrap.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shlex
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import claude_agent_sdk

SOCKET_INSIDE = "/run/routined/egress.sock"
PROXY_PORT = 3128
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"

# Waits until the bridge accepts connections before the agent starts, so its
# first request cannot race the bridge. The probe is a connect through bash's
# /dev/tcp: it costs microseconds, where reading /proc/net/tcp walks the whole
# host's connection table.
_INIT = f"""\
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

# Names the Agent SDK uses to speak with the CLI; they pass into the sandbox.
_SDK_PREFIXES = ("CLAUDE_CODE_", "CLAUDE_AGENT_SDK_")

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SandboxUnavailable(RuntimeError):
    """This machine cannot run the sandbox; the message says what is missing."""


@dataclass(frozen=True)
class Layout:
    """What one run's sandbox shows the agent."""

    cwd: Path
    writable: tuple[Path, ...]
    hidden: tuple[Path, ...]
    read_only_inside: tuple[Path, ...]
    readable: tuple[Path, ...]
    executables: tuple[Path, ...]
    egress_socket: Path
    seccomp_helper: Path | None


def run_layout(
    *,
    run_dir: Path,
    cwd: Path,
    protected: Iterable[Path],
    readable: Iterable[Path],
    routined_home: Path,
    executables: Iterable[Path],
    egress_socket: Path,
    seccomp_helper: Path | None,
) -> Layout:
    """The layout of a run: its folders under `run_dir` are all the agent may change.

    `readable` are shown read-only even inside hidden folders (objects a checkout
    borrows from a local origin).
    """
    return Layout(
        cwd=cwd,
        writable=(run_dir / "workspace", run_dir / "home", run_dir / "tmp"),
        hidden=hidden_paths(routined_home),
        read_only_inside=tuple(path for path in protected if path.exists()),
        readable=tuple(readable),
        executables=tuple(executables),
        egress_socket=egress_socket,
        seccomp_helper=seccomp_helper,
    )


def hidden_paths(routined_home: Path) -> tuple[Path, ...]:
    """routined's home and the service user's home, outermost first."""
    candidates = {routined_home.resolve()}
    user_home = Path.home().resolve()
    if user_home != Path("/") and user_home.is_dir():
        candidates.add(user_home)
    return tuple(sorted(candidates, key=lambda p: len(p.parts)))


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
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",  # noqa: S108 - an empty private /tmp inside the sandbox
        "--tmpfs", "/run",
    ]  # fmt: skip
    var_run = Path("/var/run")
    if var_run.is_dir() and not var_run.is_symlink():
        args += ["--tmpfs", str(var_run)]
    for path in layout.hidden:
        args += ["--tmpfs", str(path)]
    for path in (*layout.executables, *layout.readable):
        args += ["--ro-bind", str(path), str(path)]
    for path in layout.writable:
        args += ["--bind", str(path), str(path)]
    for path in layout.read_only_inside:
        args += ["--ro-bind", str(path), str(path)]
    args += ["--bind", str(layout.egress_socket), SOCKET_INSIDE]
    for path in layout.hidden:
        args += ["--remount-ro", str(path)]
    args += ["--cap-drop", "ALL"]
    command = ["/bin/bash", "-c", _INIT, "routined-sandbox"]
    if layout.seccomp_helper is not None:
        # The helper maps root in a nested user namespace, which needs this one
        # capability; it drops everything before it runs the agent.
        args += ["--cap-add", "CAP_SETFCAP"]
        command.append(str(layout.seccomp_helper))
    args += ["--chdir", str(layout.cwd), "--", *command, str(program)]
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
    # Where the operator points tools at extra certificate authorities (a
    # company proxy), the agent's tools need the same paths.
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "TZ"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra)
    return env


def write_launcher(path: Path, *, run_id: str, command: list[str], keep: Iterable[str]) -> None:
    """Write the file the Agent SDK runs as Claude Code; it holds no secret values."""
    names = " ".join(sorted(set(keep)))
    prefixes = "|".join(f"{prefix}*" for prefix in _SDK_PREFIXES)
    path.write_text(
        "#!/bin/bash\n"
        f"# Written by routined for run {run_id}: the Agent SDK runs this file as\n"
        "# Claude Code. It keeps only the environment the agent may see, then\n"
        "# starts the agent inside the run's sandbox.\n"
        f"keep=' {names} '\n"
        "for name in $(compgen -e); do\n"
        '  case "$keep" in *" $name "*) continue ;; esac\n'
        f'  case "$name" in {prefixes}) continue ;; esac\n'
        '  unset "$name"\n'
        "done\n"
        f'exec {shlex.join(command)} "$@"\n'
    )
    path.chmod(0o700)


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
    probe = ["bwrap", "--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "--dev", "/dev"]
    probe += ["--proc", "/proc", "--cap-drop", "ALL"]
    if helper is not None:
        probe += ["--cap-add", "CAP_SETFCAP", "--", str(helper), "/bin/true"]
    else:
        probe += ["--", "/bin/true"]
    process = await asyncio.create_subprocess_exec(
        *probe, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise SandboxUnavailable(
            "bubblewrap cannot start a sandbox here: "
            + (stderr.decode(errors="replace").strip() or f"exit {process.returncode}")
            + " (user namespaces must be enabled)"
        )
