"""Resource caps for a run's sandbox: memory, processes and cpu by cgroups, disk by measuring.

Each run gets a group of its own (`Host.group`) with the run's `Caps`. Its
sandbox enters the group before it starts (`RunGroup.enter_command` wraps the
command line), so nothing the agent forks is ever outside it. The kernel
enforces the caps; `RunGroup.breach` says which one a run hit, and `watch`
waits for the first breach of any cap, the disk included.

What a host offers is found once per process (`host`), controller by
controller: cgroup v2 where routined's own cgroup is delegated to it (it may
write there: `Delegate=yes` under systemd, or root), else a writable cgroup v1
hierarchy. Run groups live below routined's own cgroup, in
`routined-runs/<owner>/<run id>`, where the owner is the routined process that
made them (its pid and start time): `Host.sweep` removes the groups of owners
that are gone, and never touches those of another routined that is alive.

Disk has no cgroup: the workspace is a checkout on disk that must outlive the
sandbox, so a size-capped tmpfs cannot hold it. `disk_used` measures what the
run's folders hold, and each process in the sandbox may not write a file past
the cap (RLIMIT_FSIZE, set on entering the group).

Over 500 lines and still one concept: each cap by the kernel's means (cgroup v2, v1,
rlimits, measuring), behind one `RunGroup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import re
import shlex
import signal
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from routined.config import Settings, parse_size
from routined.errors import OutsideFailure

log = logging.getLogger(__name__)

Controller = Literal["memory", "pids", "cpu"]
CONTROLLERS: tuple[Controller, ...] = ("memory", "pids", "cpu")
CGROUP_ROOT = Path("/sys/fs/cgroup")
RUNS_FOLDER = "routined-runs"
# Where routined's own processes go under cgroup v2 when its cgroup must give
# controllers to children (see `_enable_for_children`).
LEAF = "service"
CPU_PERIOD = 100_000  # microseconds: the kernel's default scheduling period
CLOSE_TIMEOUT = 5.0  # seconds to wait for the kernel to tear a group's processes down
ENTER_FAILED = 125  # the exit status of a command that could not enter its group
FAST_WRITES = 1024**3  # bytes a second a fast disk takes: how soon a cap can be filled
DISK_CHECK_MAX = 30.0  # seconds between two measurements of a run's folders, at most
ENTRY_COST = 4096  # bytes an entry counts for at least (one block, and one inode)
OPEN_FILES = 1024  # descriptors each process of a run may hold (most programs' default)

# The folders a cgroup v1 controller is mounted at (systemd joins cpu and cpuacct).
_V1_FOLDERS: dict[Controller, tuple[str, ...]] = {
    "memory": ("memory",),
    "pids": ("pids",),
    "cpu": ("cpu", "cpu,cpuacct", "cpuacct,cpu"),
}
# A file every cgroup v1 hierarchy has and cgroup v2 does not.
_V1_MARK = "cgroup.clone_children"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_OWNER = re.compile(r"([0-9]+)\.([0-9]+)")


class ResourceError(OutsideFailure, RuntimeError):
    """A run's group could not be made as asked; the message names the cap."""


@dataclass(frozen=True)
class Caps:
    """What one run may use: `memory` and `disk` in bytes, `pids` processes and
    threads at once, `cpu` cores kept busy."""

    memory: int
    pids: int
    cpu: float
    disk: int

    def __post_init__(self) -> None:
        for field in ("memory", "pids", "cpu", "disk"):
            if not getattr(self, field) > 0:
                raise ValueError(f"limits.{field}: must be more than 0, got {getattr(self, field)}")

    @classmethod
    def of(cls, settings: Settings, limits: Mapping[str, Any]) -> Caps:
        """A routine's `limits` (sizes as bytes or text such as `2GiB`), the server's
        defaults for what they leave out."""
        memory, disk = limits.get("memory"), limits.get("disk")
        return cls(
            memory=settings.run_memory if memory is None else parse_size(str(memory)),
            pids=settings.run_pids if limits.get("pids") is None else int(limits["pids"]),
            cpu=settings.run_cpus if limits.get("cpu") is None else float(limits["cpu"]),
            disk=settings.run_disk if disk is None else parse_size(str(disk)),
        )

    def at_most(self, other: Caps) -> Caps:
        """These caps, none past `other`'s."""
        return Caps(
            memory=min(self.memory, other.memory),
            pids=min(self.pids, other.pids),
            cpu=min(self.cpu, other.cpu),
            disk=min(self.disk, other.disk),
        )


