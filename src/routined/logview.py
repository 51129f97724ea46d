"""One readable line per run event, for `routined logs`, and below some the lines that
explain it (the end of a setup script's output)."""

from __future__ import annotations

import json
from typing import Any

_WIDTH = 160
# How much of a setup script's output `logs` and `show-run` show: its end, where a
# failure says why; all of it (the last 200 lines) is in `logs --json`.
SETUP_TAIL = 12


def describe_event(event: dict[str, Any]) -> str:
    """`event` as `routined.views.run_event_view` shows it."""
    data = event["data"] or {}
    kind, reason = event["kind"], event["reason"]
    if kind == "status":
        moved = (
            f"{event['from_status']} → {event['to_status']}"
            if event["from_status"]
            else event["to_status"]
        )
        return f"{moved}  {reason or ''}".rstrip()
    if kind == "agent.assistant":
        return "assistant: " + "; ".join(_block(b) for b in data.get("content", [])) or "(empty)"
    if kind == "agent.user":
        content = data.get("content")
        if isinstance(content, list):
            return "tool result: " + "; ".join(_block(b) for b in content)
        return "user: " + _clip(str(content))
    if kind == "agent.system":
        return f"system {data.get('subtype', '')}".rstrip()
    if kind == "agent.result":
        cost = data.get("total_cost_usd")
        spent = f", ${cost:.4f}" if isinstance(cost, int | float) else ""
        return f"result {data.get('subtype')}: {data.get('num_turns')} turns{spent}"
    if kind.startswith("agent.task_"):
        return _task(kind.removeprefix("agent.task_"), data)
    if kind == "agent.stderr":
        return "agent stderr: " + _clip(" | ".join(data.get("lines", [])))
    if kind == "setup.output" and data.get("error_line"):
        return f"{kind}: {reason}: {_clip(str(data['error_line']))}"
    return f"{kind}: {reason or _clip(json.dumps(data))}"


def event_details(event: dict[str, Any]) -> list[str]:
    """The lines `logs` shows under `event`'s own: the end of a setup script's output
    (the cause of a failed setup is seldom its last line), else none."""
    if event["kind"] != "setup.output":
        return []
    return setup_tail(event["data"] or {})


def setup_tail(data: dict[str, Any]) -> list[str]:
    """The last `SETUP_TAIL` lines of a `setup.output` event's output, after a line that
    says how many more it has."""
    lines = [str(line) for line in data.get("lines") or []]
    tail = [line[:_WIDTH] for line in lines[-SETUP_TAIL:]]
    if len(lines) > SETUP_TAIL:
        more = len(lines) - SETUP_TAIL
        tail.insert(0, f"… {more} earlier line{'' if more == 1 else 's'} (`routined logs --json`)")
    return tail


def _task(stage: str, data: dict[str, Any]) -> str:
    """A sentence for a subagent's (a background task's) start, progress and end, which
    Claude Code reports as system messages whose JSON says little at a glance."""
    what = _clip(str(data.get("description") or data.get("task_id") or "a task"))
    if stage == "started":
        kind = data.get("task_type")
        return f"task started{f' ({kind})' if kind else ''}: {what}"
    if stage == "progress":
        tool = data.get("last_tool_name")
        return f"task running: {what}{f', last used {tool}' if tool else ''}{_task_usage(data)}"
    if stage == "notification":
        summary = _clip(str(data.get("summary") or data.get("task_id") or ""))
        said = f": {summary}" if summary else ""
        return f"task {data.get('status') or 'ended'}{said}{_task_usage(data)}"
    if stage == "updated":
        status = data.get("status") or (data.get("patch") or {}).get("status")
        named = f" {data['task_id']}" if data.get("task_id") else ""
        return f"task{named} {f'is {status}' if status else 'updated'}"
    return f"task {stage}: {what}"


def _task_usage(data: dict[str, Any]) -> str:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return ""
    parts = []
    if isinstance(usage.get("tool_uses"), int):
        parts.append(f"{usage['tool_uses']} tool use{'' if usage['tool_uses'] == 1 else 's'}")
    if isinstance(usage.get("total_tokens"), int):
        parts.append(f"{usage['total_tokens']:,} tokens")
    if isinstance(usage.get("duration_ms"), int | float):
        parts.append(f"{usage['duration_ms'] / 1000:.0f} s")
    return f" ({', '.join(parts)})" if parts else ""


def _block(block: Any) -> str:
    if not isinstance(block, dict):
        return _clip(str(block))
    if "name" in block and "input" in block:
        return f"{block['name']} {_clip(json.dumps(block['input'], ensure_ascii=False))}"
    if "tool_use_id" in block:
        content = block.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        return ("error: " if block.get("is_error") else "") + _clip(text)
    if "text" in block:
        return _clip(block["text"])
    if "thinking" in block:
        return "(thinking)"
    return _clip(json.dumps(block, ensure_ascii=False))


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _WIDTH else text[: _WIDTH - 1] + "…"
