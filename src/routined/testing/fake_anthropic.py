"""A scripted stand-in for Anthropic's Messages API, on loopback, for tests and benchmarks.

It speaks the published contract closely enough to drive the real Claude Code
binary and the Python SDK: `POST /v1/messages` with `x-api-key` (or
`Authorization: Bearer`), answered as server-sent events (`message_start`,
`ping`, `content_block_start` / `_delta` / `_stop`, `message_delta`,
`message_stop`) or as one JSON message when `stream` is false;
`POST /v1/messages/count_tokens`; errors in the `{"type": "error", …}` envelope.

What the model "says" is scripted: a script is a list of turns, each a list of
content blocks (`text(…)`, `tool_use(…)`). The turn answered is the number of
assistant messages already in the conversation, so retries and parallel
sessions stay in step. A script is chosen by a marker string found in the
conversation's user text; requests that offer no tools (side calls such as
titles) get a short text answer, and routined's triage gate questions the answer
set with `gate(marker, …)` (YES by default).

Run it by hand: `python -m routined.testing.fake_anthropic --port 8765 [--script FILE]`
where FILE is JSON: `{"marker": [[block, …], …], "": [[…]]}` ("" is the default).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from routined.testing.loopback import Loopback

Block = dict[str, Any]
Turn = list[Block]

_CWD = re.compile(r"Primary working directory: (\S+)")
_ids = itertools.count(1)


def text(value: str) -> Block:
    return {"type": "text", "text": value}


def tool_use(name: str, **arguments: Any) -> Block:
    """A tool call; `{cwd}` in any string argument becomes the session's working directory."""
    return {"type": "tool_use", "name": name, "input": arguments}


def api_error(status: int, kind: str, message: str) -> Block:
    """Answer this turn with an API error in the Anthropic envelope instead of a message."""
    return {"type": "api_error", "status": status, "error": {"type": kind, "message": message}}


def stall() -> Block:
    """Begin the answer (`message_start`, `ping`), then say nothing more until the fake
    stops: a model mid-turn, for as long as a test needs one."""
    return {"type": "stall"}


def write_file(path: str, content: str) -> Block:
    return tool_use("Write", file_path="{cwd}/" + path, content=content)


def bash(command: str) -> Block:
    return tool_use("Bash", command=command, description="scripted command")


@dataclass
class RecordedRequest:
    at: float
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def user_text(self) -> str:
        return _user_text(self.body)