@dataclass(frozen=True)
class Breach:
    """A cap a run went past: `code` is the run's failure code."""

    code: Literal["out_of_memory", "too_many_processes", "disk_full"]
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Place:
    """Where one controller's groups are made: `folder` is `routined-runs` below
    routined's own cgroup in the hierarchy of that controller's cgroup `version`."""

    controller: Controller
    version: int
    folder: Path


@dataclass(frozen=True)
class Host:
    """What this host offers for capping runs, and where."""

    places: tuple[Place, ...]
    problems: tuple[str, ...]  # why a controller is missing, or what may undo the caps
    owner: str  # this process's folder below each place

    @property
    def available(self) -> frozenset[Controller]:
        return frozenset(place.controller for place in self.places)

    @property
    def description(self) -> str:
        """One line for `serve`'s start and `routined doctor`."""
        by_version: dict[int, list[str]] = {}
        for place in self.places:
            by_version.setdefault(place.version, []).append(place.controller)
        capped = ", ".join(f"{_and(names)} by cgroup v{v}" for v, names in by_version.items())
        missing = [name for name in CONTROLLERS if name not in self.available]
        if not self.places:
            said = f"runs are not capped in {_or(missing)}"
        elif missing:
            said = f"runs are capped in {capped}; not in {_or(missing)}"
        else:
            said = f"runs are capped in {capped}"
        return f"{said}: {'; '.join(self.problems)}" if self.problems else said

    def report(self) -> list[str]:
        """Lines for `routined doctor`: the description, then each place's folder."""
        lines = [self.description]
        lines += [f"{p.controller}: cgroup v{p.version} groups in {p.folder}" for p in self.places]
        lines.append("disk: measured in the run's folders; no file past the cap")
        return lines

    def group(self, name: str, caps: Caps) -> RunGroup:
        """Make the group of run `name` with its caps (a no-op where nothing is offered).

        Raises ResourceError if the kernel refuses a cap or a folder cannot be made.
        """
        if not _NAME.fullmatch(name):
            raise ValueError(f"run group name {name!r}: use letters, digits, _ . and -")
        group = RunGroup(
            name,
            caps,
            tuple(
                Place(p.controller, p.version, p.folder / self.owner / name) for p in self.places
            ),
        )
        _remove(group.folders)  # this process's own leftover of the same run
        v2 = {place.controller for place in self.places if place.version == 2}
        try:
            for place in self.places:
                # Made again if `close` removed them: the host is detected once.
                for folder in (place.folder, place.folder / self.owner):
                    folder.mkdir(exist_ok=True)
                    if place.version == 2:
                        _enable(folder, v2)
            for folder in group.folders:
                folder.mkdir()
            for place in group.places:
                _write_caps(place, caps)
        except ResourceError:
            _remove(group.folders)
            raise
        except OSError as error:
            _remove(group.folders)
            raise ResourceError(f"run {name}: its group could not be made: {error}") from None
        return group

    def sweep(self) -> list[str]:
        """Kill and remove the groups of routined processes that are gone (crashed);
        returns them as `owner/run`."""
        leftovers: dict[str, list[Path]] = {}
        owners: list[Path] = []
        for place in self.places:
            with contextlib.suppress(OSError):
                for owner in place.folder.iterdir():
                    if owner.is_dir() and owner.name != self.owner and not _alive(owner.name):
                        owners.append(owner)
                        for group in (child for child in owner.iterdir() if child.is_dir()):
                            leftovers.setdefault(f"{owner.name}/{group.name}", []).append(group)
        for folders in leftovers.values():
            _remove(folders)
        _remove(owners)
        return sorted(leftovers)

    def close(self) -> None:
        """Remove this process's folders (and any group still in them), at shutdown;
        `routined-runs` too when no other routined uses it, so that routined's own
        cgroup can be removed by whoever made it."""
        folders = [place.folder / self.owner for place in self.places]
        _remove([group for folder in folders if folder.is_dir() for group in _children(folder)])
        _remove(folders)
        for place in self.places:
            with contextlib.suppress(OSError):  # another routined's folder is in it
                place.folder.rmdir()


