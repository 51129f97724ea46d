"""The sandbox's only way out: one proxy per run, and the agent's model API gateway.

Each run gets its own proxy on a Unix socket that is mounted into its sandbox (a
bridge inside turns it into 127.0.0.1:3128). The sandbox has no other network,
so this is a wall, not a convention. It serves three kinds of request:

- Plain requests to itself (`POST /v1/messages`, or `http://127.0.0.1:3128/…`):
  the model API gateway. They go to the real model API with the real key added;
  the agent holds only a placeholder, so a key it never had cannot leak through
  its work. Only the endpoints Claude Code needs pass, and only requests that
  ask Anthropic's servers to reach nothing on the agent's behalf (no server
  tools, no MCP servers, no content fetched by URL; web search and fetch under
  `network: full`): the gateway reads each body whole (up to 32 MiB) to decide.
- `CONNECT host:port` tunnels (HTTPS) and absolute-form requests
  (`GET http://host/…`) to hosts the run's policy allows (its network level,
  `routined.sandbox.network`).
- Anything else gets `403` with an `x-deny-reason` header and is reported.

A connection carries one request. h11, a maintained HTTP/1.1 parser, reads it;
the proxy decides on the parsed method, path and host, writes the request afresh
from its parsed form to a new upstream connection, reads the answer with h11 and
writes that afresh too, then closes: bytes sent after the request are never
read, let alone relayed. (Relaying the client's own bytes once let a bare LF end
a checked request early and carry the real key on a second one: issue 14.) What
h11 tolerates but another parser could read differently is refused with 400
before anything goes upstream. Bodies and answers stream through (model answers
are server-sent events), except a model request's body, which goes up once
judged, byte for byte as it came. A tunnel carries raw bytes once `200
Connection Established` is sent: TLS runs inside it, end to end.

The proxy runs in routined's process, outside the run's resource caps, so it
takes on a run's work at a pace (`Pace`): it accepts connections at a bounded
rate, at most 64 at once, and leaves the rest waiting in the kernel's backlog;
it inspects model requests' bodies within a budget of bytes a second. An agent
hammering its proxy spends its own time waiting, not routined's CPU.

Where a policy has a host's addresses judged (`EgressPolicy.judged`), the proxy
resolves it with `routined.reach` and connects to an address it judged, so DNS
cannot answer differently between the check and the connection.

Over 500 lines and still one concept: the proxy is one wall, and its parts (parsing,
the decision, re-framing each way, the pace) are safe only read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import h11

from routined import reach

_HEAD_LIMIT = 64 * 1024
_CHUNK = 64 * 1024
_HEAD_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 15.0
# A connection that carries nothing for this long is closed; model streams that
# are thinking send pings well within it.
_IDLE_TIMEOUT = 600.0
_MAX_CONNECTIONS = 64
# Connections a run's sandbox may have waiting to be accepted (the kernel caps it
# at net.core.somaxconn); the proxy accepts them at its pace.
_BACKLOG = 1024
# Anthropic's own limit for one request: Claude Code sends the whole conversation,
# images and documents included, in each.
_BODY_LIMIT = 32 * 1024 * 1024
_BODY_TIMEOUT = 30.0
# Parsing a body costs by its JSON values far more than by its bytes: a value is
# counted as this many bytes against the run's pace, and a body may hold at most
# _JSON_ITEMS_LIMIT of them (at least one comma or opening bracket comes before
# each). A long session of Claude Code's holds some 25 a KiB; the limit keeps any
# body's parse to a fraction of a second and tens of MiB.
_ITEM_COST = 512
_JSON_ITEMS_LIMIT = 256 * 1024
_HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)
_CREDENTIALS = frozenset((b"x-api-key", b"authorization"))
# What Claude Code asks of the model API; the key is good for more, the agent is not.
_GATEWAY_ENDPOINTS = re.compile(r"POST /v1/messages(/count_tokens)?(\?[^#]*)?")
# What h11 lets through (it is as lenient as a server may be) but another parser
# could read otherwise, looked for in the head as h11 delimited it. (Counted or
# searched with bytes methods: a 64 KiB head is checked in microseconds.)
_FOLDED = re.compile(rb"\n[ \t]")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:([^\r]*)", re.IGNORECASE)
_CONTROL = bytes((*range(0x09), *range(0x0A, 0x20), 0x7F))
# Server tools a run under `network: full` may have Anthropic run: they reach what
# the run could reach itself.
_WEB_TOOL = re.compile(r"(web_search|web_fetch)_\d{8}")
# Where a content block's data may come from: the request itself. A `url` source
# is fetched by Anthropic (allowed under `full`), a `file` is one of the account's
# uploads, which the agent has no business reading.
_INLINE_SOURCES = frozenset(("base64", "text", "content"))
# Inside the sandbox, the bridge serves this proxy at this port on loopback.
PROXY_PORT = 3128
_GATEWAY_AUTHORITIES = (("127.0.0.1", PROXY_PORT), ("localhost", PROXY_PORT))
_LONGEST_NAME = 253  # characters in a DNS name (RFC 1035)


@dataclass(frozen=True)
class HostRule:
    """`host`, `host:port` or `*.domain[:port]`; without a port, any port."""

    host: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> HostRule:
        host, port = _split_host_port(text.strip().lower())
        if not host:
            raise ValueError(f"{text!r} names no host")
        return cls(host, port)


@dataclass(frozen=True)
class EgressPolicy:
    """Which hosts a run may reach. The model gateway is not among them: it is the
    proxy itself, reachable whatever the policy.

    `rules` are the routine's own; `trusted` the shipped trusted list when the
    level includes it, and `extra` the hosts routined adds (its MCP servers).
    They are kept apart only so `describe` can say where the hosts came from.

    `public_only` (a routine applied with an account's key) holds every host the
    proxy connects to, whoever named it, to public addresses (`routined.reach`).
    Without it only the hosts `allow_all` alone lets through are held so (any host
    means any host out there), while a host a rule names is reached wherever it
    is. Either way the networks in `private_allowed` (the operator opened them)
    count as public.
    """

    rules: tuple[HostRule, ...] = ()
    allow_all: bool = False
    trusted: tuple[HostRule, ...] = ()
    extra: tuple[HostRule, ...] = ()
    level: str = ""
    public_only: bool = False
    private_allowed: tuple[reach.Network, ...] = ()
    _index: _RuleIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _RuleIndex((*self.rules, *self.trusted, *self.extra)))

    def allows(self, host: str, port: int) -> bool:
        return self.allow_all or self.names(host, port)

    def names(self, host: str, port: int) -> bool:
        """Whether a rule (not `allow_all`) lets this host through."""
        return self._index.matches(host.lower().strip("[]"), port)

    def judged(self, host: str, port: int) -> bool:
        """Whether an allowed host is reached only at addresses `routined.reach` accepts."""
        return self.public_only or not self.names(host, port)

    def describe(self) -> str:
        """A short line for people, e.g. "none: only the model API" or "custom: 3 hosts +
        trusted (public addresses only)"."""
        return self._described() + (" (public addresses only)" if self.public_only else "")

    def _described(self) -> str:
        if self.allow_all:
            return f"{self.level or 'full'}: any host"
        parts = []
        if self.rules:
            parts.append(_hosts(len(set(self.rules))))
        if self.trusted:
            parts.append("trusted" if parts else _hosts(len(set(self.trusted))))
        level = self.level or ("custom" if parts else "none")
        if not parts:
            parts.append("only the model API")
        if self.extra:
            parts.append(f"{len(set(self.extra))} added by routined")
        return f"{level}: {' + '.join(parts)}"


class _RuleIndex:
    """Host rules as sets, so a check costs a few lookups however long the list is
    (the trusted list is checked on every new connection)."""

    def __init__(self, rules: Iterable[HostRule]) -> None:
        hosts: set[str] = set()
        host_ports: set[tuple[str, int]] = set()
        domains: set[str] = set()
        domain_ports: set[tuple[str, int]] = set()
        for rule in rules:
            wildcard = rule.host.startswith("*.")
            name = rule.host[2:] if wildcard else rule.host
            if rule.port is None:
                (domains if wildcard else hosts).add(name)
            else:
                (domain_ports if wildcard else host_ports).add((name, rule.port))
        self._hosts = frozenset(hosts)
        self._host_ports = frozenset(host_ports)
        self._domains = frozenset(domains)
        self._domain_ports = frozenset(domain_ports)

    def matches(self, host: str, port: int) -> bool:
        """Whether a rule takes `host:port`: an exact host (with any port or its
        own), or a name under a `*.domain` (not the domain itself); a name longer than
        DNS allows matches no wildcard."""
        if host in self._hosts or (host, port) in self._host_ports:
            return True
        # Walking the parents of a name of thousands of labels (a request head may
        # hold 64 KiB) would hold up every other connection; no real host has one.
        if not (self._domains or self._domain_ports) or len(host) > _LONGEST_NAME:
            return False
        # `*.example.com` matches a host when one of its parents is example.com:
        # look each parent up, shortest prefix first. The host itself is not a
        # parent, so the wildcard never matches example.com alone.
        dot = host.find(".")
        while dot != -1:
            parent = host[dot + 1 :]
            if parent in self._domains or (parent, port) in self._domain_ports:
                return True
            dot = host.find(".", dot + 1)
        return False


def _hosts(count: int) -> str:
    return f"{count} host" if count == 1 else f"{count} hosts"


@dataclass(frozen=True)
class ModelGateway:
    """Where the agent's model requests really go, and the key they carry there."""

    base_url: str
    api_key: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"ANTHROPIC_BASE_URL {self.base_url!r} is not an http(s) URL")

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.base_url).scheme == "https"

    @property
    def authority(self) -> str:
        return _authority(self.host, self.port, 443 if self.tls else 80)

    @property
    def path_prefix(self) -> str:
        return urlsplit(self.base_url).path.rstrip("/")


