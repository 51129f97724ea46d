"""The run environment in routine files: `environment`, `limits`, `agent`, `connectors`
and per-repository push rules, as checked, stored and changed by `apply`."""

from __future__ import annotations

from pathlib import Path

import pytest

from routined.db import Store
from routined.routines.load import load
from routined.routines.spec import SpecError
from routined.runs import scope
from tests.conftest import T0
from tests.test_routines import apply_file, stored, write

HEAD = """\
routines:
  - name: deps
    prompt: Update the dependencies.
    repositories:
      - url: {url}
"""

FULL = (
    HEAD
    + """\
        branch_prefix: bots/deps/
        allow_unrestricted_push: true
        allow_force_push: true
    environment:
      network: custom
      allowed_hosts: ["*.Internal.example.com", "pypi.org", "127.0.0.2:8080"]
      include_trusted: true
      setup_script: |
        pip install -r requirements.txt
      setup_cache_files: [requirements.txt, web/package-lock.json, requirements.txt, tools/]
      env: {LOG_LEVEL: debug, RETRIES: 3, VERBOSE: true}
      secrets: [DEPLOY_TOKEN, {name: NPM_TOKEN, setup_only: true}]
    limits: {max_duration: 45m, max_turns: 30, max_cost_usd: 2.5, max_file_mb: 50}
    agent: {command: [aider, --yes-always]}
    connectors:
      tracker: {type: http, url: "https://mcp.tracker.example.com/mcp", headers: {X-Team: a}}
      docs: {command: python3, args: [docs_mcp.py], env: {MODE: read}}
"""
)


def test_everything_is_stored_as_written(store: Store, tmp_path: Path, origin: Path) -> None:
    apply_file(store, write(tmp_path, FULL.replace("{url}", str(origin))))
    routine = stored(store, "deps")
    assert routine.environment == {
        "network": "custom",
        "allowed_hosts": ["*.internal.example.com", "pypi.org", "127.0.0.2:8080"],
        "include_trusted": True,
        "setup_script": "pip install -r requirements.txt\n",
        "setup_cache_files": ["requirements.txt", "tools", "web/package-lock.json"],
        "env": {"LOG_LEVEL": "debug", "RETRIES": "3", "VERBOSE": "true"},
        "secrets": [
            {"name": "DEPLOY_TOKEN", "setup_only": False},
            {"name": "NPM_TOKEN", "setup_only": True},
        ],
    }
    assert routine.limits == {
        "max_duration": 2700,
        "max_turns": 30,
        "max_cost_usd": 2.5,
        "max_file_mb": 50,
    }
    assert scope.Limits.of(routine.limits).max_file_mb == 50
    assert routine.agent == {"type": "command", "command": ["aider", "--yes-always"]}
    assert routine.connectors == {
        "tracker": {
            "type": "http",
            "url": "https://mcp.tracker.example.com/mcp",
            "headers": {"X-Team": "a"},
        },
        "docs": {
            "type": "stdio",
            "command": "python3",
            "args": ["docs_mcp.py"],
            "env": {"MODE": "read"},
        },
    }
    [repository] = routine.repositories
    assert (repository.branch_prefix, repository.allow_unrestricted_push) == ("bots/deps/", True)
    assert (repository.allow_force_push, repository.allow_default_branch_push) == (True, False)


def test_defaults_are_trusted_network_claude_and_claude_branches(
    store: Store, tmp_path: Path, origin: Path
) -> None:
    apply_file(store, write(tmp_path, HEAD.format(url=origin)))
    routine = stored(store, "deps")
    assert routine.environment["network"] == "trusted"
    assert "setup_cache_files" not in routine.environment  # as stored before it existed
    assert routine.limits == {} and routine.connectors == {}
    assert scope.Limits.of(routine.limits).max_file_mb == 100  # GitHub's limit per file
    assert routine.agent == {"type": "claude"}
    [repository] = routine.repositories
    assert repository.branch_prefix == "claude/" and not repository.allow_unrestricted_push


