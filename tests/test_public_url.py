"""Every URL routined prints follows the server: the README's "Try it" on a port that is
not the default one.

As seen: after `routined serve --port 54431`, `routined token NAME` printed a curl line
for 127.0.0.1:8080, and `fire --json` and `show-run --json` gave session URLs on 8080.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from routined.http.fire import ANTHROPIC_VERSION
from routined.testing.fake_anthropic import FakeAnthropic
from tests.conftest import ROUTINED, start_serve

URL = re.compile(r"https?://[^\s'\"\\]+")


@pytest.fixture
def environment(tmp_path: Path, fake_api: FakeAnthropic) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ROUTINED_", "ANTHROPIC_"))}
    return {
        **clean,
        "ROUTINED_HOME": str(tmp_path / "home"),
        "ANTHROPIC_BASE_URL": fake_api.base_url,
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "COLUMNS": "300",
    }


@pytest.fixture
def served(environment: dict[str, str]) -> Iterator[str]:
    """`routined serve` on a free port (as `make run` starts it, but not on 8080)."""
    process, url = start_serve(environment)
    try:
        assert not url.endswith(":8080")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def routined(environment: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [ROUTINED, *args], env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_every_url_the_try_it_commands_print_is_the_servers(
    tmp_path: Path, origin: Path, environment: dict[str, str], served: str
) -> None:
    routines = tmp_path / "routines.yaml"
    routines.write_text(
        "routines:\n"
        "  - name: docs-nightly\n"
        "    prompt: |\n"
        "      Update the changelog from the merged pull requests.\n"
        "    repositories:\n"
        f"      - url: {origin}\n"
        "    triggers:\n"
        "      - type: api\n"
    )
    printed = [routined(environment, "apply", "-f", str(routines))]
    issued = json.loads(routined(environment, "token", "docs-nightly", "--json"))
    printed.append(json.dumps(issued))
    printed.append(routined(environment, "token", "docs-nightly"))  # a new one, with curl
    [token] = re.findall(r"rtd_\S+", printed[-1])[:1]
    # The curl line, as the README has people run it.
    answer = httpx.post(
        issued["url"],
        headers={
            "authorization": f"Bearer {token}",
            "anthropic-beta": "experimental-cc-routine-2026-04-01",
            "anthropic-version": ANTHROPIC_VERSION,
        },
        json={"text": "Sentry alert SEN-4521 fired in prod."},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    printed.append(answer.text)
    fired = routined(environment, "fire", "docs-nightly", "--json")
    printed.append(fired)
    printed.append(routined(environment, "show-run", json.loads(fired)["run_id"], "--json"))
    printed.append(routined(environment, "runs", "--json"))
    urls = [url for said in printed for url in URL.findall(said)]
    assert len(urls) >= 5
    assert [url for url in urls if not url.startswith(served + "/")] == []
    assert answer.json()["claude_code_session_url"].startswith(f"{served}/sessions/session_")
