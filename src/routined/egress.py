"""The sandbox's only way out: one proxy per run, and the agent's model API gateway.

Each run gets its own proxy on a Unix socket that is mounted into its sandbox (a
bridge inside turns it into 127.0.0.1:3128). The sandbox has no other network,
so this is a wall, not a convention. It serves three kinds of request:

- Plain requests to itself (`POST /v1/messages`, or `http://127.0.0.1:3128/…`):
  the model API gateway. They go to the real model API with the real key added;
  the agent holds only a placeholder, so a key it never had cannot leak through
  its work. Only the endpoints Claude Code needs pass.
- `CONNECT host:port` tunnels (HTTPS) and absolute-form requests
  (`GET http://host/…`) to hosts the run's policy allows (its network level,
  `routined.network`).
- Anything else gets `403` with an `x-deny-reason` header and is reported.

A connection carries one request. h11, a maintained HTTP/1.1 parser, reads it;
the proxy decides on the parsed method, path and host, writes the request afresh
from its parsed form to a new upstream connection, reads the answer with h11 and
writes that afresh too, then closes: bytes sent after the request are never
read, let alone relayed. (Relaying the client's own bytes once let a bare LF end
a checked request early and carry the real key on a second one: issue 14.) What
h11 tolerates but another parser could read differently is refused with 400
before anything goes upstream. Bodies and answers stream through (model answers
are server-sent events). A tunnel carries raw bytes once `200 Connection
Established` is sent: TLS runs inside it, end to end.

Where a policy has a host's addresses judged (`EgressPolicy.judged`), the proxy
resolves it with `routined.reach` and connects to an address it judged, so DNS
cannot answer differently between the check and the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
# could read otherwise, looked for in the head as h11 delimited it.
_LOOSE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_FOLDED = re.compile(rb"\n[ \t]")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:([^\r]*)", re.IGNORECASE)
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
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


class EgressProxy:
    """One run's proxy. `on_decision` hears about every request it allows or refuses."""

    def __init__(
        self,
        policy: EgressPolicy,
        on_decision: Callable[[EgressDecision], None],
        gateway: ModelGateway | None = None,
    ) -> None:
        self.policy = policy
        self.gateway = gateway
        self._on_decision = on_decision
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, socket_path: Path) -> None:
        # The socket's folder is private to routined; the sandbox sees only the socket.
        self._server = await asyncio.start_unix_server(
            self._serve_connection, path=str(socket_path)
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= _MAX_CONNECTIONS:
            writer.close()  # the sandbox gets no more than this many at once
            return
        self._connections.add(task)
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
            self._connections.discard(task)
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
        """Forward a model API request to the real API, with the real key."""
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
        # The operator's own setting: reached wherever it is, by name.
        upstream = await _open(gateway.host, gateway.port, None, tls=gateway.tls)
        headers = _request_headers(request, gateway.authority, api_key=gateway.api_key)
        target = gateway.path_prefix + path
        await _exchange(client, reader, writer, upstream, request.method, target, headers)

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
    if _LOOSE_LINE_END.search(head):
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
        if _CONTROL.search(value):
            shown = name.decode("ascii")
            raise _Refused(400, f"header {shown} holds a control character; remove it")


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
        sending = asyncio.create_task(_send_body(client, reader, origin, upstream_writer, activity))
        answering = asyncio.create_task(
            _send_answer(origin, upstream_reader, client, writer, activity)
        )
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


async def _send_body(
    client: h11.Connection,
    reader: asyncio.StreamReader,
    origin: h11.Connection,
    upstream_writer: asyncio.StreamWriter,
    activity: _Activity,
) -> None:
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as error:
            raise _Refused(400, f"malformed request body: {error}") from None
        if event is h11.NEED_DATA:
            client.receive_data(await _receive(reader, activity))
            continue
        if isinstance(event, h11.Data):
            upstream_writer.write(origin.send(h11.Data(data=event.data)))
        elif isinstance(event, h11.EndOfMessage):
            # Trailers stay behind: nothing the agent calls needs them.
            upstream_writer.write(origin.send(h11.EndOfMessage()))
        else:  # the request is over before its body was
            raise _Refused(400, "the request ended before its body did")
        await upstream_writer.drain()
        if isinstance(event, h11.EndOfMessage):
            return


async def _send_answer(
    origin: h11.Connection,
    upstream_reader: asyncio.StreamReader,
    client: h11.Connection,
    writer: asyncio.StreamWriter,
    activity: _Activity,
) -> None:
    while True:
        try:
            event = origin.next_event()
            if event is h11.NEED_DATA:
                origin.receive_data(await _receive(upstream_reader, activity))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue  # 1xx belong to the hop they crossed (the proxy sends its own 100)
            if isinstance(event, h11.Response):
                out = client.send(
                    h11.Response(
                        status_code=event.status_code,
                        reason=event.reason,
                        headers=_answer_headers(event.headers.raw_items()),
                    )
                )
            elif isinstance(event, h11.Data):
                out = client.send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                out = client.send(h11.EndOfMessage())
            else:
                raise _Refused(502, "the upstream closed the connection without answering")
        except h11.ProtocolError as error:
            raise _Refused(502, f"the upstream's answer is malformed: {error}") from None
        writer.write(out)
        await writer.drain()
        if isinstance(event, h11.EndOfMessage):
            return


def _request_headers(
    request: h11.Request, authority: str, *, api_key: str | None = None
) -> list[tuple[bytes, bytes]]:
    """The headers to send upstream: `Host` names the host that was checked, whatever
    the client sent (a shared gateway must not route the request to a neighbour);
    hop-by-hop headers stay behind, and so do the client's credentials where routined
    supplies its own; the body's framing is the one h11 read, written afresh."""
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
    for name, value in request.headers:
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
