"""Request smuggling through the model gateway (issue 14, finding 2), tried as an attacker.

A hostile client on the sandbox's side of the proxy sends raw bytes: requests cut
short by a bare LF, folded headers, framing that parsers disagree on, requests
pipelined behind a good one or sent on a kept-alive connection. Behind the
gateway stands the most obliging upstream there is: it parses leniently (bare LF
is a line end to it, as to h11 and many servers) and answers every request it
can find on a connection, `Connection: close` or not. Whatever the attack, that
upstream must see only the endpoints the agent may call, each with routined's key
and never the agent's; what is ambiguous is answered 400 before any byte goes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from routined.sandbox.egress import (
    EgressDecision,
    EgressPolicy,
    EgressProxy,
    HostRule,
    ModelGateway,
)
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio

REAL_KEY = "sk-ant-real-key-only-routined-holds"
AGENT_KEY = "sk-ant-placeholder-the-agent-holds"
ALLOWED = re.compile(r"POST /v1/messages(/count_tokens)?(\?.*)?")
GATEWAY = "127.0.0.1:3128"


@dataclass
class Seen:
    """One request as the upstream parsed it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.target}"

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


@dataclass
class LenientUpstream:
    """A model API that keeps every connection alive: it takes each request it can
    parse, even those that follow one saying `Connection: close`, and records them.

    A request with `Accept: text/event-stream` is answered as a stream of server-sent
    events, chunked: the first event at once, the last when `release` is set."""

    port: int = 0
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    streams_finished: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        leftover = b""
        try:
            while True:
                # A fresh parser per request, fed what the last one left: so a
                # pipelined request after `Connection: close` is read all the same.
                server = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
                if leftover:  # b"" would tell h11 the connection ended
                    server.receive_data(leftover)
                seen = await self._read(server, reader)
                if seen is None:
                    return
                await self._answer(server, writer, seen)
                leftover, _ = server.trailing_data
        except (h11.ProtocolError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _read(self, server: h11.Connection, reader: asyncio.StreamReader) -> Seen | None:
        seen: Seen | None = None
        while True:
            event = server.next_event()
            if event is h11.NEED_DATA:
                server.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                seen = Seen(
                    event.method.decode(),
                    event.target.decode(),
                    [(name.decode(), value.decode("latin-1")) for name, value in event.headers],
                )
                self.requests.append(seen)
            elif isinstance(event, h11.Data) and seen is not None:
                seen.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return seen
            else:
                return None

    async def _answer(
        self, server: h11.Connection, writer: asyncio.StreamWriter, seen: Seen
    ) -> None:
        if "text/event-stream" in seen.values("accept"):
            writer.write(
                server.send(
                    h11.Response(status_code=200, headers=[("content-type", "text/event-stream")])
                )
            )
            writer.write(server.send(h11.Data(data=b"event: message_start\ndata: {}\n\n")))
            await writer.drain()
            await self.release.wait()
            writer.write(server.send(h11.Data(data=b"event: message_stop\ndata: {}\n\n")))
            writer.write(server.send(h11.EndOfMessage()))
            self.streams_finished += 1
        else:
            body = json.dumps({"endpoint": seen.endpoint}).encode()
            headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
            writer.write(server.send(h11.Response(status_code=200, headers=headers)))
            writer.write(server.send(h11.Data(data=body)))
            writer.write(server.send(h11.EndOfMessage()))
        await writer.drain()


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


@dataclass
class Gateway:
    socket: Path
    decisions: list[EgressDecision]


@pytest.fixture
async def gateway(upstream: LenientUpstream) -> AsyncIterator[Gateway]:
    """A run's proxy under `network: none`: the model gateway is all it serves."""
    decisions: list[EgressDecision] = []
    proxy = EgressProxy(EgressPolicy(), decisions.append, ModelGateway(upstream.base_url, REAL_KEY))
    with tempfile.TemporaryDirectory(prefix="routined-test-") as folder:
        socket = Path(folder) / "egress.sock"
        await proxy.start(socket)
        try:
            yield Gateway(socket, decisions)
        finally:
            await proxy.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Answers:
    """The proxy's answers on one connection, read with h11 as a client reads them."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.leftover = b""
        self.ended = False

    async def next(self) -> Answer | None:
        """The next whole answer; None once the proxy has closed the connection."""
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        parser.send(h11.EndOfMessage())
        if self.leftover:
            parser.receive_data(self.leftover)
        if self.ended:
            parser.receive_data(b"")  # b"" is how h11 hears the end
        answer: Answer | None = None
        async with asyncio.timeout(10):
            while True:
                try:
                    event = parser.next_event()
                except h11.RemoteProtocolError:
                    return None  # cut off mid-answer: the proxy closed
                if event is h11.NEED_DATA:
                    try:
                        data = await self.reader.read(65536)
                    except ConnectionError:
                        # How a Unix socket ends when the proxy closed with bytes of
                        # ours unread (reset), or before we wrote them (broken pipe):
                        # after all it had sent.
                        data = b""
                    self.ended = not data
                    parser.receive_data(data)
                elif isinstance(event, h11.Response):
                    headers = {k.decode(): v.decode("latin-1") for k, v in event.headers}
                    answer = Answer(event.status_code, headers, b"")
                elif isinstance(event, h11.Data) and answer is not None:
                    answer.body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self.leftover, _ = parser.trailing_data
                    return answer
                elif isinstance(event, h11.ConnectionClosed):
                    return None

    async def all(self) -> list[Answer]:
        found = []
        while (answer := await self.next()) is not None:
            found.append(answer)
        return found


async def send_all(socket: Path, payload: bytes) -> list[Answer]:
    """Send `payload` on one connection, say nothing more, and read every answer."""
    reader, writer = await asyncio.open_unix_connection(str(socket))
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        return await Answers(reader).all()
    finally:
        writer.close()


def assert_only_allowed_requests_went_up(upstream: LenientUpstream) -> None:
    """The wall: each request upstream is one the agent may make, with routined's key
    (once) and nothing of the agent's."""
    stray = [seen for seen in upstream.requests if not ALLOWED.fullmatch(seen.endpoint)]
    keyed = [seen.endpoint for seen in stray if REAL_KEY in repr(seen)]
    assert keyed == [], f"routined's key went up on {keyed}"
    assert [seen.endpoint for seen in stray] == [], "these reached the model API"
    for seen in upstream.requests:
        assert seen.values("x-api-key") == [REAL_KEY], seen.headers
        assert seen.values("authorization") == [], seen.headers
        assert AGENT_KEY not in repr(seen), seen.headers
        assert seen.values("host") == [f"127.0.0.1:{upstream.port}"], seen.headers


def head(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in (*lines, "")).encode()


# A second request that must never reach the model API, with the agent's key on it.
SMUGGLED = head("GET /v1/models HTTP/1.1", f"Host: {GATEWAY}", f"x-api-key: {AGENT_KEY}")
START = ("POST /v1/messages HTTP/1.1", f"Host: {GATEWAY}", f"x-api-key: {AGENT_KEY}")
BODY = b'{"model": "m", "messages": []}'

AMBIGUOUS = {
    # The attack: a bare LF ends the first head early; the rest of it, and
    # the key a proxy that splits on CRLF appends, belong to a second request.
    "bare LF ends the head": (
        f"POST /v1/messages HTTP/1.1\r\nHost: {GATEWAY}\r\nContent-Length: 0\n\n"
        f"GET /v1/models HTTP/1.1\r\nX-Pad: 1\nHost: {GATEWAY}\r\n\r\n"
    ).encode(),
    "bare LF line ends throughout": (
        f"POST /v1/messages HTTP/1.1\nHost: {GATEWAY}\nContent-Length: 0\n\n"
    ).encode()
    + SMUGGLED,
    "a lone CR inside the head": head(*START, "X-Pad: a\rContent-Length: 0", "Content-Length: 0")
    + SMUGGLED,
    "obs-fold hides a Transfer-Encoding": head(
        *START, "Content-Length: 0", "X-Pad: 1", " Transfer-Encoding: chunked"
    )
    + SMUGGLED,
    "obs-fold with a tab": head(*START, "X-Pad: 1", "\tContent-Length: 0") + SMUGGLED,
    "Content-Length and Transfer-Encoding": head(
        *START, "Content-Length: 5", "Transfer-Encoding: chunked"
    )
    + b"0\r\n\r\n"
    + SMUGGLED,
    "Content-Length twice": head(*START, "Content-Length: 0", "Content-Length: 0") + SMUGGLED,
    "Content-Length as a list": head(*START, "Content-Length: 0, 0") + SMUGGLED,
    "Content-Length conflicting": head(*START, "Content-Length: 0", "Content-Length: 75")
    + SMUGGLED,
    "Transfer-Encoding not chunked": head(*START, "Transfer-Encoding: identity") + SMUGGLED,
    "Transfer-Encoding gzip, chunked": head(*START, "Transfer-Encoding: gzip, chunked")
    + b"0\r\n\r\n"
    + SMUGGLED,
    "Transfer-Encoding twice": head(
        *START, "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"
    )
    + b"0\r\n\r\n"
    + SMUGGLED,
    "a space before the colon": head(*START, "Content-Length : 0") + SMUGGLED,
    "a control character in a value": head(*START, "X-Pad: a\x01b", "Content-Length: 0") + SMUGGLED,
    "a bad header name": head(*START, "X Pad: 1", "Content-Length: 0") + SMUGGLED,
    "a malformed request line": head(
        "POST  /v1/messages HTTP/1.1", f"Host: {GATEWAY}", "Content-Length: 0"
    )
    + SMUGGLED,
    "an unknown HTTP version": head(
        "POST /v1/messages HTTP/1.7", f"Host: {GATEWAY}", "Content-Length: 0"
    )
    + SMUGGLED,
    "no Host": head("POST /v1/messages HTTP/1.1", "Content-Length: 0") + SMUGGLED,
    "two Hosts": head(*START, f"Host: 127.0.0.1:{9}", "Content-Length: 0") + SMUGGLED,
}


@pytest.mark.parametrize("payload", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
async def test_ambiguous_requests_get_400_and_nothing_goes_up(
    gateway: Gateway, upstream: LenientUpstream, payload: bytes
) -> None:
    answers = await send_all(gateway.socket, payload)
    assert_only_allowed_requests_went_up(upstream)
    assert [answer.status for answer in answers] == [400]
    assert answers[0].headers["connection"] == "close" and answers[0].body.strip()
    assert upstream.connections == 0 and upstream.requests == []


async def test_a_head_past_64_kib_is_refused(gateway: Gateway, upstream: LenientUpstream) -> None:
    answers = await send_all(gateway.socket, head(*START, "X-Pad: " + "a" * 66_000))
    assert [answer.status for answer in answers] == [431]
    assert upstream.connections == 0
    answers = await send_all(
        gateway.socket,
        head(*START, "X-Pad: " + "a" * 64_000, f"Content-Length: {len(BODY)}") + BODY,
    )
    assert [answer.status for answer in answers] == [200]
    assert_only_allowed_requests_went_up(upstream)


WELL_FORMED = head(*START, f"Content-Length: {len(BODY)}") + BODY
WELL_FORMED_CHUNKED = (
    head(*START, "Transfer-Encoding: chunked") + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n"
)
FOLLOWERS = {
    "GET /v1/models": SMUGGLED,
    "POST /v1/files": head(
        "POST /v1/files HTTP/1.1", f"Host: {GATEWAY}", "Content-Length: 2", "Connection: close"
    )
    + b"{}",
    "POST /v1/messages/batches": head(
        "POST /v1/messages/batches HTTP/1.1", f"Host: {GATEWAY}", "Content-Length: 0"
    ),
    "absolute-form GET /v1/models": head(
        f"GET http://{GATEWAY}/v1/models HTTP/1.1", f"Host: {GATEWAY}"
    ),
    "a second allowed one, with the agent's key": WELL_FORMED,
}


@pytest.mark.parametrize("first", [WELL_FORMED, WELL_FORMED_CHUNKED], ids=["length", "chunked"])
@pytest.mark.parametrize("second", FOLLOWERS.values(), ids=FOLLOWERS.keys())
async def test_a_request_pipelined_after_a_good_one_is_never_relayed(
    gateway: Gateway, upstream: LenientUpstream, first: bytes, second: bytes
) -> None:
    answers = await send_all(gateway.socket, first + second)
    assert answers[0].status == 200
    assert json.loads(answers[0].body) == {"endpoint": "POST /v1/messages"}
    # A proxy may close after each answer or decide the next request on its own.
    assert all(answer.status in (200, 403) for answer in answers[1:])
    assert_only_allowed_requests_went_up(upstream)
    assert len(upstream.requests) == len(answers)
    assert upstream.requests[0].body == BODY


BAD_CHUNKS = {
    # h11 before 0.16 took any two bytes for a chunk's closing CRLF (GHSA-vqfr-h8mv-ghfj).
    "a chunk closed by other bytes": b"5\r\nhelloXX0\r\n\r\n",
    "a chunk size in hex with 0x": b"0x5\r\nhello\r\n0\r\n\r\n",
    "a chunk size line ended by a bare LF": b"5\nhello\r\n0\r\n\r\n",
    "a negative chunk size": b"-5\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("chunks", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
async def test_a_malformed_chunked_body_ends_the_request_and_nothing_follows_it(
    gateway: Gateway, upstream: LenientUpstream, chunks: bytes
) -> None:
    payload = head(*START, "Transfer-Encoding: chunked") + chunks + SMUGGLED
    answers = await send_all(gateway.socket, payload)
    assert [answer.status for answer in answers] == [400]
    # The head went up before the body was found wanting; the body never ended.
    assert_only_allowed_requests_went_up(upstream)
    assert [seen.endpoint for seen in upstream.requests] in ([], ["POST /v1/messages"])


async def test_a_second_request_on_a_kept_alive_connection_is_decided_on_its_own(
    gateway: Gateway, upstream: LenientUpstream
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(gateway.socket))
    answers = Answers(reader)
    try:
        writer.write(head(*START, f"Content-Length: {len(BODY)}", "Connection: keep-alive") + BODY)
        first = await answers.next()
        assert first is not None and first.status == 200
        with contextlib.suppress(ConnectionError):  # a proxy that closed is right too
            writer.write(SMUGGLED)
            await writer.drain()
            writer.write_eof()
        later = await answers.all()
    finally:
        writer.close()
    assert all(answer.status == 403 for answer in later)
    assert_only_allowed_requests_went_up(upstream)
    assert [seen.endpoint for seen in upstream.requests] == ["POST /v1/messages"]


async def test_the_agents_key_and_authorization_never_go_up(
    gateway: Gateway, upstream: LenientUpstream
) -> None:
    payload = (
        head(
            "POST /v1/messages/count_tokens?beta=true HTTP/1.1",
            f"Host: {GATEWAY}",
            f"X-API-Key: {AGENT_KEY}",
            f"Authorization: Bearer {AGENT_KEY}",
            "Connection: x-api-key, keep-alive",
            f"Content-Length: {len(BODY)}",
        )
        + BODY
    )
    [answer] = await send_all(gateway.socket, payload)
    assert answer.status == 200
    [seen] = upstream.requests
    assert seen.endpoint == "POST /v1/messages/count_tokens?beta=true"
    assert_only_allowed_requests_went_up(upstream)


async def test_a_chunked_body_goes_up_whole_with_its_length(
    gateway: Gateway, upstream: LenientUpstream
) -> None:
    payload = (
        head(*START, "Transfer-Encoding: chunked")
        + b"5;ext=1\r\n"
        + BODY[:5]
        + b"\r\n"
        + b"%x\r\n" % (len(BODY) - 5)
        + BODY[5:]
        + b"\r\n0\r\nX-Trailer: dropped\r\n\r\n"
    )
    [answer] = await send_all(gateway.socket, payload)
    assert answer.status == 200
    [seen] = upstream.requests
    # The gateway reads a model request's body whole before judging it.
    assert seen.body == BODY and seen.values("transfer-encoding") == []
    assert seen.values("content-length") == [str(len(BODY))]
    assert_only_allowed_requests_went_up(upstream)


async def test_a_model_stream_reaches_the_client_as_it_comes(
    gateway: Gateway, upstream: LenientUpstream
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(gateway.socket))
    try:
        writer.write(
            head(*START, "Accept: text/event-stream", f"Content-Length: {len(BODY)}") + BODY
        )
        await writer.drain()
        received = b""
        async with asyncio.timeout(10):
            while b"message_start" not in received:
                data = await reader.read(65536)
                assert data, "the proxy closed before the first event"
                received += data
        # The first event is through while the upstream still holds the stream open.
        assert upstream.streams_finished == 0
        upstream.release.set()
        answers = Answers(reader)
        answers.leftover = received
        answer = await answers.next()
        assert await answers.next() is None
    finally:
        writer.close()
    assert answer is not None and answer.status == 200
    assert answer.headers["content-type"] == "text/event-stream"
    assert answer.body == b"event: message_start\ndata: {}\n\nevent: message_stop\ndata: {}\n\n"
    await wait_until(lambda: upstream.streams_finished == 1, seconds=10)
    assert_only_allowed_requests_went_up(upstream)


async def test_endpoints_the_agent_may_not_call_get_403_and_are_reported(
    gateway: Gateway, upstream: LenientUpstream
) -> None:
    answers = await send_all(gateway.socket, SMUGGLED)
    assert [answer.status for answer in answers] == [403]
    assert answers[0].headers["x-deny-reason"] == "path_not_allowed"
    assert [d.reason for d in gateway.decisions] == ["path_not_allowed"]
    assert upstream.connections == 0


async def test_requests_to_an_allowed_host_go_one_at_a_time_and_without_the_key(
    upstream: LenientUpstream,
) -> None:
    """The same walls hold for absolute-form requests to a host the policy allows."""
    decisions: list[EgressDecision] = []
    policy = EgressPolicy((HostRule("127.0.0.1", upstream.port),))
    proxy = EgressProxy(policy, decisions.append, ModelGateway(upstream.base_url, REAL_KEY))
    origin = f"127.0.0.1:{upstream.port}"
    with tempfile.TemporaryDirectory(prefix="routined-test-") as folder:
        socket = Path(folder) / "egress.sock"
        await proxy.start(socket)
        try:
            answers = await send_all(
                socket,
                head(f"GET http://{origin}/first HTTP/1.1", "Host: elsewhere.example")
                + head(f"GET http://{origin}/pipelined HTTP/1.1", f"Host: {origin}"),
            )
            refused = await send_all(
                socket,
                f"GET http://{origin}/a HTTP/1.1\r\nHost: {origin}\n\n".encode()
                + head(f"GET http://{origin}/smuggled HTTP/1.1", f"Host: {origin}"),
            )
        finally:
            await proxy.close()
    assert answers[0].status == 200 and [a.status for a in answers[1:]] in ([], [200])
    assert [answer.status for answer in refused] == [400]
    assert [seen.endpoint for seen in upstream.requests] == [
        "GET /first",
        *(["GET /pipelined"] if len(answers) == 2 else []),
    ]
    for seen in upstream.requests:
        assert seen.values("host") == [origin] and seen.values("x-api-key") == []
