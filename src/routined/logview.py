"""One readable line per run event, for `routined logs`."""

from __future__ import annotations

import json
from typing import Any

_WIDTH = 160


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
    if kind == "agent.stderr":
        return "agent stderr: " + _clip(" | ".join(data.get("lines", [])))
    return f"{kind}: {reason or _clip(json.dumps(data))}"


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
