"""Any agent CLI (`agent: {command: [...]}`): the prompt on its stdin and in a file,
what it prints as the session's messages, the end of it as the summary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

from routined.agents.home import write_fresh
from routined.agents.session import Launch, SessionOutcome

PROMPT_FILE = "routined-prompt.md"
_OUTPUT_BATCH = 100
# What of an agent CLI's stdout is stored: its first lines, up to both bounds. The
# store is outside the run's disk cap, so the bytes are bounded as stored (JSON, where
# a control character or an undecodable byte takes six).
_OUTPUT_LINES = 5000
_OUTPUT_BYTES = 16 * 1024 * 1024
_SUMMARY_LIMIT = 4000
_LINE_LIMIT = 64 * 1024
# Its stderr's last lines say why it died; the caller keeps a few hundred of them, and
# each stays short (also the lines of Claude Code's stderr, which the SDK cuts at 1 MiB).
STDERR_LINE_LIMIT = 4096


async def run_command(
    launch: Launch, command: list[str], *, tmp: Path, owner: int | None = None
) -> SessionOutcome:
    """Run any agent CLI to its end: the prompt on its stdin and in the file named by
    `ROUTINED_PROMPT_FILE`; what it prints becomes `agent.output` events (its first
    lines, within `_OUTPUT_LINES` and `_OUTPUT_BYTES`; then an event with how many
    lines were left out), and the end of it the run's summary. Each line of its stderr
    goes to `on_stderr`, cut at `STDERR_LINE_LIMIT` bytes."""
    prompt, on_message, on_stderr = launch.prompt, launch.on_message, launch.on_stderr
    prompt_file = tmp / PROMPT_FILE
    write_fresh(prompt_file, prompt)
    if owner is not None:  # the agent runs as the sandbox user: its to read
        os.chown(prompt_file, owner, owner)
    process = await asyncio.create_subprocess_exec(
        str(launch.launcher),
        *command[1:],
        cwd=launch.cwd,
        env={**launch.env, "ROUTINED_PROMPT_FILE": str(prompt_file)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin and process.stdout and process.stderr
    tail: deque[str] = deque(maxlen=200)

    async def feed() -> None:
        assert process.stdin
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(prompt.encode())
            await process.stdin.drain()
            process.stdin.close()

    async def read_stdout() -> None:
        assert process.stdout
        batch: list[str] = []
        kept = omitted = size = 0
        async for line in _lines(process.stdout):
            tail.append(line)
            if not omitted:
                size += _stored_size(line)
            # The first line past either bound ends what is kept: the rest are counted.
            if omitted or kept == _OUTPUT_LINES or size > _OUTPUT_BYTES:
                omitted += 1
                continue
            kept += 1
            batch.append(line)
            if len(batch) >= _OUTPUT_BATCH:
                await on_message("agent.output", {"lines": batch})
                batch = []
        if batch:
            await on_message("agent.output", {"lines": batch})
        if omitted:
            await on_message("agent.output", {"omitted": omitted})

    async def read_stderr() -> None:
        assert process.stderr
        async for line in _lines(process.stderr, STDERR_LINE_LIMIT):
            on_stderr(line)

    try:
        await asyncio.gather(feed(), read_stdout(), read_stderr())
        code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    said = "\n".join(tail).strip()
    return SessionOutcome(
        error=None if code == 0 else f"the agent exited with status {code}",
        summary=said[-_SUMMARY_LIMIT:] or None,
    )


async def _lines(stream: asyncio.StreamReader, limit: int = _LINE_LIMIT) -> AsyncIterator[str]:
    """The lines a process prints, each cut at `limit` bytes: an agent's output is its
    own, and one endless line must not stop routined from reading the rest."""
    pending = b""
    while chunk := await stream.read(65536):
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            yield line[:limit].decode(errors="replace")
        pending = pending[:limit]
    if pending:
        yield pending.decode(errors="replace")


def _stored_size(line: str) -> int:
    """The bytes `line` takes in an event, as the store writes JSON (ASCII only)."""
    return len(json.dumps(line))
