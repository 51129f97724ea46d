"""The agent's walls: a bubblewrap sandbox around Claude Code.

The sandbox starts from nothing and shows only what is listed: the system's
software folders (`/usr`, `/etc`, `/opt`, …) read-only, with secrets in them
masked; the run's workspace, home and temp folders, writable; and, read-only,
the objects the run's checkouts borrow from their mirrors. Everything else
(other users' homes, routined's home, `/srv`, `/var`, `/tmp`) is simply not
there. It has its own empty network namespace: its only way out is the run's
egress proxy (`routined.sandbox.egress`), reached through a Unix socket that a small
bridge inside serves as 127.0.0.1:3128. That proxy is also the agent's model
API: the agent holds no real API key. Inside, no process has any capability
and none can make a user namespace of its own.

The Agent SDK starts Claude Code by running a file; routined writes one per run
(`write_launcher`) that strips the environment down to what the agent may see
and `exec`s bubblewrap.

Whom the sandbox runs as on the host: when routined runs as root, an unprivileged
user of its own (`ROUTINED_SANDBOX_UID`, see `UserNamespaces`), so nothing the
agent makes belongs to root; otherwise routined's own user. Either way no
descriptor of routined's crosses into it: every sandbox starts through `_ENTRY`,
which closes all but the standard streams first.

Over 500 lines and still one concept: everything a sandbox shows, hides and runs as is
one wall, best checked in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from routined.errors import OutsideFailure
from routined.sandbox import resources
from routined.sandbox.egress import PROXY_PORT

log = logging.getLogger(__name__)

SOCKET_INSIDE = "/run/routined/egress.sock"
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
# The agent's model API: the egress proxy answers plain requests itself and
# forwards them to the real one, adding the key the agent never sees.
MODEL_GATEWAY_URL = PROXY_URL
GATEWAY_API_KEY = "sk-ant-routined-gateway-holds-the-real-key"
# The host user a sandbox runs as when routined is root (ROUTINED_SANDBOX_UID).
SANDBOX_UID = 65533
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What every sandbox shows, read-only: where software lives.
SYSTEM_ROOTS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
# Secrets that live in those folders anyway.
MASKED_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-")
MASKED_FOLDERS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d")

# Closes every descriptor but the standard streams: bubblewrap hands its own on
# to the command it runs (the user namespaces it was given, say).
# (No redirection around the loop: bash would keep stderr's saved copy among the
# descriptors and close it too. The glob's own, gone by then, is skipped.)
_CLOSE_INHERITED = """\
for fd in /proc/self/fd/*; do
  fd=${fd##*/}
  if (( fd > 2 )) && [[ -e /proc/self/fd/$fd ]]; then exec {fd}>&-; fi
done
"""

# How every sandbox starts, outside it: with nothing of routined's but the
# standard streams, holding as descriptors 3 and 4 the user namespaces of the two
# holder processes named by pid (unless `-`), then bubblewrap. A holder is
# checked by its token after its namespace is opened: a pid reused by another
# process in between would fail the check, so no other namespace is ever joined.
_ENTRY = (
    _CLOSE_INHERITED
    + """\
outer=$1 inner=$2 token=$3
shift 3
if [[ $outer != - ]]; then
  exec 3<"/proc/$outer/ns/user" 4<"/proc/$inner/ns/user" || exit 125
  for pid in "$outer" "$inner"; do
    mapfile -d '' said < "/proc/$pid/cmdline"
    if [[ ${said[-1]} != "$token" ]]; then
      echo "routined sandbox: the user namespace holder $pid is gone" >&2
      exit 125
    fi
  done
fi
exec "$@"
"""
)

# Inside, before the program: nothing bubblewrap passed on stays open, and the
# working folder ($1) is entered as the sandbox user (bubblewrap, no longer
# privileged by then, may not reach it).
_INNER = _CLOSE_INHERITED + 'cd -- "$1" || exit 125\nshift\nexec "$@"\n'

# Waits until the bridge accepts connections before the agent starts, so its
# first request cannot race the bridge. The probe is a connect through bash's
# /dev/tcp: it costs microseconds, where reading /proc/net/tcp walks the whole
# host's connection table.
_BRIDGE = (
    _CLOSE_INHERITED
    + f"""\
cd -- "$1" || exit 125
shift
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
)

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