@dataclass(frozen=True)
class RunGroup:
    """One run's group: one folder per controller in use (one for all under v2)."""

    name: str
    caps: Caps
    places: tuple[Place, ...]  # each with the run's own folder

    @property
    def folders(self) -> list[Path]:
        return list(dict.fromkeys(place.folder for place in self.places))

    def enter_command(self, command: Sequence[str]) -> list[str]:
        """`command`, run by a shell that first moves itself into the group and caps
        the size of any file it or its children write, then becomes `command`.

        Whatever `command` starts is in the group from its first fork. If the shell
        cannot enter, it exits with ENTER_FAILED and runs nothing: a run never goes
        uncapped because its group vanished.
        """
        lines = []
        for folder in self.folders:
            target = shlex.quote(str(folder / "cgroup.procs"))
            said = shlex.quote(f"routined: could not enter the run's cgroup {folder}")
            lines.append(f"echo $$ > {target} || {{ echo {said} >&2; exit {ENTER_FAILED}; }}")
        # POSIX counts ulimit -f in 512-byte blocks; without -H or -S, dash and bash
        # set both limits, so nothing in the sandbox can raise it again. Only ever
        # lowered: a tighter limit already set (a bundle's, say) stays, and raising
        # one takes a capability routined may not have.
        blocks = max(1, self.caps.disk // 512)
        # Open files, too: the host's file table is shared by everything on it, and
        # a few thousand descriptors in each of a run's processes would take it all.
        for option, most in (("-f", blocks), ("-n", OPEN_FILES)):
            lines.append(
                f'hard=$(ulimit -H {option}); if [ "$hard" = unlimited ] || '
                f'[ "$hard" -gt {most} ]; then ulimit {option} {most} || exit {ENTER_FAILED}; fi'
            )
        lines.append('exec "$@"')
        return ["/bin/sh", "-c", "\n".join(lines), "routined-run-group", *command]

    def breach(self) -> Breach | None:
        """The cap the kernel enforced on this run, if any, by the kernel's counters:
        a process OOM-killed at the memory cap, or a fork refused at the pids cap."""
        for place in self.places:
            if place.controller == "memory":
                name = "memory.oom_control" if place.version == 1 else "memory.events"
                if _counter(place.folder / name, "oom_kill"):
                    return Breach(
                        "out_of_memory",
                        "a process was killed at the run's memory cap of "
                        f"{format_size(self.caps.memory)}",
                    )
        for place in self.places:
            if place.controller == "pids" and _counter(place.folder / "pids.events", "max"):
                return Breach(
                    "too_many_processes",
                    f"a process could not start: the run reached its cap of {self.caps.pids} "
                    "processes",
                )
        return None

    def processes(self) -> set[int]:
        return {pid for folder in self.folders for pid in _procs(folder)}

    def unlinked_bytes(self) -> int:
        """Bytes allocated to files the group's processes removed but hold open: gone
        from every folder, they still take the disk until closed."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for pid in self.processes():
            with contextlib.suppress(OSError):
                for held in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        info = held.stat()  # the open file itself, through its link
                        if stat.S_ISREG(info.st_mode) and info.st_nlink == 0:
                            key = (info.st_dev, info.st_ino)
                            if key not in seen:
                                seen.add(key)
                                total += info.st_blocks * 512
        return total

    def close(self) -> bool:
        """Kill whatever is left in the group and remove its folders, waiting up to
        CLOSE_TIMEOUT for the kernel to let them go; False if one is still there
        (`Host.sweep` of a later routined removes it). Blocks: call it in a thread."""
        return _remove(self.folders)


async def watch(group: RunGroup, folders: Sequence[Path], *, every: float = 0.5) -> Breach:
    """Wait until the run goes past a cap and say which; cancel it when the run ends.

    The kernel's counters are read every `every` seconds. The disk is measured
    in a thread, one measurement at a time, and again only when the run could
    have filled what is left of its cap at a fast disk's speed (at most ten times
    as often as a measurement takes): measuring a large checkout costs a tenth of
    a second of a core, which a run must not pay every second of its life.
    """
    loop = asyncio.get_running_loop()
    measure_at = loop.time()
    while True:
        breach = group.breach()
        if breach is not None:
            return breach
        if loop.time() >= measure_at:
            started = loop.time()
            usage = await asyncio.to_thread(disk_used, folders)
            # Files its processes removed but keep open take the disk as much.
            used = usage.charged + await asyncio.to_thread(group.unlinked_bytes)
            took = loop.time() - started
            if used > group.caps.disk:
                return Breach(
                    "disk_full",
                    f"the run's folders hold {format_size(used)} "
                    f"({usage.entries} entries), past its disk cap of "
                    f"{format_size(group.caps.disk)}",
                )
            headroom = (group.caps.disk - used) / FAST_WRITES
            measure_at = loop.time() + min(max(headroom, 10 * took, every), DISK_CHECK_MAX)
        await asyncio.sleep(every)


@dataclass(frozen=True)
class Usage:
    """What a run's folders take: `allocated` bytes, as `du -scx` counts them, in
    `entries` files, folders and links."""

    allocated: int
    entries: int

    @property
    def charged(self) -> int:
        """What counts against the disk cap: the bytes, or a block per entry when that
        is more (empty files fill a filesystem's table of entries long before its
        blocks)."""
        return max(self.allocated, self.entries * ENTRY_COST)


def disk_used(paths: Iterable[Path]) -> Usage:
    """What is on disk under `paths`, the paths included: bytes as `du -scx` counts
    them (links not followed, other filesystems not entered, a file with several
    links counted once, a sparse file by what it holds), and how many entries.
    Missing paths count nothing.

    About 0.1 s for a checkout of 30,000 files when the kernel has them cached.
    """
    total = count = 0
    seen: set[tuple[int, int]] = set()
    for path in paths:
        try:
            top = path.lstat()
        except OSError:
            continue
        total += _allocated(top, seen)
        count += 1
        if not stat.S_ISDIR(top.st_mode):
            continue
        stack = [os.fspath(path)]
        while stack:
            # A folder the agent removes while it is measured counts as empty.
            with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        info = entry.stat(follow_symlinks=False)
                        if info.st_dev != top.st_dev:
                            continue
                        total += _allocated(info, seen)
                        count += 1
                        if stat.S_ISDIR(info.st_mode):
                            stack.append(entry.path)
    return Usage(total, count)


def _allocated(info: os.stat_result, seen: set[tuple[int, int]]) -> int:
    if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
        key = (info.st_dev, info.st_ino)
        if key in seen:
            return 0
        seen.add(key)
    return info.st_blocks * 512


def format_size(size: int) -> str:
    """`4 GiB`, `1.5 GiB`, `300 MiB`: binary units, as the caps are given."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