@dataclass(frozen=True)
class EgressDecision:
    host: str
    port: int
    allowed: bool
    method: str
    reason: str = "host_not_allowed"
    # Why `routined.reach` refused the host, e.g. "127.0.0.1 is a loopback address
    # (this machine)"; empty for other decisions.
    detail: str = ""


class _Refused(Exception):
    """The proxy answers this instead of forwarding; nothing has gone upstream."""

    def __init__(self, status: int, message: str, deny_reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.deny_reason = deny_reason


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Clock(Protocol):
    """Where the proxy's pace reads the time and waits; tests pass a fake one."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Pace:
    """How much of a run's work its proxy takes on. The proxy runs in routined's
    process, outside the run's caps: past its pace a run's requests wait (in the
    kernel's backlog, or before their body is inspected), costing routined nothing.

    Claude Code opens a connection per model request, and package managers a few
    dozen at a time: real work stays far from the rates. An agent that does nothing
    but hammer its proxy (64 KiB heads, answered in about a millisecond each) costs
    routined about a tenth of a core, however many cores the agent itself has."""

    connections_per_second: float = 100.0
    connection_burst: int = 200
    # Bytes of model request bodies inspected, each JSON value counted as _ITEM_COST.
    inspection_per_second: float = 16 * 1024 * 1024
    inspection_burst: float = 64 * 1024 * 1024
    # Bytes of model request bodies held at once (read, not yet sent on).
    bodies_held: int = 2 * _BODY_LIMIT


class _TokenBucket:
    """`rate` tokens a second, up to `burst` kept; `take` waits on the clock, never
    spinning, until there are enough, and takers are served in turn."""

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock.now()
        self._turn = asyncio.Lock()

    async def take(self, amount: float = 1.0) -> None:
        amount = min(amount, self._burst)  # what costs more than a full bucket waits for one
        async with self._turn:
            while True:
                now = self._clock.now()
                self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
                self._at = now
                if self._tokens >= amount:
                    self._tokens -= amount
                    return
                await self._clock.sleep((amount - self._tokens) / self._rate)


class _Allowance:
    """Bytes a run's gateway may hold at once; a body waits for its share before
    it is read, so memory is bounded however many connections carry one."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._free = limit
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def holding(self, amount: int) -> AsyncIterator[None]:
        amount = min(amount, self._limit)  # what needs more than all waits for all
        async with self._changed:
            await self._changed.wait_for(lambda: self._free >= amount)
            self._free -= amount
        try:
            yield
        finally:
            self._free += amount
            async with self._changed:
                self._changed.notify_all()


DEFAULT_PACE = Pace()


class EgressProxy:
    """One run's proxy. `on_decision` hears about every request it allows or refuses;
    `accepted` counts the connections it has taken on."""

    def __init__(
        self,
        policy: EgressPolicy,
        on_decision: Callable[[EgressDecision], None],
        gateway: ModelGateway | None = None,
        *,
        pace: Pace = DEFAULT_PACE,
        clock: Clock | None = None,
    ) -> None:
        self.policy = policy
        self.gateway = gateway
        self.accepted = 0
        self._on_decision = on_decision
        clock = clock or MonotonicClock()
        self._accepts = _TokenBucket(pace.connections_per_second, pace.connection_burst, clock)
        self._inspections = _TokenBucket(pace.inspection_per_second, pace.inspection_burst, clock)
        self._held = _Allowance(pace.bodies_held)
        self._slots = asyncio.Semaphore(_MAX_CONNECTIONS)
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, socket_path: Path) -> None:
        # The socket's folder is private to routined; the sandbox sees only the socket.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.setblocking(False)
            listener.bind(str(socket_path))
            listener.listen(_BACKLOG)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept(listener))

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def _accept(self, listener: socket.socket) -> None:
        """Take connections at the run's pace, at most _MAX_CONNECTIONS at once. Past
        either, the proxy does not accept: the sandbox's clients wait in the kernel's
        backlog, where they cost routined nothing."""
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                await self._accepts.take()
                connection, _ = await loop.sock_accept(listener)
            except OSError:  # out of descriptors, say: the next try waits its turn too
                self._slots.release()
                continue
            except BaseException:
                self._slots.release()
                raise
            self.accepted += 1
            task = asyncio.create_task(self._serve_connection(connection))
            self._connections.add(task)
            task.add_done_callback(self._served)

    def _served(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        self._slots.release()

    async def _serve_connection(self, connection: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(sock=connection)
        except BaseException as error:
            connection.close()
            if isinstance(error, OSError):
                return  # the client left before it was served
            raise
        try:
            await self._proxy(reader, writer)
        except (
            ConnectionError,
            TimeoutError,
            ssl.SSLError,
            h11.ProtocolError,
            asyncio.CancelledError,
        ):
            pass  # the client went away, stalled, or the run ended
        finally:
            writer.close()

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = h11.Connection(h11.SERVER, max_incomplete_event_size=_HEAD_LIMIT)
        try:
            request = await asyncio.wait_for(_read_request(reader, client), _HEAD_TIMEOUT)
            if request is not None:
                await self._handle(request, client, reader, writer)
        except _Refused as refused:
            if client.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # no answer has begun
                await _answer(writer, refused.status, refused.message, refused.deny_reason)

    async def _handle(
        self,
        request: h11.Request,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Decide one parsed request and carry it out; _Refused says what to answer."""
        # h11 takes only visible ASCII in a method and target.
        method, target = request.method.decode("ascii"), request.target.decode("ascii")
        if target.startswith("/"):
            await self._gateway(request, client, reader, writer, target)
            return
        if method == "CONNECT":
            try:
                host, port = _split_host_port(target)
            except ValueError:
                port = None
            if port is None:
                raise _Refused(400, "CONNECT needs host:port")
            await self._tunnel(request, client, reader, writer, host, port)
            return
        try:
            parts = urlsplit(target)
            host, port = parts.hostname or "", parts.port or 80
        except ValueError:
            raise _Refused(400, "malformed URL") from None
        if parts.scheme != "http" or not host:
            raise _Refused(400, "send absolute http:// URLs or CONNECT to this proxy")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if (host, port) in _GATEWAY_AUTHORITIES:
            await self._gateway(request, client, reader, writer, path)
            return
        addresses = await self._judge(method, host, port)
        upstream = await _open(host, port, addresses)
        headers = _request_headers(request, _authority(host, port, 80))
        await _exchange(client, reader, writer, upstream, request.method, path, headers)

    async def _gateway(
        self,
        request: h11.Request,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str,
    ) -> None:
        """Forward a model API request to the real API, with the real key, once its
        body is read and found to ask Anthropic to reach nothing for the agent.

        1. The endpoint must be one Claude Code calls.
        2. The body is read whole, within the run's allowance of bytes held.
        3. It is inspected (`_inspect`) at the run's pace.
        4. It goes up byte for byte as it came, with its length; the answer streams
           back once the body is sent and no longer held.
        """
        method = request.method.decode("ascii")
        gateway = self.gateway
        if gateway is None or not _GATEWAY_ENDPOINTS.fullmatch(f"{method} {path}"):
            self._on_decision(
                EgressDecision("model-gateway", 0, False, f"{method} {path}", "path_not_allowed")
            )
            raise _Refused(
                403,
                f"{method} {path} is not an endpoint the agent may call",
                "path_not_allowed",
            )
        if any(
            name == b"content-encoding" and value.strip().lower() != b"identity"
            for name, value in request.headers
        ):
            raise _Refused(415, "Content-Encoding: the gateway reads the body; send it as is")
        declared = _declared_length(request)
        async with self._held.holding(_BODY_LIMIT if declared is None else declared):
            body = await asyncio.wait_for(_read_body(client, reader, writer), _BODY_TIMEOUT)
            await self._inspect(body, f"{method} {path}")
            # The operator's own setting: reached wherever it is, by name.
            upstream_reader, upstream_writer = await _open(
                gateway.host, gateway.port, None, tls=gateway.tls
            )
            try:
                origin = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_LIMIT)
                headers = _request_headers(
                    request, gateway.authority, api_key=gateway.api_key, length=len(body)
                )
                target = gateway.path_prefix + path
                try:
                    sent = origin.send(
                        h11.Request(method=request.method, target=target, headers=headers)
                    )
                except h11.LocalProtocolError as error:
                    raise _Refused(400, f"malformed request: {error}") from None
                upstream_writer.write(sent)
                # Passed through as it is, not joined into a copy.
                for data in origin.send_with_data_passthrough(h11.Data(data=body)) or ():
                    upstream_writer.write(data)
                upstream_writer.write(origin.send(h11.EndOfMessage()))
                del body
                await upstream_writer.drain()  # then the allowance it held goes to the next
            except BaseException:
                upstream_writer.close()
                raise
        try:
            far = _Side(origin, upstream_reader, upstream_writer)
            await _send_answer(far, _Side(client, reader, writer), _Activity())
        finally:
            upstream_writer.close()

    async def _inspect(self, body: bytes, what: str) -> None:
        """Refuse a model request that asks Anthropic's servers to reach out for the
        agent (`_reach_out`), reported as `request_not_allowed`; what is not a JSON
        object Anthropic would read as this proxy does is refused with 400."""
        items = body.count(b",") + body.count(b"[") + body.count(b"{")
        if items > _JSON_ITEMS_LIMIT:
            raise _Refused(
                413, f"the request body holds over {_JSON_ITEMS_LIMIT} JSON values; send fewer"
            )
        await self._inspections.take(len(body) + items * _ITEM_COST)
        reaching = _reach_out(_request_json(body), web=self.policy.allow_all)
        if reaching is None:
            return
        self._on_decision(
            EgressDecision("model-gateway", 0, False, what, "request_not_allowed", reaching)
        )
        level = self.policy.level or ("full" if self.policy.allow_all else "none")
        raise _Refused(
            403,
            f"{reaching} would have Anthropic's servers reach out for the agent, which "
            f"network: {level} does not allow; the model gateway passes tools the agent runs "
            "itself (and, under network: full, web search and web fetch)",
            "request_not_allowed",
        )

    async def _tunnel(
        self,
        request: h11.Request,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        port: int,
    ) -> None:
        if any(name in (b"content-length", b"transfer-encoding") for name, _ in request.headers):
            raise _Refused(400, "CONNECT carries no body; send the tunnel's bytes after the 200")
        addresses = await self._judge("CONNECT", host, port)
        upstream_reader, upstream_writer = await _open(host, port, addresses)
        try:
            # h11 sees the request end (CONNECT has no body, so no data is awaited)
            # and pauses for the answer that switches the connection to raw bytes.
            while (event := client.next_event()) is not h11.PAUSED:
                assert isinstance(event, h11.EndOfMessage), event
            writer.write(
                client.send(
                    h11.Response(status_code=200, reason=b"Connection Established", headers=[])
                )
            )
            await writer.drain()
            # What the client sent before hearing the 200 (a TLS hello, eagerly).
            early, _ = client.trailing_data
            upstream_writer.write(early)
        except BaseException:
            upstream_writer.close()
            raise
        await _relay(reader, writer, upstream_reader, upstream_writer)

    async def _judge(self, method: str, host: str, port: int) -> list[str] | None:
        """Whether `host:port` may be reached: the addresses to connect to when they
        were judged, None to connect by name; _Refused (reported) when it may not."""
        policy = self.policy
        host = host.lower()
        if not policy.allows(host, port):
            self._on_decision(EgressDecision(host, port, False, method))
            raise _Refused(
                403, f"{host}:{port} is not on this run's network allowlist", "host_not_allowed"
            )
        if not policy.judged(host, port):
            self._on_decision(EgressDecision(host, port, True, method))
            return None
        try:
            addresses = await reach.resolve(host, port, policy.private_allowed)
        except reach.Unreachable as unreachable:
            why = str(unreachable)
            self._on_decision(EgressDecision(host, port, False, method, detail=why))
            if policy.public_only:
                remedy = (
                    "routines applied with an account's key reach public addresses only; "
                    "the operator may open a private network with ROUTINED_ALLOW_PRIVATE_NETWORKS"
                )
            else:
                remedy = (
                    f"which network: {policy.level or 'full'} does not reach; "
                    "list it under network: custom to reach it"
                )
            raise _Refused(403, f"{host}:{port}: {why}, {remedy}", "host_not_allowed") from None
        self._on_decision(EgressDecision(host, port, True, method))
        return addresses


async def _read_request(reader: asyncio.StreamReader, client: h11.Connection) -> h11.Request | None:
    """The client's request head, parsed by h11 and refused (_Refused, 400) where it is
    ambiguous; None when the client left without asking anything."""
    too_long = _Refused(431, f"the request head is over {_HEAD_LIMIT // 1024} KiB")
    received = bytearray()
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as error:
            if error.error_status_hint == 431:
                raise too_long from None
            raise _Refused(400, f"malformed request: {error}") from None
        if event is h11.NEED_DATA:
            data = await reader.read(_CHUNK)
            received += data
            client.receive_data(data)  # b"" tells h11 the client is done
        elif isinstance(event, h11.Request):
            unread, _ = client.trailing_data
            head = bytes(received[: len(received) - len(unread)])
            if len(head) > _HEAD_LIMIT:  # h11 checks only between reads
                raise too_long
            _refuse_ambiguity(head, event)
            return event
        else:
            return None


def _refuse_ambiguity(head: bytes, request: h11.Request) -> None:
    """Refuse what h11 parsed one way but another parser could read otherwise: `head`
    is the request head exactly as h11 delimited it."""
    # Every CR and every LF is part of a CRLF exactly when there are as many of each.
    line_ends = head.count(b"\r\n")
    if head.count(b"\r") != line_ends or head.count(b"\n") != line_ends:
        raise _Refused(400, "a line ends in a bare LF or CR; end every line with CRLF")
    if _FOLDED.search(head):
        raise _Refused(
            400, "a header line starts with whitespace (obs-fold); write each on one line"
        )
    if request.http_version not in (b"1.0", b"1.1"):
        version = request.http_version.decode("ascii")
        raise _Refused(400, f"HTTP/{version} is not spoken here; use HTTP/1.1")
    names = {name for name, _ in request.headers}
    if {b"content-length", b"transfer-encoding"} <= names:
        raise _Refused(400, "Content-Length and Transfer-Encoding together; send only one")
    # h11 merges repeated equal lengths and takes `5, 5` as 5.
    lengths = _CONTENT_LENGTH.findall(head)
    if len(lengths) > 1 or any(not length.strip(b" \t").isdigit() for length in lengths):
        raise _Refused(400, "Content-Length must come once, as one number")
    for name, value in request.headers:
        if len(value.translate(None, _CONTROL)) != len(value):
            shown = name.decode("ascii")
            raise _Refused(400, f"header {shown} holds a control character; remove it")


def _declared_length(request: h11.Request) -> int | None:
    """The body's length as the head declares it; None when it comes in chunks.
    Refused (413) past what the gateway reads."""
    length = 0  # a request with neither header has no body
    for name, value in request.headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value)
    if length > _BODY_LIMIT:
        raise _Refused(413, f"the request body is over {_BODY_LIMIT // 2**20} MiB")
    return length


async def _read_body(
    client: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bytes:
    """The whole body of the request `client` has read the head of; refused (413) past
    _BODY_LIMIT, whatever its framing said."""
    if client.they_are_waiting_for_100_continue:
        writer.write(client.send(h11.InformationalResponse(status_code=100, headers=[])))
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as error:
            raise _Refused(400, f"malformed request body: {error}") from None
        if event is h11.NEED_DATA:
            client.receive_data(await reader.read(_CHUNK))  # b"" tells h11 the client is done
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
            size += len(event.data)
            if size > _BODY_LIMIT:
                raise _Refused(413, f"the request body is over {_BODY_LIMIT // 2**20} MiB")
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise _Refused(400, "the request ended before its body did")


def _request_json(body: bytes | bytearray) -> dict[str, Any]:
    """A model request's body as the JSON object it must be, read strictly: as UTF-8,
    each key once, no NaN, so that no reading of it differs from this one."""
    try:
        parsed = json.loads(
            body.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
    except UnicodeDecodeError:
        raise _Refused(400, "the request body is not UTF-8; send JSON in UTF-8") from None
    except RecursionError:
        raise _Refused(400, "the request body nests too deeply; flatten it") from None
    except ValueError as error:  # json.JSONDecodeError among them
        raise _Refused(400, f"the request body is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise _Refused(400, "the request body must be a JSON object")
    return parsed


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                # Parsers disagree on which one counts: one could hide a tool from the other.
                raise ValueError(f"key {key!r} appears twice; send each key once")
            seen.add(key)
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; send numbers")


def _reach_out(request: dict[str, Any], *, web: bool) -> str | None:
    """What in a Messages request would have Anthropic's servers connect somewhere on
    the agent's behalf, or None. Anthropic runs server tools (web search and fetch,
    code execution, its MCP connector, …) itself, from its own network, so they
    would carry the agent past its network level: `mcp_servers` never passes (the
    routine's connectors are routined's to set up), and of typed tools only web
    search and fetch do, when `web` (network: full) lets the run reach any host
    anyway. A tool without a `type`, or of type `custom`, is one the client runs:
    all Claude Code sends in its own requests (its WebSearch tool asks for
    `web_search_*` in a request of its own). A content block's source must be the
    request's own bytes, or a URL under `web`."""
    if "mcp_servers" in request:
        return "mcp_servers"
    tools = request.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _Refused(400, "tools must be a list of tool definitions")
        for tool in tools:
            if not isinstance(tool, dict):
                raise _Refused(400, "each of tools must be a JSON object")
            kind = tool.get("type", "custom")
            if kind == "custom" or (web and isinstance(kind, str) and _WEB_TOOL.fullmatch(kind)):
                continue
            return f"a tool of type {kind!r}"
    for block in _content_blocks(request):
        source = block.get("source")
        if isinstance(source, dict):
            kind = source.get("type")
            if kind in _INLINE_SOURCES or (web and kind == "url"):
                continue
            return f"a content block with a source of type {kind!r}"
    return None


def _content_blocks(request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The content blocks of a request's system prompt and messages, and those nested
    in them (a tool result's, a document's); walked with a list, not recursion."""
    pending: list[Any] = [request.get("system")]
    messages = request.get("messages")
    if isinstance(messages, list):
        pending += [message.get("content") for message in messages if isinstance(message, dict)]
    while pending:
        content = pending.pop()
        if not isinstance(content, list):
            continue
        for block in content:
            if isinstance(block, dict):
                yield block
                pending.append(block.get("content"))
                source = block.get("source")
                if isinstance(source, dict):
                    pending.append(source.get("content"))


async def _open(
    host: str, port: int, addresses: Sequence[str] | None, *, tls: bool = False
) -> Streams:
    """A connection to `host:port`, at one of `addresses` (judged) or by name."""
    failure: OSError | None = None
    for address in addresses or [host.strip("[]")]:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    address,
                    port,
                    ssl=ssl.create_default_context() if tls else None,
                    server_hostname=host.strip("[]") if tls else None,
                ),
                _CONNECT_TIMEOUT,
            )
        except OSError as error:  # TimeoutError and ssl.SSLError among them
            failure = error
    raise _Refused(502, f"cannot reach {host}:{port}: {failure or 'no address'}")


async def _exchange(
    client: h11.Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: Streams,
    method: bytes,
    target: str,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Send the request h11 parsed to `upstream`, written afresh, and its answer back.

    1. h11 (client role) writes the request head; if the client waits for `100
       Continue`, the proxy gives it, since the `Expect` stays behind.
    2. The body streams up while the answer streams down, each re-framed by h11;
       an upstream may answer before it has read the whole body.
    3. A malformed body stops both (the client gets 400 when no answer began).
    """
    upstream_reader, upstream_writer = upstream
    origin = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_LIMIT)
    try:
        try:
            head = origin.send(h11.Request(method=method, target=target, headers=headers))
        except h11.LocalProtocolError as error:
            raise _Refused(400, f"malformed request: {error}") from None
        upstream_writer.write(head)
        if client.they_are_waiting_for_100_continue:
            writer.write(client.send(h11.InformationalResponse(status_code=100, headers=[])))
        activity = _Activity()
        near = _Side(client, reader, writer)
        far = _Side(origin, upstream_reader, upstream_writer)
        sending = asyncio.create_task(_send_body(near, far, activity))
        answering = asyncio.create_task(_send_answer(far, near, activity))
        try:
            await asyncio.wait((sending, answering), return_when=asyncio.FIRST_COMPLETED)
            if sending.done() and isinstance(sending.exception(), _Refused):
                sending.result()  # the client's fault: no point waiting for an answer
            await answering
        finally:
            for task in (sending, answering):
                task.cancel()
            await asyncio.gather(sending, answering, return_exceptions=True)
    finally:
        upstream_writer.close()


async def _send_body(client: _Side, upstream: _Side, activity: _Activity) -> None:
    def forward(event: object) -> _Outgoing:
        # Trailers stay behind: nothing the agent calls needs them.
        if (out := _reframed(event)) is None:  # the request is over before its body was
            raise _Refused(400, "the request ended before its body did")
        return out

    try:
        await _carry(client, upstream, activity, forward)
    except h11.RemoteProtocolError as error:
        raise _Refused(400, f"malformed request body: {error}") from None


async def _send_answer(upstream: _Side, client: _Side, activity: _Activity) -> None:
    def forward(event: object) -> _Outgoing | None:
        if isinstance(event, h11.InformationalResponse):
            return None  # 1xx belong to the hop they crossed (the proxy sends its own 100)
        if isinstance(event, h11.Response):
            return h11.Response(
                status_code=event.status_code,
                reason=event.reason,
                headers=_answer_headers(event.headers.raw_items()),
            )
        if (out := _reframed(event)) is None:
            raise _Refused(502, "the upstream closed the connection without answering")
        return out

    try:
        await _carry(upstream, client, activity, forward)
    except h11.ProtocolError as error:
        raise _Refused(502, f"the upstream's answer is malformed: {error}") from None


# What `_carry` writes: the events of a message (a request's head is written before).
_Outgoing = h11.Response | h11.Data | h11.EndOfMessage


@dataclass(frozen=True)
class _Side:
    """One connection of an exchange: its streams, and h11's state of the HTTP on it."""

    http: h11.Connection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def _carry(
    source: _Side, sink: _Side, activity: _Activity, forward: Callable[[object], _Outgoing | None]
) -> None:
    """Carry one message from `source` to `sink`, each event written afresh as
    `forward` makes it (None: it stays behind), until the message ends."""
    while True:
        event = source.http.next_event()
        if event is h11.NEED_DATA:
            source.http.receive_data(await _receive(source.reader, activity))
            continue
        out = forward(event)
        if out is None:
            continue
        sink.writer.write(sink.http.send(out))
        await sink.writer.drain()
        if isinstance(event, h11.EndOfMessage):
            return


def _reframed(event: object) -> h11.Data | h11.EndOfMessage | None:
    """A message's data or end, made afresh for the other side; None for anything else."""
    if isinstance(event, h11.Data):
        return h11.Data(data=event.data)
    if isinstance(event, h11.EndOfMessage):
        return h11.EndOfMessage()
    return None


def _request_headers(
    request: h11.Request,
    authority: str,
    *,
    api_key: str | None = None,
    length: int | None = None,
) -> list[tuple[bytes, bytes]]:
    """The headers to send upstream: `Host` names the host that was checked, whatever
    the client sent (a shared gateway must not route the request to a neighbour);
    hop-by-hop headers stay behind, and so do the client's credentials where routined
    supplies its own; the body's framing is the one h11 read, written afresh, or its
    `length` when the proxy read it whole."""
    raw = request.headers.raw_items()
    dropped = {
        *_HOP_BY_HOP,
        *_connection_options(raw),
        b"host",
        b"content-length",
        b"expect",
        *(_CREDENTIALS if api_key is not None else ()),
    }
    headers = [(b"Host", authority.encode("ascii"))]
    headers += [(name, value) for name, value in raw if name.lower() not in dropped]
    if length is not None:
        headers.append((b"Content-Length", str(length).encode("ascii")))
    for name, value in request.headers if length is None else ():
        if name == b"transfer-encoding":
            headers.append((b"Transfer-Encoding", b"chunked"))  # the only one h11 takes
        elif name == b"content-length":
            headers.append((b"Content-Length", str(int(value)).encode("ascii")))
    if api_key is not None:
        headers.append((b"x-api-key", api_key.encode("latin-1")))
    # One request per upstream connection: nothing else can ride on it.
    headers.append((b"Connection", b"close"))
    return headers


def _answer_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The answer's headers less hop-by-hop ones; h11 frames the body for the client."""
    dropped = {*_HOP_BY_HOP, *_connection_options(headers)}
    if any(name.lower() == b"transfer-encoding" for name, _ in headers):
        dropped.add(b"content-length")  # h11 read the chunks, not the length
    kept = [(name, value) for name, value in headers if name.lower() not in dropped]
    return [*kept, (b"Connection", b"close")]


def _connection_options(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """The headers `Connection` names as this hop's own (RFC 9110 7.6.1)."""
    return {
        option.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for option in value.split(b",")
    }


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    activity = _Activity()
    try:
        await asyncio.gather(
            _pump(reader, upstream_writer, activity), _pump(upstream_reader, writer, activity)
        )
    finally:
        upstream_writer.close()


class _Activity:
    """When a connection last carried data, in either direction."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self.last


async def _receive(source: asyncio.StreamReader, activity: _Activity) -> bytes:
    """What `source` has (b"" at its end), or TimeoutError once neither direction has
    moved for a while (a request sent, then a long answer streaming back, is not idle)."""
    while True:
        try:
            chunk = await asyncio.wait_for(source.read(_CHUNK), _IDLE_TIMEOUT)
        except TimeoutError:
            if activity.idle_for() < _IDLE_TIMEOUT:
                continue
            raise
        activity.last = time.monotonic()
        return chunk


async def _pump(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, activity: _Activity
) -> None:
    """Copy one direction of a tunnel until it ends or the tunnel idles."""
    try:
        while chunk := await _receive(source, activity):
            sink.write(chunk)
            await sink.drain()
    except OSError:  # ConnectionError and TimeoutError among them
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof():
                sink.write_eof()


async def _answer(
    writer: asyncio.StreamWriter, status: int, message: str, deny_reason: str | None = None
) -> None:
    reason = {
        400: "Bad Request",
        403: "Forbidden",
        413: "Content Too Large",
        415: "Unsupported Media Type",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
    }[status]
    body = (message + "\n").encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if deny_reason:
        lines.append(f"x-deny-reason: {deny_reason}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()


def _authority(host: str, port: int, default_port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default_port else f"{shown}:{port}"


def _split_host_port(authority: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    else:
        host, port_text = authority, ""
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{authority!r} has a bad port")
    return host, int(port_text)