class SandboxUnavailable(OutsideFailure, RuntimeError):
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
    here must be routined's own: bubblewrap follows links in them. A protected
    path lies in a folder an earlier sandbox of the run could change (its setup
    script's), so it is shown only while no part of it below `run_dir` is a link:
    else a link there would show whatever host path it names (the host's /proc,
    say), read-only but in full. No sandbox of the run is alive meanwhile, so
    nothing changes between this look and bubblewrap's mount.
    """
    return Layout(
        cwd=cwd,
        writable=(run_dir / "workspace", run_dir / "home", run_dir / "tmp"),
        readable=tuple(readable),
        read_only_inside=tuple(path for path in protected if _no_link_below(run_dir, path)),
        masked=tuple(masked),
        egress_socket=egress_socket,
    )


def _no_link_below(root: Path, path: Path) -> bool:
    """Whether `path` exists and neither it nor a folder between `root` and it is a link."""
    if not path.is_relative_to(root):
        return False
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink() or not (current.is_dir() or current.is_file()):
            return False
    return True


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


def bwrap_command(
    layout: Layout,
    program: Path,
    *,
    uid: int = SANDBOX_UID,
    namespaces: UserNamespaces | None = None,
) -> list[str]:
    """The command line that runs `program` (arguments follow) in the sandbox.

    When routined is root, the sandbox's processes are the host user `uid`, in
    `namespaces` (the run's; without them, this process's own); otherwise they are
    routined's user. It dies with the process that starts it.
    """
    user = (namespaces or user_namespaces(uid)) if os.geteuid() == 0 else None
    args = ["bwrap", "--die-with-parent", "--new-session"]
    if user is None:
        # Root would otherwise keep the host's user namespace; an own one is what
        # makes the capability drop below real, and no further one may be made.
        args += ["--unshare-all", "--unshare-user", "--disable-userns"]
    else:
        # Mounts are made in the outer namespace (which maps root: bubblewrap reaches
        # what it mounts, however private); the command runs in the inner one, where
        # only the sandbox user exists.
        args += ["--userns", "3", "--userns2", "4"]
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        args += ["--unshare-cgroup-try"]
    # bubblewrap makes the folders leading to a mount 0700 and root's: the sandbox
    # user could not reach its own. They are made traversable first.
    made: set[Path] = set()

    def mount(option: str, path: Path, inside: Path) -> None:
        for parent in reversed(inside.parents):
            if parent not in made and parent != Path("/"):
                made.add(parent)
                args.extend(["--perms", "0755", "--dir", str(parent)])
        args.extend([option, str(path), str(inside)])

    args += ["--dev", "/dev", "--proc", "/proc"]
    # Private, and writable by whoever the sandbox runs as, as a host's are.
    for scratch in ("/tmp", "/var/tmp"):  # noqa: S108 - private
        args += ["--perms", "1777", "--tmpfs", scratch]
    args += ["--tmpfs", "/run"]
    for root in layout.system_roots:
        path = Path(root)
        if path.is_symlink():
            args += ["--symlink", str(path.readlink()), root]
        elif path.is_dir():
            mount("--ro-bind", path, path)
    for name in MASKED_FILES:
        args += ["--ro-bind-try", "/dev/null", name]
    if user is not None:
        args += ["--ro-bind", str(user.passwd), "/etc/passwd"]
        args += ["--ro-bind", str(user.group), "/etc/group"]
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
        mount("--ro-bind", path, path)
    for path in layout.writable:
        mount("--bind", path, path)
    for path in layout.read_only_inside:
        mount("--ro-bind", path, path)
    inner = ["/bin/bash", "-c", _INNER, "routined-sandbox", str(layout.cwd), str(program)]
    if layout.egress_socket is not None:
        mount("--bind", layout.egress_socket, Path(SOCKET_INSIDE))
        inner = ["/bin/bash", "-c", _BRIDGE, "routined-sandbox", str(layout.cwd), str(program)]
    for name in emptied:
        args += ["--remount-ro", name]
    args += ["--remount-ro", "/", "--cap-drop", "ALL"]
    if user is not None:
        # Only what it takes to become the sandbox user; `become` drops them all.
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        inner = [*user.become, *inner]
    held = ("-", "-", "-") if user is None else user.held()
    entry = ["/bin/bash", "-c", _ENTRY, "routined-sandbox", *held]
    return [*_dies_with_routined(), *entry, *args, "--", *inner]


def _dies_with_routined() -> list[str]:
    return [str(_SETPRIV), "--pdeathsig", "KILL", "--"] if _SETPRIV.exists() else []


def owner(uid: int) -> int | None:
    """Who must own what a sandbox may change: `uid` when routined is root (the
    sandbox runs as that user), None when the sandbox runs as routined itself."""
    return uid if os.geteuid() == 0 else None


def strip_privilege_bits(paths: Iterable[Path]) -> None:
    """Take set-user-id and set-group-id bits off every file under `paths`: whatever
    the sandbox made must never run as its owner for someone else on the host."""
    existing = [str(path) for path in paths if path.exists()]
    if not existing:
        return
    subprocess.run(
        ["find", *existing, "-xdev", "-perm", "/6000", "!", "-type", "l",
         "-exec", "chmod", "ug-s", "--", "{}", "+"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


class UserNamespaces:
    """The two user namespaces a root routined starts a run's sandboxes in.

    The outer one maps root and the sandbox user `uid`: bubblewrap joins it to
    make the sandbox's mounts, reaching what it mounts however private its host
    folders are. The inner one, a child of the outer, maps the sandbox user
    alone: bubblewrap switches to it once everything is mounted, and `become`
    then takes the sandbox user's identity with no capability left. So the
    agent's files belong to `uid` on the host, and root means nothing inside.

    The outer namespace is made by the sandbox user, so what the kernel counts
    per user across namespaces (inotify and fanotify instances, user namespaces)
    is counted against that user on the host, never against root; and it allows
    a run only so many of each (`_LIMITS`) and no user namespace beyond the inner
    one. Each run has a pair of its own (`Executor`), so nothing kept per user
    namespace (keyrings among it) passes from one run to another.

    Two small processes hold the namespaces open until `close`, or until this
    process ends (they end when its pipes to them close).
    """

    def __init__(self, uid: int, folder: Path) -> None:
        self.uid = uid
        self._holders: tuple[subprocess.Popen[bytes], ...] = ()
        self._token = ""
        self._lock = threading.Lock()
        self.passwd = folder / "passwd"
        self.group = folder / "group"
        self._write_accounts()
        self.become = [
            str(_SETPRIV), f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
            "--no-new-privs", "--",
        ]  # fmt: skip

    def held(self) -> tuple[str, str, str]:
        """The holders' process ids and their token, for `_ENTRY` to join them by."""
        with self._lock:
            if not self._holders or any(h.poll() is not None for h in self._holders):
                self._start()
            outer, inner = self._holders
            return str(outer.pid), str(inner.pid), self._token

    def _start(self) -> None:
        self.close()
        self._token = f"routined-userns-{secrets.token_hex(8)}"
        hold = ["/bin/sh", "-c", "echo; read -r _", self._token]
        uid = self.uid
        as_user = [str(_SETPRIV), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        outer = _holder([*as_user, "unshare", "--user", "--", *hold])
        try:
            for table in ("uid_map", "gid_map"):
                _write_once(Path(f"/proc/{outer.pid}/{table}"), f"0 0 1\n{uid} {uid} 1\n")
            enter = ["nsenter", "--user", f"--target={outer.pid}", "--"]
            inner = _holder([*enter, "unshare", "--user", "--", *hold])
            try:
                # Written from inside the outer namespace, its parent, as the kernel
                # asks; then its limits, the last of which allows no namespace beyond.
                limits = " && ".join(
                    f"{{ [ ! -e /proc/sys/user/{name} ] || echo {most} > /proc/sys/user/{name}; }}"
                    for name, most in _LIMITS
                )
                subprocess.run(
                    [*enter, "/bin/sh", "-c",
                     'echo "$1 $1 1" > /proc/$2/uid_map && echo "$1 $1 1" > /proc/$2/gid_map '
                     f"&& {limits}",
                     "routined-userns", str(uid), str(inner.pid)],
                    check=True, capture_output=True, timeout=10,
                )  # fmt: skip
            except (subprocess.SubprocessError, OSError):
                _end(inner)
                raise
        except (subprocess.SubprocessError, OSError) as error:
            _end(outer)
            said = getattr(error, "stderr", b"") or b""
            raise SandboxUnavailable(
                f"cannot make the sandbox user's namespaces (uid {uid}): {error} "
                f"{said.decode(errors='replace').strip()}".strip()
            ) from error
        self._holders = (outer, inner)

    def close(self) -> None:
        for holder in self._holders:
            _end(holder)
        self._holders = ()

    def _write_accounts(self) -> None:
        """/etc/passwd and /etc/group as the sandbox shows them: the host's, and the
        sandbox user (tools that look their user up would fail without it)."""
        uid = self.uid
        for path, line in (
            (self.passwd, f"agent:x:{uid}:{uid}:routined agent:/nonexistent:/bin/bash"),
            (self.group, f"agent:x:{uid}:"),
        ):
            try:
                host = Path("/etc", path.name).read_text()
            except OSError:
                host = ""
            kept = [entry for entry in host.splitlines() if entry.split(":")[2:3] != [str(uid)]]
            path.write_text("\n".join([*kept, line]) + "\n")
            path.chmod(0o644)


# What the kernel counts per user across namespaces, held low for one run (the
# defaults are a whole host's); `max_user_namespaces` last: the inner namespace,
# made already, is the only one the outer allows.
_LIMITS = (
    ("max_inotify_instances", 64),
    ("max_inotify_watches", 65536),
    ("max_fanotify_groups", 16),
    ("max_fanotify_marks", 8192),
    ("max_user_namespaces", 1),
)
_user_namespaces: dict[int, UserNamespaces] = {}
_user_namespaces_lock = threading.Lock()
_folders: list[tempfile.TemporaryDirectory[str]] = []


def user_namespaces(uid: int) -> UserNamespaces:
    """This process's own user namespaces for sandboxes of `uid`, for sandboxes that
    are no run's (the availability check); a run has its own (`run_namespaces`)."""
    with _user_namespaces_lock:
        found = _user_namespaces.get(uid)
        if found is None:
            # Removed when this process ends (the object's finalizer).
            folder = tempfile.TemporaryDirectory(prefix="routined-sandbox-")
            _folders.append(folder)
            found = _user_namespaces[uid] = run_namespaces(uid, Path(folder.name))
        return found


def run_namespaces(uid: int, folder: Path) -> UserNamespaces:
    """A run's user namespaces for sandboxes of `uid`, their files kept in `folder`
    (routined's); `close` them when the run ends."""
    if uid == 0:
        raise SandboxUnavailable("ROUTINED_SANDBOX_UID is 0: a sandbox never runs as root")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return UserNamespaces(uid, folder)


def _holder(command: list[str]) -> subprocess.Popen[bytes]:
    """A process that holds a namespace: it says a line once it is in it, and lives
    until its input closes (when this process ends, however it ends)."""
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    if not process.stdout.readline():
        said = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
        _end(process)
        raise OSError(f"{command[0]} failed: {said or 'it ended at once'}")
    return process


def _end(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _write_once(path: Path, text: str) -> None:
    # The kernel takes a uid or gid map in a single write only.
    descriptor = os.open(path, os.O_WRONLY)
    try:
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)


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
    # Found where the SDK is installed, without importing it (that takes a while).
    sdk = importlib.util.find_spec("claude_agent_sdk")
    bundled = Path(sdk.origin).parent / "_bundled" / "claude" if sdk and sdk.origin else None
    if bundled is None or not bundled.is_file():
        raise SandboxUnavailable(
            "Claude Code is not bundled with this claude-agent-sdk install; "
            "set ROUTINED_CLAUDE_PATH to a claude binary"
        )
    return bundled


async def check_available(uid: int = SANDBOX_UID) -> None:
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
        *bwrap_command(probe, Path("/bin/true"), uid=uid),
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


class Sandboxes(Protocol):
    """What a run's stages ask of the machine to confine a process: whether it can,
    whom what a sandbox may change must belong to, the command line that runs a
    program in a sandbox, and the run's resource group. `Bubblewrap` is the real one;
    `routined.testing.sandbox` has a stand-in without walls, for tests of the stages."""

    @property
    def owner(self) -> int | None:
        """Who must own what the sandbox may change (None: routined's own user)."""
        ...

    async def check(self) -> None:
        """Raise SandboxUnavailable, saying what is missing, if no sandbox can start."""
        ...

    def command(
        self, layout: Layout, program: Path, *, namespaces: UserNamespaces | None
    ) -> list[str]:
        """The command line that runs `program` (arguments follow) as `layout` shows."""
        ...

    def group(self, name: str, caps: resources.Caps) -> resources.RunGroup:
        """Make run `name`'s resource group; ResourceError if a cap cannot be had.
        Blocks: call it in a thread."""
        ...


@dataclass(frozen=True)
class Bubblewrap:
    """The real sandboxes: bubblewrap, run as `uid` when routined is root, within
    the run's cgroups (`routined.sandbox.resources`)."""

    uid: int = SANDBOX_UID

    @property
    def owner(self) -> int | None:
        return owner(self.uid)

    async def check(self) -> None:
        await check_available(self.uid)

    def command(
        self, layout: Layout, program: Path, *, namespaces: UserNamespaces | None
    ) -> list[str]:
        return bwrap_command(layout, program, uid=self.uid, namespaces=namespaces)

    def group(self, name: str, caps: resources.Caps) -> resources.RunGroup:
        return resources.host().group(name, caps)
