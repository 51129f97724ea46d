"""`routined doctor`: what this machine gives runs, checked, with what to do about each gap."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.markup import escape

from routined.cli.common import app, out, settings


@dataclass(frozen=True)
class Finding:
    topic: str
    ok: bool
    said: str
    required: bool = True  # a run cannot start without it (else it runs with less)


@app.command()
def doctor() -> None:
    """Check what runs need on this machine: the sandbox, whom it runs as, resource caps,
    routined's home, git and Claude Code. Exits 1 when runs cannot start."""
    findings = _findings()
    for finding in findings:
        mark = "[green]ok[/]  " if finding.ok else "[red]fail[/]"
        if not finding.ok and not finding.required:
            mark = "[yellow]warn[/]"
        first, *more = finding.said.splitlines()
        out.print(f"{mark} [bold]{finding.topic}[/]: {escape(first)}")
        for line in more:
            out.print(f"     - {escape(line)}")
    if any(not finding.ok and finding.required for finding in findings):
        raise typer.Exit(1)


def _findings() -> list[Finding]:
    from routined.sandbox import bubblewrap, resources

    config = settings()
    found = []
    try:
        asyncio.run(bubblewrap.check_available(config.sandbox_uid))
        who = bubblewrap.owner(config.sandbox_uid)
        said = (
            f"bubblewrap works; sandboxes run as host user {who} (ROUTINED_SANDBOX_UID)"
            if who is not None
            else f"bubblewrap works; sandboxes run as routined's own user (uid {os.geteuid()})"
        )
        found.append(Finding("sandbox", True, said))
    except bubblewrap.SandboxUnavailable as error:
        found.append(Finding("sandbox", False, str(error)))
    host = resources.host()
    capped = host.available == frozenset(resources.CONTROLLERS)
    found.append(Finding("resource caps", capped, "\n".join(host.report()), required=False))
    found.append(_home(config.home))
    found.append(_git())
    try:
        binary = bubblewrap.claude_binary(config.claude_path)
        found.append(Finding("Claude Code", True, str(binary)))
    except bubblewrap.SandboxUnavailable as error:
        found.append(Finding("Claude Code", False, str(error)))
    found.append(
        Finding(
            "model API key",
            bool(config.anthropic_api_key),
            "ANTHROPIC_API_KEY is set (the agent never holds it)"
            if config.anthropic_api_key
            else "ANTHROPIC_API_KEY is not set; runs of Claude Code fail without it",
        )
    )
    return found


def _home(home: Path) -> Finding:
    try:
        info = home.stat()
    except FileNotFoundError:
        return Finding("home", True, f"{home} does not exist yet; it is made private (0700)")
    mode = info.st_mode & 0o777
    if mode & 0o077:
        return Finding(
            "home",
            False,
            f"{home} is {mode:04o}: other local users can reach runs and the store; "
            "`routined serve` makes it 0700, or run chmod 700 on it",
        )
    return Finding("home", True, f"{home} is {mode:04o}, routined's alone")


def _git() -> Finding:
    git = shutil.which("git")
    if git is None:
        return Finding("git", False, "git is not installed; install the Debian package git")
    said = subprocess.run([git, "--version"], capture_output=True, text=True, check=False)
    version = said.stdout.strip()
    found = re.search(r"(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) < (2, 37):
        # http.curloptResolve, which pins an account's git to the address judged, came in 2.37.
        return Finding(
            "git",
            False,
            f"{version or 'git says no version'}: routines applied with an account's key "
            "need git 2.37 or newer, or their git may follow a name to a private address",
            required=False,
        )
    return Finding("git", True, version)