@dataclass
class FakeAnthropic(Loopback):
    """Start with `start()` (or as a context manager); point ANTHROPIC_BASE_URL at `base_url`."""

    api_key: str | None = None
    scripts: dict[str, list[Turn]] = field(default_factory=dict)
    default: list[Turn] = field(default_factory=lambda: [[text("Done.")]])
    # Answers to routined's triage gate (asked without tools), by marker.
    gates: dict[str, Turn] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()  # ends the answers that stall
        self._stalled = 0  # answers begun and left hanging

    def stop(self) -> None:
        self._stopping.set()
        super().stop()

    # -- lifecycle ---------------------------------------------------------

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- scripting and inspection --------------------------------------------

    def script(self, marker: str, turns: Sequence[Turn]) -> None:
        """Conversations whose user text contains `marker` follow `turns`."""
        with self._lock:
            self.scripts[marker] = [list(turn) for turn in turns]

    def gate(self, marker: str, answer: Turn) -> None:
        """Gate questions whose text contains `marker` get `answer` (default: YES)."""
        with self._lock:
            self.gates[marker] = list(answer)

    def wait_for_request(self, marker: str, *, after: float, timeout: float) -> float | None:
        """When the first model request of a conversation with `marker` arrived after
        `after` (both `time.time()`), or None if none came within `timeout` seconds."""

        def arrival() -> float | None:
            times = [
                r.at
                for r in self.requests
                if r.at >= after and r.path.startswith("/v1/messages") and marker in r.user_text
            ]
            return min(times, default=None)

        with self._arrived:
            self._arrived.wait_for(lambda: arrival() is not None, timeout)
            return arrival()

    def wait_for_stall(self, *, timeout: float) -> bool:
        """Whether an answer scripted with `stall()` has begun (within `timeout` s)."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self._stalled > 0, timeout)

    def conversations(self, marker: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if marker in r.user_text]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- answering -----------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._arrived:
            self.requests.append(request)
            self._arrived.notify_all()

    def _turn_for(self, body: Mapping[str, Any]) -> Turn:
        conversation = _user_text(body)
        if not body.get("tools"):
            if "triage gate" in str(body.get("system", "")):
                with self._lock:
                    return next(
                        (turn for marker, turn in self.gates.items() if marker in conversation),
                        [text("YES. Nothing scripted says otherwise.")],
                    )
            return [text("Routine run.")]
        with self._lock:
            script = next(
                (turns for marker, turns in self.scripts.items() if marker in conversation),
                self.default,
            )
        answered = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        turn = script[answered] if answered < len(script) else [text("Done.")]
        match = _CWD.search(conversation)
        cwd = match.group(1) if match else "."
        return [_fill(block, cwd) for block in turn]


class _Handler(BaseHTTPRequestHandler):
    owner: FakeAnthropic
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._error(404, "not_found_error", f"no such endpoint: {self.path}")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._error(400, "invalid_request_error", "body is not valid JSON")
            return
        owner = self.owner
        owner._record(
            RecordedRequest(
                time.time(), self.path, {k.lower(): v for k, v in self.headers.items()}, body
            )
        )
        # Keys come as x-api-key or, from newer SDKs, as a bearer token.
        bearer = self.headers.get("authorization", "").removeprefix("Bearer ")
        key = self.headers.get("x-api-key") or bearer
        if owner.api_key is not None and key != owner.api_key:
            self._error(401, "authentication_error", "invalid x-api-key")
            return
        path = self.path.split("?", 1)[0]
        if path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": max(1, len(raw) // 4)})
        elif path == "/v1/messages":
            if not isinstance(body.get("messages"), list) or "model" not in body:
                self._error(400, "invalid_request_error", "messages and model are required")
                return
            turn = owner._turn_for(body)
            failure = next((b for b in turn if b["type"] == "api_error"), None)
            if failure is not None:
                self._error(
                    failure["status"], failure["error"]["type"], failure["error"]["message"]
                )
            else:
                self._message(body, turn)
        else:
            self._error(404, "not_found_error", f"no such endpoint: {self.path}")

    def _message(self, body: Mapping[str, Any], turn: Turn) -> None:
        message_id = f"msg_fake{next(_ids):06d}"
        blocks = [
            {**block, "id": f"toolu_fake{next(_ids):06d}"} if block["type"] == "tool_use" else block
            for block in turn
        ]
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        usage = {"input_tokens": 10, "output_tokens": 5}
        if not body.get("stream"):
            self._json(
                200,
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": blocks,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                },
            )
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self._event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 1},
                },
            },
        )
        self._event("ping", {"type": "ping"})
        if any(b["type"] == "stall" for b in blocks):
            with self.owner._arrived:
                self.owner._stalled += 1
                self.owner._arrived.notify_all()
            self.owner._stopping.wait()
            self.close_connection = True
            return
        for index, block in enumerate(blocks):
            start: dict[str, Any]
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                delta = {"type": "text_delta", "text": block["text"]}
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            self._event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            self._event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        self._event("message_stop", {"type": "message_stop"})
        self.close_connection = True

    def _event(self, name: str, data: Mapping[str, Any]) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()

    def _json(self, status: int, payload: Mapping[str, Any]) -> None:
        encoded = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(encoded)))
        self.send_header("request-id", f"req_fake{next(_ids):06d}")
        self.end_headers()
        self.wfile.write(encoded)

    def _error(self, status: int, kind: str, message: str) -> None:
        self._json(status, {"type": "error", "error": {"type": kind, "message": message}})


def _user_text(body: Mapping[str, Any]) -> str:
    parts = []
    for message in body.get("messages", []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [b.get("text", "") for b in content if isinstance(b, dict)]
    return "\n".join(parts)


def _fill(value: Any, cwd: str) -> Any:
    if isinstance(value, str):
        return value.replace("{cwd}", cwd)
    if isinstance(value, list):
        return [_fill(item, cwd) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, cwd) for key, item in value.items()}
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--script", help="JSON file: marker → list of turns")
    options = parser.parse_args()
    fake = FakeAnthropic(port=options.port)
    if options.script:
        with open(options.script) as handle:  # noqa: PTH123 - a plain read of a user file
            for marker, turns in json.load(handle).items():
                if marker:
                    fake.script(marker, turns)
                else:
                    fake.default = turns
    fake.start()
    print(f"fake Anthropic Messages API at {fake.base_url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