@functools.cache
def host() -> Host:
    """What this host offers, found once per process (see `detect`)."""
    found = detect()
    log.info("resource caps: %s", found.description)
    return found


def detect(
    root: Path = CGROUP_ROOT, *, self_cgroup: str | None = None, owner: str | None = None
) -> Host:
    """Find, controller by controller, where run groups can be made, and get those
    places ready (see `_enable_for_children`); say why any controller is missing.

    `root` is where cgroup hierarchies are mounted, `self_cgroup` the text of
    /proc/self/cgroup, `owner` this process's folder name (its pid and start time);
    tests point them at a folder laid out like cgroupfs.
    """
    if self_cgroup is None:
        self_cgroup = Path("/proc/self/cgroup").read_text()
    own = _own_cgroups(self_cgroup)
    problems: list[str] = []
    warnings: list[str] = []
    places = _v2_places(root, own.get(""), problems, warnings)
    found = {place.controller for place in places}
    unmounted = []
    for controller in CONTROLLERS:
        if controller in found:
            continue
        place = _v1_place(root, controller, own.get(controller), problems)
        if isinstance(place, Place):
            places.append(place)
        elif place == "unmounted":
            unmounted.append(controller)
    if unmounted:
        problems.append(f"no cgroup v1 {_or(unmounted)} hierarchy is mounted at {root}")
    places.sort(key=lambda place: CONTROLLERS.index(place.controller))
    # Why v2 or v1 could not serve matters only for a controller that nothing serves.
    said = problems if len(places) < len(CONTROLLERS) else []
    return Host(tuple(places), (*said, *warnings), owner or _owner_name(os.getpid()))


def _own_cgroups(text: str) -> dict[str, str]:
    """Routined's cgroup path by controller ("" for cgroup v2), from /proc/self/cgroup
    lines such as `4:memory:/system.slice/x.service`, `1:cpu,cpuacct:/` or `0::/`."""
    own = {}
    for line in text.splitlines():
        number, names, path = [*line.split(":", 2), "", ""][:3]
        if number == "0" and not names:
            own[""] = path
        for name in names.split(","):
            if name:
                own[name] = path
    return own


