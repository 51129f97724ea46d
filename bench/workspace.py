"""A run's fresh workspace of a large repository, against a plain `git clone`.

Target: at least 5 times faster than a plain clone, the fetch of new commits included.

The origin is a large repository served over the git protocol on loopback (`git
daemon`), as a remote origin is: --files files in 200 folders and a history of
--commits commits, each changing a few files (made with `git fast-import`, so
that building it takes seconds). Each round first pushes --new commits to the
origin, then makes, in turn (the order swapping from round to round):

- routined's workspace, as a run makes it: `workspace.sync_mirror` (`git
  ls-remote` and a `git fetch` of what is new into routined's mirror), then
  `workspace.take_standby`: the checkout readied after the previous run (a `git
  clone --shared` of the mirror, which copies no objects), brought up to the
  mirror in place, so that only the files that changed are written;
- a plain `git clone` of the origin's URL into an empty folder.

Both checkouts are then checked to hold the origin's newest commit, and removed.
The mirror is made once before the rounds, as the first run of a routine makes
it, and the standby checkout is readied before each round (untimed: routined
readies it after a run, for the next), before the new commits are pushed.

    .venv/bin/python bench/workspace.py [--files 30000] [--commits 5000] [--new 5]
        [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchkit import emit, machine, print_header, progress
from routined import workspace

TARGET = 5.0
FOLDERS = 200


def git(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, check=True)
    return done.stdout.decode()


def history(files: int, commits: int, seed: int) -> Iterator[bytes]:
    """A `git fast-import` stream: every file in a first commit, then `commits` more,
    each changing three files."""
    chooser = random.Random(seed)
    when = 1_700_000_000
    words = [f"w{number:04d}" for number in range(2000)]

    def content(path: str, version: int) -> bytes:
        lines = [" ".join(chooser.choices(words, k=12)) for _ in range(8)]
        return f"# {path} v{version}\n".encode() + "\n".join(lines).encode() + b"\n"

    def blob(path: str, version: int) -> bytes:
        data = content(path, version)
        return b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data)

    def commit(number: int, changes: list[bytes]) -> bytes:
        message = f"Change {number}".encode()
        head = b"commit refs/heads/main\n"
        head += b"committer Bench <bench@example.com> %d +0000\n" % (when + number * 60)
        head += b"data %d\n%s\n" % (len(message), message)
        return head + b"".join(changes) + b"\n"

    paths = [f"src/part{number % FOLDERS:03d}/file{number:05d}.txt" for number in range(files)]
    yield commit(0, [blob(path, 0) for path in paths])
    for number in range(1, commits + 1):
        yield commit(number, [blob(path, number) for path in chooser.sample(paths, 3)])


def make_origin(root: Path, files: int, commits: int) -> Path:
    origin = root / "served" / "origin.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(origin))
    stream = b"".join(history(files, commits, seed=1))
    git("fast-import", "--quiet", cwd=origin, stdin=stream)
    git("repack", "-a", "-d", "--quiet", cwd=origin)  # as a hosted origin keeps it
    return origin


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def daemon(base: Path) -> Iterator[str]:
    """`git daemon` serving the folders under `base` on loopback; the URL of `base`."""
    port = free_port()
    process = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
         "--listen=127.0.0.1", f"--port={port}", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("git daemon did not start")
            time.sleep(0.05)
        yield f"git://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


def push_new_commits(work: Path, count: int, round_number: int) -> str:
    """`count` commits more on the origin's main; its newest commit."""
    for number in range(count):
        (work / "CHANGES.txt").write_text(f"round {round_number}, change {number}\n")
        git("add", "CHANGES.txt", cwd=work)
        git("commit", "--quiet", "-m", f"Round {round_number}, change {number}", cwd=work)
    git("push", "--quiet", "origin", "HEAD:main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work).strip()


def routined_workspace(
    url: str, mirrors: Path, standby: Path, destination: Path, *, first: bool = False
) -> tuple[float, str]:
    """As a run makes it: the mirror brought up to the origin, then the standby checkout
    (brought up to the mirror) or, for the `first` run, which has none, a clone."""

    async def make() -> workspace.Checkout:
        mirror = await workspace.sync_mirror(url, mirrors)
        taken = await workspace.take_standby(mirror, standby, destination)
        if taken is not None:
            return taken
        if not first:  # timing a clone here would measure the wrong path
            raise RuntimeError("the standby checkout was not taken")
        return await workspace.clone(mirror, destination)

    started = time.perf_counter()
    checkout = asyncio.run(make())
    seconds = time.perf_counter() - started
    return seconds, git("rev-parse", f"origin/{checkout.default_branch}", cwd=destination)


def plain_clone(url: str, destination: Path) -> tuple[float, str]:
    started = time.perf_counter()
    git("clone", "--quiet", url, str(destination))
    seconds = time.perf_counter() - started
    return seconds, git("rev-parse", "origin/main", cwd=destination)


def benchmark(options: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="routined-bench-") as folder:
        root = Path(folder)
        progress(f"building an origin of {options.files:,} files and {options.commits:,} commits")
        origin = make_origin(root, options.files, options.commits)
        size = sum(
            path.stat().st_size for path in (origin / "objects").rglob("*") if path.is_file()
        )
        with daemon(origin.parent) as base:
            url = f"{base}/origin.git"
            work = root / "work"
            git("clone", "--quiet", str(origin), str(work))
            git("config", "user.email", "bench@example.com", cwd=work)
            git("config", "user.name", "Bench", cwd=work)
            mirrors, standby = root / "mirrors", root / "standby"
            progress("making routined's mirror (a routine's first run)")
            first, _ = routined_workspace(url, mirrors, standby, root / "first", first=True)
            shutil.rmtree(root / "first")
            rounds: list[dict[str, Any]] = []
            for number in range(1, options.rounds + 1):
                # Readied after the previous run, before the origin moved again.
                asyncio.run(workspace.prepare_standby(workspace.mirror_of(url, mirrors), standby))
                newest = push_new_commits(work, options.new, number)
                order = ("routined", "plain") if number % 2 else ("plain", "routined")
                timings: dict[str, float] = {}
                for side in order:
                    destination = root / f"{side}-{number}"
                    seconds, head = (
                        routined_workspace(url, mirrors, standby, destination)
                        if side == "routined"
                        else plain_clone(url, destination)
                    )
                    if head.strip() != newest:
                        raise RuntimeError(f"{side}'s checkout is at {head.strip()}, not {newest}")
                    timings[side] = seconds
                    shutil.rmtree(destination)
                progress(
                    f"round {number}: routined {timings['routined']:.2f} s, "
                    f"plain clone {timings['plain']:.2f} s"
                )
                rounds.append({"round": number, **timings})
    return {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": machine(),
        "files": options.files,
        "commits": options.commits,
        "new_commits": options.new,
        "origin_objects_mb": size / 1e6,
        "first_mirror_s": first,
        "rounds": rounds,
    }


def report(result: dict[str, Any]) -> None:
    print_header(result)
    print(f"origin: {result['files']:,} files, {result['commits'] + 1:,} commits, "
          f"{result['origin_objects_mb']:.0f} MB of objects, served by `git daemon` on "
          f"loopback; {result['new_commits']} new commits pushed before each round")  # fmt: skip
    print(f"routined's mirror, made once first: {result['first_mirror_s']:.2f} s\n")
    print(
        "| round | routined workspace (fetch + standby caught up) s | plain git clone s | ratio |"
    )
    print("|---:|---:|---:|---:|")
    for row in result["rounds"]:
        print(f"| {row['round']} | {row['routined']:.2f} | {row['plain']:.2f} "
              f"| {row['plain'] / row['routined']:.1f} |")  # fmt: skip
    routined = statistics.median(row["routined"] for row in result["rounds"])
    plain = statistics.median(row["plain"] for row in result["rounds"])
    ratio = statistics.median(row["plain"] / row["routined"] for row in result["rounds"])
    verdict = "met" if ratio >= TARGET else "missed"
    print(f"\nmedian: routined {routined:.2f} s, plain clone {plain:.2f} s; "
          f"ratio {ratio:.1f} (target at least {TARGET:g}: {verdict})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=30_000, help="files in the origin")
    parser.add_argument("--commits", type=int, default=5_000, help="commits after the first")
    parser.add_argument("--new", type=int, default=5, help="commits pushed before each round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (order swaps)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    options = parser.parse_args()
    result = benchmark(options)
    emit(result, as_json=options.json, report=report)


if __name__ == "__main__":
    main()
