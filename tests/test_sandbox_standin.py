"""The stand-in sandboxes (`routined.testing.sandbox.Unwalled`) answer as the real ones
(`routined.sandbox.bubblewrap.Bubblewrap`) do, in everything the stages read: each case runs
the same program through both and expects the same exit status, output and files,
and the same end of its processes. What the stand-in leaves out, the walls, is
tests/test_sandbox.py's and tests/test_walls.py's."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from routined import workspace
from routined.sandbox import bubblewrap
from routined.testing.sandbox import Unwalled
from tests.conftest import wait_until
from tests.stage_support import alive

pytestmark = pytest.mark.anyio

# The finishing scripts' environment: their HOME and TMPDIR are the sandbox's /tmp.
ENV = {"PATH": bubblewrap.SYSTEM_PATH, "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}


@dataclass
class Ran:
    code: int
    out: str
    err: str


@dataclass
class Box:
    sandboxes: bubblewrap.Sandboxes
    run_dir: Path

    @property
    def cwd(self) -> Path:
        return self.run_dir / "workspace" / "app"

    def command(self, script: str) -> list[str]:
        layout = bubblewrap.finishing_layout(
            run_dir=self.run_dir, cwd=self.cwd, readable=[], masked=[]
        )
        return [
            *self.sandboxes.command(layout, Path("/bin/bash"), namespaces=None), "-c", script
        ]  # fmt: skip

    async def start(self, script: str, stdin: bytes | None = None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.command(script),
            env=ENV,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def run(self, script: str, stdin: bytes = b"") -> Ran:
        process = await self.start(script)
        out, err = await asyncio.wait_for(process.communicate(stdin), 60)
        assert process.returncode is not None
        return Ran(process.returncode, out.decode(), err.decode())


@pytest.fixture(params=["bubblewrap", "unwalled"])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Box]:
    real = request.param == "bubblewrap"
    sandboxes: bubblewrap.Sandboxes = (
        bubblewrap.Bubblewrap() if real else Unwalled(tmp_path / "scratch")
    )
    run_dir = tmp_path / "runs" / "run_test"
    (run_dir / "workspace" / "app").mkdir(parents=True)
    asyncio.run(workspace.hand_over([run_dir / "workspace"], sandboxes.owner))
    yield Box(sandboxes, run_dir)


async def test_exit_status_output_and_input_are_the_programs(box: Box) -> None:
    ran = await box.run("cat; echo out; echo err >&2; exit 3", stdin=b"in\n")
    assert (ran.code, ran.out, ran.err) == (3, "in\nout\n", "err\n")


async def test_a_program_killed_by_a_signal_exits_with_128_and_its_number(box: Box) -> None:
    ran = await box.run("echo before; kill -KILL $$; echo after")
    assert (ran.code, ran.out, ran.err) == (137, "before\n", "")


async def test_files_written_in_the_working_folder_stay(box: Box) -> None:
    ran = await box.run("pwd; echo written > work.txt")
    assert (ran.code, ran.out) == (0, f"{box.cwd}\n")
    assert (box.cwd / "work.txt").read_text() == "written\n"


async def test_a_tmp_named_by_the_environment_is_the_sandboxs_own(box: Box) -> None:
    name = f"left-{secrets.token_hex(4)}"
    looks = (
        f'for f in "$HOME/{name}" "$TMPDIR/{name}"; do [ -e "$f" ] && echo seen || echo fresh; done'
    )
    first = await box.run(f'{looks}; echo behind > "$HOME/{name}"; echo behind > "$TMPDIR/{name}"')
    second = await box.run(looks)
    assert (first.code, first.out, second.out) == (0, "fresh\nfresh\n", "fresh\nfresh\n")
    assert not (Path("/tmp") / name).exists()


async def started_in_background(box: Box) -> tuple[asyncio.subprocess.Process, int]:
    """A program that leaves a process of its own running; that process's host pid
    (a sandbox's pid namespace numbers it otherwise), found by its unique command line
    once it has one."""
    duration = f"600.{secrets.randbelow(10**9)}"
    process = await box.start(f"sleep {duration} & wait")
    found: list[int] = []

    def started() -> bool:
        found[:] = [
            int(entry.parent.name)
            for entry in Path("/proc").glob("[0-9]*/cmdline")
            if _cmdline(entry) == f"sleep\0{duration}\0"
        ]
        return bool(found)

    await wait_until(started, 60)
    [pid] = found
    return process, pid


def _cmdline(entry: Path) -> str:
    try:
        return entry.read_text()
    except OSError:
        return ""


async def test_what_a_program_starts_ends_when_its_first_process_is_killed(box: Box) -> None:
    process, pid = await started_in_background(box)
    assert alive(pid)
    process.kill()  # as a stage stops a session past its deadline
    await process.wait()
    await wait_until(lambda: not alive(pid), 10)


async def test_sandbox_stop_finds_a_runs_sandbox_by_its_folder(box: Box) -> None:
    process, pid = await started_in_background(box)
    await bubblewrap.stop(f"{box.run_dir}/")
    assert await asyncio.wait_for(process.wait(), 10) != 0
    await wait_until(lambda: not alive(pid), 10)


def test_the_stand_in_does_not_start_claude_code_under_another_name(tmp_path: Path) -> None:
    """Claude Code reached by a link of another name still does not run unwalled."""
    bundled = bubblewrap.claude_binary(None)
    alias = tmp_path / "agent"
    alias.symlink_to(bundled)
    (tmp_path / "workspace" / "app").mkdir(parents=True)
    layout = bubblewrap.finishing_layout(
        run_dir=tmp_path, cwd=tmp_path / "workspace" / "app", readable=[], masked=[]
    )
    for program in (bundled, alias):
        command = Unwalled(tmp_path / "scratch").command(layout, program, namespaces=None)
        assert str(program) not in command
        assert command[:2] == ["/bin/sh", "-c"] and "exit 125" in command[2]