def _v2_places(
    root: Path, path: str | None, problems: list[str], warnings: list[str]
) -> list[Place]:
    mount = next(
        (m for m in (root, root / "unified") if (m / "cgroup.controllers").is_file()), None
    )
    if mount is None or path is None:
        problems.append(f"no cgroup v2 hierarchy is mounted at {root}")
        return []
    own = mount / path.lstrip("/")
    offered = set(_read(own / "cgroup.controllers").split()) & set(CONTROLLERS)
    if not offered:
        problems.append(
            f"cgroup v2 at {mount} offers routined's cgroup {path} no memory, pids or cpu "
            "controller"
        )
        return []
    if not all(
        os.access(target, os.W_OK)
        for target in (own, own / "cgroup.procs", own / "cgroup.subtree_control")
    ):
        problems.append(
            f"cgroup v2 is mounted but routined's cgroup {path} is not delegated to it; run "
            "it as a systemd service with Delegate=yes"
        )
        return []
    if own.name.endswith((".service", ".scope")) and not _delegated(own):
        warnings.append(
            f"systemd has not delegated routined's cgroup {path} (no Delegate=yes in its "
            "unit) and may undo the caps when it reloads; set Delegate=yes"
        )
    try:
        enabled = _enable_for_children(own, path, offered)
    except OSError as error:
        problems.append(f"cgroup v2 controllers could not be enabled below {own}: {error}")
        return []
    for controller in sorted(offered - enabled):
        problems.append(f"cgroup v2 did not enable {controller} below {own}")
    return [Place(name, 2, own / RUNS_FOLDER) for name in CONTROLLERS if name in enabled]


def _enable_for_children(own: Path, path: str, controllers: set[str]) -> set[str]:
    """Enable `controllers` for groups below `own/routined-runs`; return those enabled.

    cgroup v2 lets a cgroup give controllers to its children only if no process
    lives in it ("no internal processes"; the root is exempt). Routined lives in
    its own cgroup, so first it moves itself, and whatever else is there (its
    git children), into a leaf of its own, `own/service`. That is done only when
    a controller is still to be enabled: if `own` is the host's root, or the
    controllers are on already, nobody moves. A cgroup namespace's root is not
    exempt although it reads as "/": there the kernel's EBUSY says to move.
    """
    wanted = controllers - _enabled(own)
    if wanted:
        if path != "/" and _procs(own):
            _move_into_leaf(own)
        try:
            _enable(own, wanted)
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            _move_into_leaf(own)
            _enable(own, wanted)
    runs = own / RUNS_FOLDER
    runs.mkdir(exist_ok=True)
    _enable(runs, controllers & _enabled(own))
    return controllers & _enabled(runs)


def _move_into_leaf(own: Path) -> None:
    leaf = own / LEAF
    leaf.mkdir(exist_ok=True)
    moved: set[int] = set()
    # Processes forked meanwhile start in `own`: go round until none is new.
    while unmoved := _procs(own) - moved:
        for pid in unmoved:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                (leaf / "cgroup.procs").write_text(f"{pid}\n")
            moved.add(pid)


def _enable(folder: Path, controllers: Iterable[str]) -> None:
    """Enable `controllers` for `folder`'s children: all at once, else each that can be."""
    names = sorted(controllers)
    if not names:
        return
    try:
        (folder / "cgroup.subtree_control").write_text(" ".join(f"+{name}" for name in names))
    except OSError as error:
        if error.errno == errno.EBUSY or len(names) == 1:
            raise
        for name in names:
            with contextlib.suppress(OSError):
                (folder / "cgroup.subtree_control").write_text(f"+{name}")


def _enabled(folder: Path) -> set[str]:
    # The kernel lists them bare; a folder laid out by a test may keep the "+".
    return {name.lstrip("+") for name in _read(folder / "cgroup.subtree_control").split()}


def _delegated(own: Path) -> bool:
    """systemd (since 251) marks a cgroup it delegates with an extended attribute."""
    for attribute in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError):
            if os.getxattr(own, attribute) == b"1":
                return True
    return False


