"""Fire → first model request, against a bare `claude -p` → first model request.

Both are measured in one run, interleaved, against the same loopback fake of the
Messages API. The routined side is what a user gets: a running `routined serve`
on the embedded store, an HTTP fire, a fresh checkout, the sandbox, Claude Code.
Prints medians, the ratio of medians (target: at most 1.3) and the machine.

By default the origin does not change between fires, so each run takes the
checkout readied after the previous one. With --cold a commit lands on the
origin before every fire, so every run clones while the caller waits.

    .venv/bin/python bench/fire_latency.py [--rounds 15] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from routined.sandbox.bubblewrap import SYSTEM_PATH, claude_binary
from routined.testing.fake_anthropic import FakeAnthropic, text

ROUTINED = str(Path(sys.executable).with_name("routined"))
MODEL = "claude-sonnet-4-5"
PROMPT = "Summarise the repository in one sentence."


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def advance(seed: Path, number: int) -> None:
    """A new commit on the origin: any checkout readied earlier is stale now."""
    (seed / "counter.txt").write_text(f"{number}\n")
    git("add", "counter.txt", cwd=seed)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "--quiet", "-m", "tick", cwd=seed)
    git("push", "--quiet", "origin", "main", cwd=seed)


def make_origin(root: Path) -> Path:
    bare = root / "app.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    seed = root / "seed"
    git("clone", "--quiet", str(bare), str(seed))
    for number in range(50):
        (seed / f"module_{number}.py").write_text(f"VALUE = {number}\n" * 20)
    git("add", ".", cwd=seed)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "--quiet", "-m", "seed", cwd=seed)
    git("push", "--quiet", "origin", "main", cwd=seed)
    return bare


def first_request_after(fake: FakeAnthropic, marker: str, started: float) -> float:
    arrived = fake.wait_for_request(marker, after=started, timeout=60)
    if arrived is None:
        raise RuntimeError(f"no model request for {marker!r} within 60 s")
    return arrived - started


def bare_claude(fake: FakeAnthropic, workdir: Path, home: Path, marker: str) -> float:
    env = {
        "PATH": SYSTEM_PATH,
        "HOME": str(home),
        "IS_SANDBOX": "1",
        "ANTHROPIC_BASE_URL": fake.base_url,
        "ANTHROPIC_API_KEY": "sk-ant-bench",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
    }
    command = [
        str(claude_binary(None)), "-p", f"{PROMPT} {marker}", "--model", MODEL,
        "--permission-mode", "bypassPermissions", "--output-format", "stream-json", "--verbose",
    ]  # fmt: skip
    started = time.time()
    subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True, timeout=120)
    return first_request_after(fake, marker, started)


def wait_for_standby(home: Path) -> None:
    deadline = time.monotonic() + 30
    while not any(home.glob("standby/*/*/ready")):
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not ready a standby checkout within 30 s")
        time.sleep(0.01)


def routined_fire(
    fake: FakeAnthropic, client: httpx.Client, url: str, token: str, marker: str
) -> tuple[float, float]:
    headers = {
        "Authorization": f"Bearer {token}",
        "anthropic-beta": "experimental-cc-routine-2026-04-01",
        "anthropic-version": "2023-06-01",
    }
    started = time.time()
    answer = client.post(url, headers=headers, json={"text": marker})
    answer.raise_for_status()
    latency = first_request_after(fake, marker, started)
    session_url = answer.json()["claude_code_session_url"]
    while client.get(session_url).json()["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.05)
    return latency, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="move the origin before every fire")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="routined-bench-") as folder, FakeAnthropic() as fake:
        root = Path(folder)
        fake.default = [[text("Done.")]]
        origin = make_origin(root)
        workdir = root / "bare-checkout"
        git("clone", "--quiet", str(origin), str(workdir))
        (root / "bare-home").mkdir()
        env = {
            **os.environ,
            "ROUTINED_HOME": str(root / "home"),
            "ANTHROPIC_BASE_URL": fake.base_url,
            "ANTHROPIC_API_KEY": "sk-ant-bench",
        }
        env.pop("ROUTINED_PUBLIC_URL", None)
        env.pop("ROUTINED_DATABASE_URL", None)
        (root / "routines.yaml").write_text(
            "routines:\n"
            f"  - {{name: bench, prompt: '{PROMPT}', model: {MODEL}, "
            f"repositories: [{{url: {origin}}}], triggers: [{{type: api}}]}}\n"
        )
        subprocess.run([ROUTINED, "apply", "-f", str(root / "routines.yaml")], env=env, check=True)
        issued = json.loads(
            subprocess.run(
                [ROUTINED, "token", "bench", "--json"], env=env, check=True, capture_output=True
            ).stdout
        )
        server = subprocess.Popen(
            [ROUTINED, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            match = re.search(r"serving at (http://\S+)", server.stdout.readline())
            assert match, "routined serve did not start"
            url = issued["url"].replace("http://127.0.0.1:8080", match.group(1))
            bare: list[float] = []
            fired: list[float] = []
            whole: list[float] = []
            with httpx.Client(timeout=60) as client:
                for round_number in range(options.warmup + options.rounds):
                    if options.cold:
                        advance(root / "seed", round_number)
                    fire_latency, fire_total = routined_fire(
                        fake, client, url, issued["token"], f"[fire-{round_number}]"
                    )
                    # The server readies the next checkout after each run; let it
                    # finish, so that work does not slow the bare measurement.
                    wait_for_standby(root / "home")
                    bare_latency = bare_claude(
                        fake, workdir, root / "bare-home", f"[bare-{round_number}]"
                    )
                    if round_number >= options.warmup:
                        fired.append(fire_latency)
                        whole.append(fire_total)
                        bare.append(bare_latency)
        finally:
            server.terminate()
            server.wait(timeout=30)

    bare_median, fired_median = statistics.median(bare), statistics.median(fired)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}")
    print(f"rounds: {options.rounds} (after {options.warmup} warm-up), interleaved")
    mode = "cloned on every fire (--cold)" if options.cold else "readied after the previous run"
    print(f"checkouts: {mode}")
    print(f"bare claude -p → first request:   median {bare_median * 1000:6.0f} ms"
          f"  (min {min(bare) * 1000:.0f}, max {max(bare) * 1000:.0f})")  # fmt: skip
    print(f"routined fire → first request:    median {fired_median * 1000:6.0f} ms"
          f"  (min {min(fired) * 1000:.0f}, max {max(fired) * 1000:.0f})")  # fmt: skip
    print(f"routined fire → run succeeded:    median {statistics.median(whole) * 1000:6.0f} ms")
    print(f"ratio (fire / bare, medians):     {fired_median / bare_median:.2f}  (target ≤ 1.30)")


if __name__ == "__main__":
    main()
