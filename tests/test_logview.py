"""`routined logs`: one sentence per event, for the events Claude Code sends about its
subagents (background tasks) as well, built from the SDK's own messages as a run
records them."""

from __future__ import annotations

from typing import Any

from claude_agent_sdk import (
    TaskNotificationMessage,
    TaskProgressMessage,
    TaskStartedMessage,
    TaskUsage,
)

from routined.agents.claude import describe
from routined.logview import describe_event

IDS = {"uuid": "u-1", "session_id": "s-1", "tool_use_id": "toolu_01"}


def logged(message: object) -> str:
    """`message` as `logs` prints it, recorded as a run records it."""
    kind, data = describe(message)
    event: dict[str, Any] = {"kind": kind, "reason": None, "data": data}
    return describe_event(event)


def test_a_subagents_start_progress_and_end_read_as_sentences() -> None:
    # Issue 16: these were printed as raw JSON, cut off at 160 characters.
    raw = {"type": "system", "task_id": "t1", **IDS}
    started = TaskStartedMessage(
        subtype="task_started",
        data={**raw, "subtype": "task_started", "description": "Find the flaky test"},
        task_id="t1",
        description="Find the flaky test",
        task_type="local_agent",
        **IDS,
    )
    usage = TaskUsage(total_tokens=12345, tool_uses=7, duration_ms=41000)
    progress = TaskProgressMessage(
        subtype="task_progress",
        data={**raw, "subtype": "task_progress"},
        task_id="t1",
        description="Find the flaky test",
        usage={**usage, "tool_uses": 1},
        last_tool_name="Grep",
        **IDS,
    )
    ended = TaskNotificationMessage(
        subtype="task_notification",
        data={**raw, "subtype": "task_notification"},
        task_id="t1",
        status="completed",
        output_file="/tmp/t1.out",
        summary="The test waits on a clock it never advances.",
        usage=usage,
        **IDS,
    )
    assert logged(started) == "task started (local_agent): Find the flaky test"
    assert logged(progress) == (
        "task running: Find the flaky test, last used Grep (1 tool use, 12,345 tokens, 41 s)"
    )
    assert logged(ended) == (
        "task completed: The test waits on a clock it never advances. "
        "(7 tool uses, 12,345 tokens, 41 s)"
    )


def test_a_task_event_missing_its_fields_still_reads_as_a_sentence() -> None:
    for kind, said in (
        ("agent.task_started", "task started: a task"),
        ("agent.task_notification", "task ended"),
        ("agent.task_updated", "task updated"),
    ):
        assert describe_event({"kind": kind, "reason": None, "data": {}}) == said
    assert (
        describe_event(
            {
                "kind": "agent.task_updated",
                "reason": None,
                "data": {"task_id": "t1", "status": "killed"},
            }
        )
        == "task t1 is killed"
    )