def _v1_place(
    root: Path, controller: Controller, path: str | None, problems: list[str]
) -> Place | Literal["unmounted"] | None:
    mount = next(
        (root / name for name in _V1_FOLDERS[controller] if (root / name / _V1_MARK).is_file()),
        None,
    )
    if mount is None or path is None:
        return "unmounted"
    own = mount / path.lstrip("/")
    if not os.access(own, os.W_OK):
        problems.append(f"routined's cgroup v1 {controller} group {own} is missing or read-only")
        return None
    try:
        (own / RUNS_FOLDER).mkdir(exist_ok=True)
    except OSError as error:
        problems.append(f"cgroup v1 {controller}: {error}")
        return None
    return Place(controller, 1, own / RUNS_FOLDER)


def _write_caps(place: Place, caps: Caps) -> None:
    folder = place.folder
    if place.controller == "memory" and place.version == 1:
        # Limit first: the kernel refuses a memory+swap limit below the memory limit.
        _write(folder / "memory.limit_in_bytes", caps.memory, "limits.memory")
        if (folder / "memory.memsw.limit_in_bytes").exists():  # swap is no way out
            _write(folder / "memory.memsw.limit_in_bytes", caps.memory, "limits.memory")
    elif place.controller == "memory":
        _write(folder / "memory.max", caps.memory, "limits.memory")
        if (folder / "memory.swap.max").exists():
            _write(folder / "memory.swap.max", 0, "limits.memory")
    elif place.controller == "pids":
        _write(folder / "pids.max", caps.pids, "limits.pids")
    elif place.version == 1:
        _write(folder / "cpu.cfs_period_us", CPU_PERIOD, "limits.cpu")
        _write(folder / "cpu.cfs_quota_us", _quota(caps.cpu), "limits.cpu")
    else:
        _write(folder / "cpu.max", f"{_quota(caps.cpu)} {CPU_PERIOD}", "limits.cpu")


def _quota(cores: float) -> int:
    return max(1000, round(cores * CPU_PERIOD))  # the kernel's smallest quota is 1 ms


def _write(file: Path, value: object, field: str) -> None:
    try:
        file.write_text(f"{value}\n")
    except OSError as error:
        raise ResourceError(
            f"{field}: the kernel refused {value} as {file.name}: {error.strerror}; "
            "choose another value"
        ) from None


def _remove(folders: Sequence[Path]) -> bool:
    """Kill every process in `folders` and remove them, retrying while the kernel
    tears the processes down; False if one is still there after CLOSE_TIMEOUT."""
    deadline = time.monotonic() + CLOSE_TIMEOUT
    while True:
        left = [folder for folder in folders if folder.is_dir()]
        if not left:
            return True
        for folder in left:
            if (folder / "cgroup.kill").exists():  # cgroup v2 kills a whole group at once
                with contextlib.suppress(OSError):
                    (folder / "cgroup.kill").write_text("1")
        _kill_all({pid for folder in left for pid in _procs(folder)})
        for folder in left:
            with contextlib.suppress(OSError):  # EBUSY while processes die
                folder.rmdir()
        if time.monotonic() > deadline:
            log.warning("cgroups %s still there after %s s", left, CLOSE_TIMEOUT)
            return False
        time.sleep(0.01)


def _kill_all(pids: set[int]) -> None:
    """Freeze every process first, so a fork storm cannot outrun the killing."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _children(folder: Path) -> list[Path]:
    return [child for child in folder.iterdir() if child.is_dir()]


def _procs(folder: Path) -> set[int]:
    return {int(pid) for pid in _read(folder / "cgroup.procs").split() if pid.isdigit()}


def _counter(file: Path, key: str) -> int:
    """A count from a flat-keyed file such as memory.events (`oom_kill 2`)."""
    for line in _read(file).splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _read(file: Path) -> str:
    try:
        return file.read_text()
    except OSError:
        return ""


def _owner_name(pid: int) -> str:
    return f"{pid}.{_start_time(pid)}"


def _alive(owner: str) -> bool:
    """Whether the routined process an owner folder is named after still runs; a
    name not made by `_owner_name` belongs to something else and counts as alive."""
    found = _OWNER.fullmatch(owner)
    if found is None:
        return True
    return _start_time(int(found[1])) == int(found[2])  # a reused pid starts later


def _start_time(pid: int) -> int:
    """When a process started, in clock ticks since boot; -1 if it does not exist."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _or(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
