"""A session as every agent runs it: what it is given (`Launch`) and how it ended
(`SessionOutcome`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_agent_sdk import ResultMessage


@dataclass(frozen=True)
class Launch:
    """One agent session as a run starts it, whichever agent: its prompt; the
    launcher, which runs the agent inside the run's sandbox; the folder it works in
    and its environment; and where each message and each line of its stderr go."""

    prompt: str
    launcher: Path
    cwd: Path
    env: dict[str, str]
    on_message: Callable[[str, dict[str, Any]], Awaitable[None]]
    on_stderr: Callable[[str], None]


# The limits a session can reach, by the result subtype Claude Code reports.
_BUDGETS = {"error_max_turns": "max_turns", "error_max_budget_usd": "max_cost_usd"}


@dataclass
class SessionOutcome:
    """How a session ended, whichever agent ran it."""

    agent_session_id: str | None = None
    # Why it failed (None: it ended normally) and, if a limit stopped it, which.
    error: str | None = "the agent ended without a result"
    limit: str | None = None
    summary: str | None = None
    usage: dict[str, Any] | None = None
    cost_usd: float | None = None
    turns: int | None = None

    def take(self, result: ResultMessage) -> None:
        self.agent_session_id = result.session_id
        self.summary = result.result
        self.usage = _token_usage(result.usage)
        self.cost_usd = result.total_cost_usd
        self.turns = result.num_turns
        self.limit = _BUDGETS.get(result.subtype)
        if not result.is_error and self.limit is None:
            self.error = None
            return
        details = "; ".join(result.errors or []) or (result.result or "")
        status = result.api_error_status
        self.error = (
            f"the agent ended with {result.subtype}"
            + (f" (model API status {status})" if status else "")
            + (f": {details}" if details else "")
        )


def _token_usage(usage: object) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    return {
        key: value
        for key, value in usage.items()
        if key.endswith("_tokens") and isinstance(value, int) and not isinstance(value, bool)
    }
