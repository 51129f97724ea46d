"""Resource caps with the real kernel: a run's group holds a memory hog, a fork bomb
and a busy loop at their caps, and names what each hit.

The attacks run through `RunGroup.enter_command` the way a run's launcher does,
most of them inside the real sandbox. They need root and the cgroup v1 memory and
pids hierarchies this kind of machine mounts read-write. Hosts this machine cannot
show (cgroup v2 delegated or not, mixed, nothing mounted) are folders laid out like
cgroupfs that detection is pointed at.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from routined.sandbox import bubblewrap, resources
from routined.sandbox.resources import Caps, Host
from tests.conftest import poll_until

MIB = 1024**2
GIB = 1024**3
ROOMY = Caps(memory=GIB, pids=1024, cpu=1.0, disk=10 * GIB)


def _has_v1() -> bool:
    """Whether this is a host the real-kernel tests can run on."""
    if os.geteuid() != 0:
        return False
    found = resources.detect()
    found.close()
    versions = {place.controller: place.version for place in found.places}
    return versions.get("memory") == 1 and versions.get("pids") == 1


needs_v1 = pytest.mark.skipif(
    not _has_v1(), reason="needs root and writable cgroup v1 memory and pids hierarchies"
)


@pytest.fixture
def host() -> Iterator[Host]:
    found = resources.detect()
    yield found
    found.close()
    assert not any((place.folder / found.owner).exists() for place in found.places)


def _name() -> str:
    return f"run_test{secrets.token_hex(6)}"


def _in_sandbox(script: str) -> list[str]:
    """A shell running `script` in the real sandbox, as a run's agent would."""
    layout = bubblewrap.Layout(
        cwd=Path("/"), writable=(), readable=(), read_only_inside=(), masked=(), egress_socket=None
    )
    return [*bubblewrap.bwrap_command(layout, Path("/bin/sh")), "-c", script]


def _host_processes(*argv: str) -> list[int]:
    """Every process on the host running exactly `argv`."""
    wanted = "".join(f"{arg}\0" for arg in argv).encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if cmdline.read_bytes() == wanted:
                found.append(int(cmdline.parent.name))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@needs_v1
def test_an_allocation_past_the_memory_cap_is_killed_and_named(host: Host) -> None:
    caps = Caps(memory=64 * MIB, pids=1024, cpu=1.0, disk=10 * GIB)
    group = host.group(_name(), caps)
    try:
        # tail keeps a line whole, and /dev/zero has no line end: it holds all 300 MB.
        hog = _in_sandbox("head -c 300M /dev/zero | tail")
        process = subprocess.run(
            group.enter_command(hog), capture_output=True, timeout=20, check=False
        )
        assert process.returncode != 0
        poll_until("the OOM kill is counted", lambda: group.breach() is not None, seconds=2)
        breach = group.breach()
        assert breach is not None
        assert breach.code == "out_of_memory"
        assert str(breach) == (
            "out_of_memory: a process was killed at the run's memory cap of 64 MiB"
        )
        memory = next(place.folder for place in group.places if place.controller == "memory")
        peak = int((memory / "memory.max_usage_in_bytes").read_text())
        assert peak <= 64 * MIB  # the host never lent it more
    finally:
        assert group.close()


