"""A stand-in for the run's sandboxes, for tests of a run's stages: the same contract
(`routined.sandbox.bubblewrap.Sandboxes`) as bubblewrap and the run's cgroups, without the walls.

`Unwalled.command` gives a command line that runs the program as a plain process in
the layout's working folder, so the routine's setup script, an agent CLI
(`agent: {command: …}`) and the finishing scripts run for real: with the environment
the stage gives them, their own exit status (128 and the signal's number for a
program killed by a signal, as bubblewrap reports it), their own output, and the
files they write where the stages look for them. As with a sandbox:

- the program's processes go with its first one (a process group of its own, ended
  when the command's process ends, however it ends: the run's deadline, a cancel);
- its command line names its working folder, under the run's folder, so
  `routined.sandbox.bubblewrap.stop` finds it and ends it with everything below it;
- its `/tmp` is its own: a variable that names `/tmp` (the finishing scripts'
  `HOME` and `TMPDIR`) names an empty folder of this sandbox's instead.

What it scripts: `unavailable` (the machine cannot sandbox: `check` raises as
`sandbox.bubblewrap.check_available` does), `refused` (the run's group cannot be made with its
caps), and `breach` (a cap the run goes past: the first program of the run, its
setup script if it has one, else the agent, runs to its end and is then killed,
as the kernel kills a process at a cap, and from then on the group's counters
report the breach). `commands` lists every sandbox a stage asked for.
Claude Code itself is never run here: a run that would start it fails to start it,
at once, as an agent that cannot start; routines tested here use an agent CLI.

What it does not do: walls. The program sees the whole host, runs as routined's
user (`owner` is None), and has no bridge to the run's egress proxy (the proxy is
up, but an agent here reaches nothing at 127.0.0.1:3128): whatever a test runs
here must not need the network. The walls are tested on the real thing
(tests/test_walls.py, tests/test_sandbox.py and the end-to-end runs).
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from routined.sandbox import resources
from routined.sandbox.bubblewrap import Layout, SandboxUnavailable, UserNamespaces, claude_binary

# $1: the sandbox's own /tmp, $2: its working folder; the program and its arguments
# follow. The program gets a session (and process group) of its own; a watcher
# holding the read end of a pipe only this shell writes to ends that group when this
# shell ends, as a sandbox's processes end with bubblewrap. The shell's own notices
# ("Killed") are not the program's: they go nowhere, from before the program starts,
# since the shell may report a program that died at once at any point after.
_UNWALLED = """\
private=$1 cwd=$2
shift 2
if [ "$HOME" = /tmp ]; then export HOME="$private"; fi
if [ "$TMPDIR" = /tmp ]; then export TMPDIR="$private"; fi
cd -- "$cwd" || exit 125
exec 3>&2 2>/dev/null
setsid -- "$@" <&0 2>&3 3>&- &
program=$!
exec 3>&-
coproc watch { read -r _; kill -KILL -- "-$program"; } >/dev/null 2>&1
wait "$program"
"""

# $1: the file that says the cap was reached; the command follows. The first program
# of the run runs to its end, and is then killed at the cap; later ones run as usual.
_AT_CAP = """\
reached=$1
shift
if [ -e "$reached" ]; then exec "$@"; fi
"$@"
: > "$reached"
kill -KILL $$
"""


_NO_CLAUDE = shlex.quote(
    "routined.testing.sandbox: Claude Code does not run outside a real sandbox; "
    "give the routine an agent CLI (agent: {command: [...]})"
)


@dataclass(frozen=True)
class Sandboxed:
    """One sandbox a stage asked for: the program, where it runs, what it may change,
    and whether it had the run's egress proxy."""

    program: Path
    cwd: Path
    writable: tuple[Path, ...]
    networked: bool


@dataclass(frozen=True)
class ScriptedGroup(resources.RunGroup):
    """A run's group with no cgroup (as on a host that offers none), whose counters
    report `scripted` once `reached` exists."""

    scripted: resources.Breach | None = None
    reached: Path | None = None

    def enter_command(self, command: Sequence[str]) -> list[str]:
        entered = super().enter_command(command)
        if self.scripted is None or self.reached is None:
            return entered
        return ["/bin/bash", "-c", _AT_CAP, "routined-at-cap", str(self.reached), *entered]

    def breach(self) -> resources.Breach | None:
        if self.reached is not None and self.reached.exists():
            return self.scripted
        return None


class Unwalled:
    """Sandboxes without walls (see the module); `scratch` holds their `/tmp` folders."""

    def __init__(
        self,
        scratch: Path,
        *,
        unavailable: str | None = None,
        refused: str | None = None,
        breach: resources.Breach | None = None,
    ) -> None:
        self.scratch = scratch
        self.unavailable = unavailable
        self.refused = refused
        self.breach = breach
        self.commands: list[Sandboxed] = []

    @property
    def owner(self) -> int | None:
        return None  # it runs as routined's own user

    async def check(self) -> None:
        if self.unavailable is not None:
            raise SandboxUnavailable(self.unavailable)

    def command(
        self, layout: Layout, program: Path, *, namespaces: UserNamespaces | None
    ) -> list[str]:
        self.commands.append(
            Sandboxed(program, layout.cwd, layout.writable, layout.egress_socket is not None)
        )
        if _is_claude(program):
            # Claude Code never runs without its walls, not even in a test: it would
            # have the host's network and files. It fails to start instead, at once.
            return ["/bin/sh", "-c", f"echo {_NO_CLAUDE} >&2; exit 125", "routined-sandbox"]
        self.scratch.mkdir(parents=True, exist_ok=True)
        private = tempfile.mkdtemp(prefix="tmp-", dir=self.scratch)
        return ["/bin/bash", "-c", _UNWALLED, "routined-sandbox", private, str(layout.cwd),
                str(program)]  # fmt: skip

    def group(self, name: str, caps: resources.Caps) -> resources.RunGroup:
        if self.refused is not None:
            raise resources.ResourceError(self.refused)
        self.scratch.mkdir(parents=True, exist_ok=True)
        return ScriptedGroup(
            name, caps, (), scripted=self.breach, reached=self.scratch / f"{name}.at-cap"
        )


def _is_claude(program: Path) -> bool:
    """Whether `program` is Claude Code: by its name, or as the very file the SDK
    bundles, whatever it is called (by a link, say)."""
    if program.name == "claude":
        return True
    try:
        bundled = claude_binary(None)
    except SandboxUnavailable:
        return False
    try:
        return program.resolve().samefile(bundled)
    except OSError:
        return False
