"""Claude Code, driven headless through the Agent SDK: the agent routined runs unless a
routine names another."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query

from routined.agents.session import Launch, SessionOutcome

_EVENT_LIMIT = 256 * 1024


@dataclass(frozen=True)
class ClaudeOptions:
    """What a routine sets for a Claude Code session: the run's part of the system
    prompt, the model, the other checkouts it may work in, its limits and the MCP
    servers its connectors give it."""

    system_addition: str
    model: str | None = None
    add_dirs: tuple[Path, ...] = ()
    max_turns: int | None = None
    max_cost_usd: float | None = None
    mcp_servers: dict[str, Any] = dataclasses.field(default_factory=dict)


async def run_session(launch: Launch, claude: ClaudeOptions) -> SessionOutcome:
    """Run one headless session to its end, reporting every message as it comes."""
    options = ClaudeAgentOptions(
        cli_path=launch.launcher,
        cwd=launch.cwd,
        add_dirs=list(claude.add_dirs),
        env=launch.env,
        model=claude.model,
        permission_mode="bypassPermissions",
        system_prompt={
            "type": "preset",
            "preset": "claude_code",
            "append": claude.system_addition,
        },
        # The repository's CLAUDE.md, settings, skills and `.mcp.json` apply, as they
        # would for a person working in it (who would approve its MCP servers; nobody
        # is here to); nothing from the host's own Claude Code setup.
        setting_sources=["project", "local"],
        settings=json.dumps({"enableAllProjectMcpServers": True}),
        mcp_servers=claude.mcp_servers,
        max_turns=claude.max_turns,
        max_budget_usd=claude.max_cost_usd,
        stderr=launch.on_stderr,
    )
    outcome = SessionOutcome()
    try:
        async for message in query(prompt=launch.prompt, options=options):
            kind, data = describe(message)
            if isinstance(message, ResultMessage):
                outcome.take(message)
            elif outcome.agent_session_id is None and isinstance(data.get("session_id"), str):
                outcome.agent_session_id = data["session_id"]
            await launch.on_message(kind, data)
    except Exception:
        # Claude Code exits with an error status after a result that reports a
        # limit reached; the result says all there is to say.
        if outcome.limit is None:
            raise
    return outcome


def describe(message: object) -> tuple[str, dict[str, Any]]:
    """An event kind and JSON-ready data for one SDK message, bounded in size."""
    name = type(message).__name__
    kind = "agent." + re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Message")).lower()
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        data: dict[str, Any] = dataclasses.asdict(message)
    else:
        data = {"repr": repr(message)}
    if kind == "agent.system" and isinstance(data.get("data"), dict):
        data.setdefault("session_id", data["data"].get("session_id"))
    encoded = json.dumps(data, default=str)
    if len(encoded) > _EVENT_LIMIT:
        return kind, {"truncated": True, "size": len(encoded), "preview": encoded[:16384]}
    return kind, json.loads(encoded)