def test_changes_are_reported_and_unchanged_stays_unchanged(
    store: Store, tmp_path: Path, origin: Path
) -> None:
    path = write(tmp_path, FULL.replace("{url}", str(origin)))
    apply_file(store, path)
    assert apply_file(store, path) == ["deps unchanged"]
    path.write_text(
        FULL.replace("{url}", str(origin))
        .replace("max_turns: 30", "max_turns: 31")
        .replace("bots/deps/", "bots/other/")
    )
    [change] = apply_file(store, path)
    assert change.startswith("deps updated: repositories ")
    assert change.endswith("limits changed")
    assert stored(store, "deps").repositories[0].branch_prefix == "bots/other/"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            "    environment: {network: wide}\n",
            "routines[0] (deps).environment.network: Input should be 'none', 'trusted', 'full' "
            "or 'custom'",
        ),
        (
            "    environment: {allowed_hosts: [pypi.org]}\n",
            "allowed_hosts and include_trusted apply only to network: custom",
        ),
        (
            "    environment: {network: custom, allowed_hosts: ['https://pypi.org/simple']}\n",
            "routines[0] (deps).environment.allowed_hosts:",
        ),
        (
            "    environment: {env: {PATH: /opt/bin}}\n",
            "routines[0] (deps).environment.env: ",
        ),
        (
            "    environment: {secrets: [ANTHROPIC_API_KEY]}\n",
            "routines[0] (deps).environment.secrets[0].name: ",
        ),
        (
            "    environment: {env: {TOKEN: a}, secrets: [TOKEN]}\n",
            "TOKEN: named twice among env and secrets; keep one",
        ),
        (
            "    environment: {setup_script: make, setup_cache_files: [/etc/passwd]}\n",
            "'/etc/passwd': give a path inside the first repository, such as uv.lock",
        ),
        (
            "    environment: {setup_script: make, setup_cache_files: [../other/uv.lock]}\n",
            "'../other/uv.lock': give a path inside the first repository",
        ),
        (
            "    environment: {setup_cache_files: [uv.lock]}\n",
            "setup_cache_files applies only with a setup_script",
        ),
        (
            "    environment: {setup_script: make, setup_cache_files: ['*.lock']}\n",
            "'*.lock': name each file or folder as it is; patterns are not matched",
        ),
        (
            "    environment: {setup_script: make, setup_cache_files: [.]}\n",
            "'.': give a path inside the first repository",
        ),
        ("    limits: {max_turns: 0}\n", "routines[0] (deps).limits.max_turns: "),
        ("    limits: {max_duration: soon}\n", "routines[0] (deps).limits.max_duration: "),
        ("    limits: {max_cost_usd: -1}\n", "routines[0] (deps).limits.max_cost_usd: "),
        ("    limits: {max_file_mb: 0}\n", "routines[0] (deps).limits.max_file_mb: "),
        ("    limits: {max_file_mb: 4096}\n", "routines[0] (deps).limits.max_file_mb: "),
        ("    limits: {max_file_mb: 1.5}\n", "routines[0] (deps).limits.max_file_mb: "),
        ("    agent: {command: []}\n", "routines[0] (deps).agent"),
        ("    agent: codex\n", "routines[0] (deps).agent"),
        (
            "    connectors: {x: {type: http, command: srv}}\n",
            "a http connector gives `url:`, not `command:`",
        ),
        (
            "    connectors: {x: {args: [a]}}\n",
            "a stdio connector gives `command:` (and `args:`), not `url:`",
        ),
    ],
)
def test_bad_environment_is_refused_naming_the_field(
    tmp_path: Path, origin: Path, lines: str, message: str
) -> None:
    path = write(tmp_path, HEAD.format(url=origin) + lines)
    with pytest.raises(SpecError) as raised:
        load(path, now=T0)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("        branch_prefix: claude\n", "give a branch name prefix ending in '/'"),
        ("        branch_prefix: ../x/\n", "give a branch name prefix ending in '/'"),
        (
            "        allow_force_push: true\n",
            "allow_force_push applies only with allow_unrestricted_push: true",
        ),
        (
            "        allow_default_branch_push: true\n",
            "allow_default_branch_push applies only with allow_unrestricted_push: true",
        ),
    ],
)
def test_bad_push_rules_are_refused(tmp_path: Path, origin: Path, lines: str, message: str) -> None:
    path = write(tmp_path, HEAD.format(url=origin) + lines)
    with pytest.raises(SpecError) as raised:
        load(path, now=T0)
    assert "routines[0] (deps).repositories[0]" in str(raised.value)
    assert message in str(raised.value)
