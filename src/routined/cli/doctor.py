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

from routined.cli.common import app, out, settings, store_file
from routined.config import Settings


@dataclass(frozen=True)
class Finding:
    topic: str
    ok: bool
    said: str
    required: bool = True  # a run cannot start without it (else it runs with less)


@app.command()
def doctor() -> None:
    """Check what runs need on this machine: the sandbox, whom it runs as, resource caps,
    routined's home and store, disk space, git, Claude Code, the model API and the
    public URL. Exits 1 when runs cannot start."""
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
    found.append(_store(config))
    found.append(_disk(config.home))
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
    if config.anthropic_api_key:
        found.append(_model_api(config))
    found.append(_public_url(config))
    return found


def _store(config: Settings) -> Finding:
    from sqlalchemy.exc import SQLAlchemyError

    from routined.db import Store

    where = store_file(config)
    if where is not None and not where.exists():
        return Finding("store", True, f"none yet at {where}; `routined serve` starts one")
    store = Store(config.database_url.reveal())
    try:
        stored, newest = store.revisions()
    except SQLAlchemyError as error:
        first = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        return Finding("store", False, f"cannot read the store: {first}")
    finally:
        store.dispose()
    shown = store.url.render_as_string(hide_password=True)
    if stored is not None and stored == newest:
        return Finding("store", True, f"{shown} is at the newest migration ({newest})")
    return Finding(
        "store",
        False,
        f"{shown} is at migration {stored or 'none'}, the newest is {newest}; "
        "`routined serve` (or any routined command) brings it up to date",
        required=False,
    )


_LOW_DISK = 2 * 1024**3  # bytes; a large repository's checkout and a run's home fit


def _disk(home: Path) -> Finding:
    folder = home
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    said = f"{free / 1024**3:.1f} GiB free where runs' checkouts and homes live ({folder})"
    if free < _LOW_DISK:
        return Finding("disk", False, f"{said}; free some, or set ROUTINED_HOME elsewhere", False)
    return Finding("disk", True, said)


def _model_api(config: Settings) -> Finding:
    """Whether the model API answers and takes the key: a token count, which costs
    nothing, for the gate's model."""
    import httpx

    base = config.anthropic_base_url.rstrip("/")
    try:
        answer = httpx.post(
            f"{base}/v1/messages/count_tokens",
            headers={
                "x-api-key": config.anthropic_api_key.reveal(),
                "anthropic-version": "2023-06-01",
            },
            json={"model": config.gate_model, "messages": [{"role": "user", "content": "ok"}]},
            timeout=10,
        )
    except httpx.HTTPError as error:
        return Finding("model API", False, f"cannot reach {base}: {error}")
    if answer.is_success:
        return Finding("model API", True, f"{base} answers and takes the key")
    try:
        message = answer.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = answer.text[:200]
    if answer.status_code in (401, 403):
        return Finding(
            "model API",
            False,
            f"{base} refused the key ({answer.status_code}: {message}); check ANTHROPIC_API_KEY",
        )
    return Finding("model API", False, f"{base} answered {answer.status_code}: {message}")


def _public_url(config: Settings) -> Finding:
    """Whether routined answers at the URL it gives people and GitHub; a warning only:
    doctor may run before `routined serve` does."""
    import httpx

    url = config.public_url
    try:
        answer = httpx.get(f"{url}/healthz", timeout=3)
        if answer.is_success and answer.json() == {"status": "ok"}:
            return Finding("public URL", True, f"routined answers at {url}")
        said = f"{url}/healthz answered {answer.status_code}, not routined"
    except (httpx.HTTPError, ValueError) as error:
        said = f"nothing answers at {url} ({type(error).__name__})"
    return Finding(
        "public URL",
        False,
        f"{said}: start `routined serve`, or set ROUTINED_PUBLIC_URL to the URL people and "
        "GitHub reach it at",
        required=False,
    )


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