@needs_v1
def test_a_fork_bomb_stops_at_the_pids_cap_and_is_named(host: Host) -> None:
    caps = Caps(memory=GIB, pids=32, cpu=1.0, disk=10 * GIB)
    group = host.group(_name(), caps)
    marker = str(3600 + secrets.randbelow(10**6))  # a sleep only this test starts
    # The forking shell dies at the first refused fork; the sandbox lives on, with
    # every sleeper it managed to start, until the group is closed.
    bomb = _in_sandbox(f"(for i in $(seq 500); do sleep {marker} & done); exec sleep {marker}")
    process = subprocess.Popen(
        group.enter_command(bomb), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        poll_until("a fork is refused", lambda: group.breach() is not None, seconds=5)
        breach = group.breach()
        assert breach is not None
        assert str(breach) == (
            "too_many_processes: a process could not start: the run reached its cap of 32 processes"
        )
        poll_until("the last sleeper runs", lambda: len(_host_processes("sleep", marker)) > 20)
        assert len(_host_processes("sleep", marker)) <= 32
        assert len(group.processes()) <= 32
        sleepers = _host_processes("sleep", marker)
    finally:
        assert group.close()
    assert process.wait(timeout=5) == -9  # closing killed the whole sandbox
    assert all(_gone(pid) for pid in sleepers)
    assert not any(folder.exists() for folder in group.folders)


@needs_v1
def test_the_runs_launcher_starts_the_sandbox_inside_the_group(host: Host, tmp_path: Path) -> None:
    group = host.group(_name(), ROOMY)
    launcher = tmp_path / "launch-agent"
    layout = bubblewrap.Layout(
        cwd=Path("/"), writable=(), readable=(), read_only_inside=(), masked=(), egress_socket=None
    )
    # As the run pipeline writes it: the group's shell first, then the sandbox.
    bubblewrap.write_launcher(
        launcher,
        run_id="run_test",
        command=group.enter_command(bubblewrap.bwrap_command(layout, Path("/bin/sh"))),
        keep=["PATH"],
    )
    marker = str(3600 + secrets.randbelow(10**6))
    agent = subprocess.Popen([str(launcher), "-c", f"sleep {marker} & exec sleep {marker}"])
    try:
        poll_until("both sleepers run", lambda: len(_host_processes("sleep", marker)) == 2)
        assert set(_host_processes("sleep", marker)) <= group.processes()
        assert agent.pid in group.processes()  # the launcher became bubblewrap in place
    finally:
        assert group.close()
    assert agent.wait(timeout=5) == -9


@needs_v1
def test_the_caps_are_written_as_asked_and_the_cpu_quota_throttles(host: Host) -> None:
    caps = Caps(memory=512 * MIB, pids=100, cpu=0.25, disk=10 * GIB)
    group = host.group(_name(), caps)
    folders = {place.controller: place.folder for place in group.places}
    try:
        assert int((folders["memory"] / "memory.limit_in_bytes").read_text()) == 512 * MIB
        assert int((folders["memory"] / "memory.memsw.limit_in_bytes").read_text()) == 512 * MIB
        assert (folders["pids"] / "pids.max").read_text().strip() == "100"
        assert (folders["cpu"] / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert (folders["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "25000"
        busy = subprocess.Popen(group.enter_command(["/bin/sh", "-c", "while :; do :; done"]))

        def throttled() -> bool:
            return resources._counter(folders["cpu"] / "cpu.stat", "nr_throttled") > 0

        poll_until("the busy loop is throttled at its quota", throttled, seconds=5)
        assert group.breach() is None  # a throttled run has broken no cap
    finally:
        assert group.close()
    assert busy.wait(timeout=5) == -9


@needs_v1
def test_a_cap_the_kernel_refuses_is_named_and_leaves_no_group(host: Host) -> None:
    name = _name()
    with pytest.raises(resources.ResourceError) as refused:
        host.group(name, Caps(memory=GIB, pids=1024, cpu=1e9, disk=GIB))
    assert str(refused.value).startswith(
        "limits.cpu: the kernel refused 100000000000000 as cpu.cfs_quota_us"
    )
    assert not any((place.folder / host.owner / name).exists() for place in host.places)
    with pytest.raises(ValueError, match=r"limits\.pids: must be more than 0"):
        Caps(memory=GIB, pids=0, cpu=1.0, disk=GIB)


@needs_v1
def test_close_kills_what_is_left_and_leaves_no_folder(host: Host) -> None:
    group = host.group(_name(), ROOMY)
    marker = str(3600 + secrets.randbelow(10**6))
    started = subprocess.Popen(
        group.enter_command(
            ["/bin/sh", "-c", f"sleep {marker} & sleep {marker} & setsid sleep {marker} & wait"]
        )
    )
    poll_until("three sleepers run", lambda: len(_host_processes("sleep", marker)) == 3)
    left = group.processes()
    assert set(_host_processes("sleep", marker)) <= left  # even the one in its own session
    assert group.close()
    assert started.wait(timeout=5) == -9
    poll_until("every process is gone", lambda: all(_gone(pid) for pid in left), seconds=5)
    assert not any(folder.exists() for folder in group.folders)
    assert group.close()  # closing twice is harmless


@needs_v1
def test_a_command_that_cannot_enter_its_group_does_not_run(host: Host, tmp_path: Path) -> None:
    group = host.group(_name(), ROOMY)
    assert group.close()  # its folders are gone: entering must fail
    marker = tmp_path / "ran"
    process = subprocess.run(
        group.enter_command(["/usr/bin/touch", str(marker)]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert process.returncode == resources.ENTER_FAILED
    assert "could not enter the run's cgroup" in process.stderr
    assert not marker.exists()


@needs_v1
def test_no_process_in_the_group_writes_a_file_past_the_disk_cap(
    host: Host, tmp_path: Path
) -> None:
    group = host.group(_name(), Caps(memory=GIB, pids=1024, cpu=1.0, disk=MIB))
    try:
        big = tmp_path / "big"
        writer = subprocess.run(
            group.enter_command(["/bin/dd", "if=/dev/zero", f"of={big}", "bs=64K", "count=64"]),
            capture_output=True,
            check=False,
        )
        assert writer.returncode == -25  # SIGXFSZ
        assert big.stat().st_size == MIB
        raise_it = subprocess.run(
            group.enter_command(["/bin/sh", "-c", "ulimit -f unlimited"]),
            capture_output=True,
            check=False,
        )
        assert raise_it.returncode != 0  # the hard limit too: the agent cannot lift it
        # Open files too: the host's file table is everyone's.
        files = subprocess.run(
            group.enter_command(["/bin/sh", "-c", "ulimit -Hn; ulimit -n 100000"]),
            capture_output=True,
            text=True,
            check=False,
        )
        assert files.stdout.split()[0] == str(resources.OPEN_FILES)
        assert files.returncode != 0
    finally:
        assert group.close()


@needs_v1
def test_sweep_removes_the_groups_of_a_routined_that_died(host: Host) -> None:
    # A routined that made a group, started a sandbox in it and died.
    doomed = subprocess.Popen(["/bin/sleep", "60"])
    dead_owner = resources._owner_name(doomed.pid)
    doomed.kill()
    doomed.wait()
    crashed = Host(host.places, (), dead_owner)
    leftover = crashed.group(_name(), ROOMY)
    marker = str(3600 + secrets.randbelow(10**6))
    orphan = subprocess.Popen(leftover.enter_command(["/bin/sleep", marker]))
    poll_until("the orphan is in its group", lambda: orphan.pid in leftover.processes())
    ours = host.group(_name(), ROOMY)
    try:
        swept = host.sweep()
        assert f"{dead_owner}/{leftover.name}" in swept
        assert orphan.wait(timeout=5) == -9
        assert not any(folder.exists() for folder in leftover.folders)
        assert not any((place.folder / dead_owner).exists() for place in host.places)
        assert all(folder.is_dir() for folder in ours.folders)  # a live routined's stay
    finally:
        assert ours.close()
        assert leftover.close()


@needs_v1
@pytest.mark.anyio
async def test_watch_names_the_first_cap_passed(host: Host, tmp_path: Path) -> None:
    group = host.group(_name(), Caps(memory=GIB, pids=1024, cpu=1.0, disk=4 * MIB))
    try:
        workspace = tmp_path / "workspace"
        workspace.mkdir()
        watcher = asyncio.create_task(resources.watch(group, [workspace], every=0.05))
        await asyncio.sleep(0)
        assert not watcher.done()
        (workspace / "fill").write_bytes(b"x" * 5 * MIB)
        breach = await asyncio.wait_for(watcher, 5)
        assert breach.code == "disk_full"
        assert breach.message.endswith("past its disk cap of 4 MiB")
    finally:
        assert group.close()


@needs_v1
@pytest.mark.anyio
async def test_a_removed_file_held_open_counts_against_the_disk(host: Host, tmp_path: Path) -> None:
    """The attack: write a file, remove it, keep it open: no folder shows it, and the
    host's disk fills all the same."""
    group = host.group(_name(), Caps(memory=GIB, pids=64, cpu=1.0, disk=4 * MIB))
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    hidden = tmp_path / "hidden"
    held = await asyncio.create_subprocess_exec(
        *group.enter_command(
            [
                "/bin/sh",
                "-c",
                'exec 3>"$1"; rm "$1"; head -c 8M /dev/urandom >&3; echo; read _',
                "-",
                str(hidden),
            ]
        ),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert held.stdout is not None
        await held.stdout.readline()  # written, and removed
        assert not hidden.exists()
        assert resources.disk_used([workspace]).charged < MIB
        breach = await asyncio.wait_for(resources.watch(group, [workspace], every=0.05), 10)
        assert breach.code == "disk_full"
    finally:
        held.kill()
        await held.wait()
        assert group.close()


# Detection on hosts this machine cannot show: folders laid out like cgroupfs.

Layout = Callable[[Path], str]  # lays out a root, returns /proc/self/cgroup's text


def _files(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def _v1(root: Path, *controllers: str) -> None:
    for name in controllers:
        _files(root / name, {"cgroup.procs": "", "cgroup.clone_children": "0\n"})


def _own_v2() -> dict[str, str]:
    """Routined's own cgroup v2 group, with routined in it."""
    return {
        "cgroup.controllers": "cpu memory pids\n",
        "cgroup.subtree_control": "",
        "cgroup.procs": f"{os.getpid()}\n",
    }


def _v2_delegated(root: Path) -> str:
    _files(root, {"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n"})
    own = _files(root / "system.slice" / "routined.service", _own_v2())
    os.setxattr(own, "user.delegate", b"1")
    return "0::/system.slice/routined.service\n"


def _v2_undelegated_unit(root: Path) -> str:
    text = _v2_delegated(root)
    os.removexattr(root / "system.slice" / "routined.service", "user.delegate")
    return text


def _v2_user_session(root: Path) -> str:
    _files(root, {"cgroup.controllers": "cpu memory pids\n"})
    _files(root / "user.slice" / "user-1000.slice" / "session-2.scope", _own_v2())
    return "0::/user.slice/user-1000.slice/session-2.scope\n"


def _hybrid_without_cpu(root: Path) -> str:
    _files(root / "unified", {"cgroup.controllers": "", "cgroup.procs": ""})
    _v1(root, "memory", "pids")
    return "4:memory:/\n3:pids:/\n1:cpu,cpuacct:/\n0::/\n"


def _mixed(root: Path) -> str:
    _files(
        root / "unified",
        {"cgroup.controllers": "memory pids\n", "cgroup.subtree_control": "", "cgroup.procs": ""},
    )
    _v1(root, "cpu,cpuacct")
    return "2:cpu,cpuacct:/\n0::/\n"


def _nothing(root: Path) -> str:
    root.mkdir()
    return "0::/\n"


DETECTIONS: list[tuple[Layout, str]] = [
    (_v2_delegated, "runs are capped in memory, pids and cpu by cgroup v2"),
    (
        _v2_undelegated_unit,
        "runs are capped in memory, pids and cpu by cgroup v2: systemd has not delegated "
        "routined's cgroup /system.slice/routined.service (no Delegate=yes in its unit) and "
        "may undo the caps when it reloads; set Delegate=yes",
    ),
    (
        _hybrid_without_cpu,
        "runs are capped in memory and pids by cgroup v1; not in cpu: cgroup v2 at "
        "{root}/unified offers routined's cgroup / no memory, pids or cpu controller; no "
        "cgroup v1 cpu hierarchy is mounted at {root}",
    ),
    (_mixed, "runs are capped in memory and pids by cgroup v2, cpu by cgroup v1"),
    (
        _nothing,
        "runs are not capped in memory, pids or cpu: no cgroup v2 hierarchy is mounted at "
        "{root}; no cgroup v1 memory, pids or cpu hierarchy is mounted at {root}",
    ),
]


@pytest.mark.parametrize(("layout", "said"), DETECTIONS, ids=[d[0].__name__ for d in DETECTIONS])
def test_detection_says_what_the_host_offers(layout: Layout, said: str, tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    found = resources.detect(root, self_cgroup=layout(root), owner="1.1")
    assert found.description == said.format(root=root)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chattr"), reason="needs root, chattr")
def test_detection_says_how_to_delegate_a_cgroup_it_may_not_write(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    self_cgroup = _v2_user_session(root)
    own = root / "user.slice" / "user-1000.slice" / "session-2.scope"
    # Root may write anywhere but in an immutable folder: that stands in for a
    # routined that is not root in a cgroup systemd did not delegate to it.
    subprocess.run(["chattr", "+i", str(own)], check=True)
    try:
        found = resources.detect(root, self_cgroup=self_cgroup, owner="1.1")
    finally:
        subprocess.run(["chattr", "-i", str(own)], check=True)
    assert found.places == ()
    assert found.description == (
        "runs are not capped in memory, pids or cpu: cgroup v2 is mounted but routined's "
        "cgroup /user.slice/user-1000.slice/session-2.scope is not delegated to it; run it "
        "as a systemd service with Delegate=yes; no cgroup v1 memory, pids or cpu hierarchy "
        f"is mounted at {root}"
    )


def test_a_delegated_cgroup_v2_gets_routined_out_of_the_way_and_caps_each_run(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgroup"
    found = resources.detect(root, self_cgroup=_v2_delegated(root), owner="1.1")
    own = root / "system.slice" / "routined.service"
    # No internal processes: routined moved into a leaf before giving its cgroup's
    # controllers to the runs' groups.
    assert (own / "service" / "cgroup.procs").read_text() == f"{os.getpid()}\n"
    assert (own / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    runs = own / "routined-runs"
    assert (runs / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    group = found.group("run_1", Caps(memory=64 * MIB, pids=32, cpu=1.5, disk=GIB))
    folder = runs / "1.1" / "run_1"
    assert group.folders == [folder]
    assert (runs / "1.1" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (folder / "memory.max").read_text() == f"{64 * MIB}\n"
    assert (folder / "pids.max").read_text() == "32\n"
    assert (folder / "cpu.max").read_text() == "150000 100000\n"
    script = group.enter_command(["/bin/true"])[2]
    assert f"echo $$ > {folder}/cgroup.procs" in script
    assert "ulimit -f 2097152" in script
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert str(group.breach()) == (
        "out_of_memory: a process was killed at the run's memory cap of 64 MiB"
    )


@needs_v1
def test_this_machine_caps_memory_pids_and_cpu_by_cgroup_v1() -> None:
    found = resources.host()
    assert found is resources.host()  # detected once per process
    assert found.description == "runs are capped in memory, pids and cpu by cgroup v1"
    own = Path("/proc/self/cgroup").read_text()
    memory = next(line for line in own.splitlines() if ":memory:" in line).split(":", 2)[2]
    try:
        assert found.places[0].folder == Path(f"/sys/fs/cgroup/memory{memory}") / "routined-runs"
        group = found.group(_name(), ROOMY)  # closing the host leaves it usable
        assert group.close()
    finally:
        found.close()


# Disk: what a run's folders hold, as du counts it.


def _du(*paths: Path) -> int:
    said = subprocess.run(
        ["du", "-scxB1", *map(str, paths)], capture_output=True, text=True, check=True
    ).stdout
    return int(said.splitlines()[-1].split()[0])


def test_disk_used_counts_what_is_allocated_once_and_follows_no_link(tmp_path: Path) -> None:
    workspace, home, outside = tmp_path / "workspace", tmp_path / "home", tmp_path / "outside"
    for folder in (workspace / "src" / "deep", home, outside):
        folder.mkdir(parents=True)
    (workspace / "src" / "a.bin").write_bytes(os.urandom(3 * MIB))
    (workspace / "src" / "deep" / "b.txt").write_text("hello\n")
    with (workspace / "sparse").open("wb") as sparse:
        sparse.truncate(GIB)  # a gigabyte long, nothing allocated
    os.link(workspace / "src" / "a.bin", home / "same-a.bin")  # counted once
    (outside / "big.bin").write_bytes(os.urandom(8 * MIB))
    (home / "to-big").symlink_to(outside / "big.bin")
    (home / "to-outside").symlink_to(outside)
    used = resources.disk_used([workspace, home, tmp_path / "missing"])
    assert used.allocated == _du(workspace, home)
    assert 3 * MIB <= used.allocated < 4 * MIB
    # workspace, src, a.bin, deep, b.txt, sparse; home and its three entries
    assert used.entries == 10


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_disk_used_stays_on_one_filesystem(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    (workspace / "mounted").mkdir(parents=True)
    (workspace / "own.bin").write_bytes(os.urandom(MIB))
    measure = tmp_path / "measure.py"
    measure.write_text(
        "import sys\nfrom pathlib import Path\nfrom routined.sandbox import resources\n"
        "print(resources.disk_used([Path(sys.argv[1])]).allocated)\n"
    )
    # A filesystem mounted inside, in a mount namespace of the test's own.
    script = (
        f"mount -t tmpfs tmpfs {workspace}/mounted && "
        f"head -c 5M /dev/urandom > {workspace}/mounted/big && "
        f"du -sxB1 {workspace} | cut -f1 && {sys.executable} {measure} {workspace}"
    )
    said = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert said[0] == said[1]
    assert MIB <= int(said[1]) < 2 * MIB


def test_disk_counts_a_block_an_entry_at_least(tmp_path: Path) -> None:
    """The attack: a million empty files (no bytes, every inode of the host's disk)."""
    folder = tmp_path / "many"
    folder.mkdir()
    for number in range(2000):
        (folder / f"empty-{number}").touch()
    used = resources.disk_used([folder])
    assert used.allocated < 2000 * resources.ENTRY_COST
    assert used.charged == 2001 * resources.ENTRY_COST


def test_caps_come_from_the_routine_or_the_server(tmp_path: Path) -> None:
    from routined.config import Settings

    settings = Settings.from_env({"ROUTINED_HOME": str(tmp_path)})
    assert Caps.of(settings, {}) == Caps(memory=4 * GIB, pids=1024, cpu=1.0, disk=10 * GIB)
    assert Caps.of(settings, {"memory": "512MiB", "pids": 64, "cpu": 0.5, "disk": 2 * GIB}) == (
        Caps(memory=512 * MIB, pids=64, cpu=0.5, disk=2 * GIB)
    )


def test_sizes_read_as_the_caps_were_given() -> None:
    assert [resources.format_size(n) for n in (4 * GIB, 3 * GIB // 2, 300 * MIB, 1000)] == [
        "4 GiB",
        "1.5 GiB",
        "300 MiB",
        "1000 bytes",
    ]


def test_a_group_name_cannot_leave_its_folder() -> None:
    found = Host((), (), "1.1")
    with pytest.raises(ValueError, match="run group name"):
        found.group("../../escape", ROOMY)
    assert found.group("run_1", ROOMY).enter_command(["/bin/true"])[-1] == "/bin/true"


def test_move_into_a_leaf_under_the_real_cgroup_v2(tmp_path: Path) -> None:
    unified = Path("/sys/fs/cgroup/unified")
    if os.geteuid() != 0 or not (unified / "cgroup.procs").is_file():
        pytest.skip("needs root and a cgroup v2 hierarchy at /sys/fs/cgroup/unified")
    own = unified / f"routined-test-{secrets.token_hex(4)}"
    own.mkdir()
    sleepers = [subprocess.Popen(["/bin/sleep", "60"]) for _ in range(2)]
    try:
        for sleeper in sleepers:
            (own / "cgroup.procs").write_text(f"{sleeper.pid}\n")
        resources._move_into_leaf(own)
        assert resources._procs(own) == set()
        assert resources._procs(own / "service") == {s.pid for s in sleepers}
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
        assert resources._remove([own / "service", own])
