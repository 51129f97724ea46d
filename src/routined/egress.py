"""The sandbox's only way out: one proxy per run, and the agent's model API gateway.

Each run gets its own proxy on a Unix socket that is mounted into its sandbox (a
bridge inside turns it into 127.0.0.1:3128). The sandbox has no other network,
so this is a wall, not a convention. It serves three kinds of request:

- Plain requests to itself (`POST /v1/messages`): the model API gateway. They go
  to the real model API with the real key added; the agent holds only a
  placeholder, so a key it never had cannot leak through its work. Only the
  endpoints Claude Code needs pass.
- `CONNECT host:port` tunnels (HTTPS) and absolute-form requests
  (`GET http://host/…`) to hosts the run's policy allows (its network level,
  `routined.network`), each connection carrying requests for the one host
  that was checked.
- Anything else gets `403` with an `x-deny-reason` header and is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

_HEAD_LIMIT = 64 * 1024
_HEAD_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 15.0
# A tunnel that carries nothing for this long is closed; model streams that are
# thinking send pings well within it.
_IDLE_TIMEOUT = 600.0
_MAX_CONNECTIONS = 64
_HOP_BY_HOP = (b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive")
_CREDENTIALS = (b"x-api-key", b"authorization")
# What Claude Code asks of the model API; the key is good for more, the agent is not.
_GATEWAY_ENDPOINTS = re.compile(r"POST /v1/messages(/count_tokens)?(\?[^ ]*)?")
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
    """

    rules: tuple[HostRule, ...] = ()
    allow_all: bool = False
    trusted: tuple[HostRule, ...] = ()
    extra: tuple[HostRule, ...] = ()
    level: str = ""
    _index: _RuleIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _RuleIndex((*self.rules, *self.trusted, *self.extra)))

    def allows(self, host: str, port: int) -> bool:
        return self.allow_all or self.names(host, port)

    def names(self, host: str, port: int) -> bool:
        """Whether a rule (not `allow_all`) lets this host through."""
        return self._index.matches(host.lower().strip("[]"), port)

    def describe(self) -> str:
        """A short line for people, e.g. "none: only the model API" or "custom: 3 hosts +
        trusted"."""
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
            self._serve_connection, path=str(socket_path), limit=_HEAD_LIMIT
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
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            pass  # the client went away, stalled, or the run ended
        finally:
            self._connections.discard(task)
            writer.close()

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
        request_line, _, header_block = head.partition(b"\r\n")
        try:
            method, target, version = request_line.decode("latin-1").split(" ")
        except ValueError:
            await _answer(writer, 400, "malformed request line")
            return
        if target.startswith("/"):
            await self._gateway(reader, writer, method, target, version, header_block)
            return
        if method == "CONNECT":
            try:
                host, port = _split_host_port(target)
            except ValueError:
                port = None
            if port is None:
                await _answer(writer, 400, "CONNECT needs host:port")
                return
        else:
            try:
                parts = urlsplit(target)
                explicit_port = parts.port
            except ValueError:
                await _answer(writer, 400, "malformed URL")
                return
            if parts.scheme != "http" or not parts.hostname:
                await _answer(writer, 400, "send absolute http:// URLs or CONNECT to this proxy")
                return
            host, port = parts.hostname, explicit_port or 80
            if (host, port) in _GATEWAY_AUTHORITIES:
                path = parts._replace(scheme="", netloc="").geturl() or "/"
                await self._gateway(reader, writer, method, path, version, header_block)
                return
        allowed = self.policy.allows(host, port)
        address = host
        refusal = f"{host}:{port} is not on this run's network allowlist"
        if allowed and not self.policy.names(host, port):
            # Any host means any host out there, not this machine's own services
            # (routined's API, its database) or the cloud's metadata endpoint: the
            # name is resolved here and connected to by address, so it cannot
            # resolve somewhere else a moment later.
            resolved = await _public_address(host, port)
            if isinstance(resolved, ValueError):
                allowed = False
                refusal = (
                    f"{host}:{port} {resolved}, which network: full does not reach; "
                    "list it under network: custom to reach it"
                )
            elif resolved is None:
                await _answer(writer, 502, f"cannot resolve {host}")
                return
            else:
                address = resolved
        self._on_decision(EgressDecision(host, port, allowed, method))
        if not allowed:
            await _answer(writer, 403, refusal, deny_reason="host_not_allowed")
            return
        upstream = await _connect(writer, address, port, tls=False)
        if upstream is None:
            return
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
        else:
            path = urlsplit(target)._replace(scheme="", netloc="").geturl() or "/"
            upstream[1].write(
                f"{method} {path} {version}\r\n".encode("latin-1")
                + _forwarded_headers(header_block, _authority(host, port, 80))
            )
        await _relay(reader, writer, *upstream)

    async def _gateway(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        version: str,
        header_block: bytes,
    ) -> None:
        """Forward a model API request to the real API, with the real key."""
        gateway = self.gateway
        if gateway is None or not _GATEWAY_ENDPOINTS.fullmatch(f"{method} {path}"):
            self._on_decision(
                EgressDecision("model-gateway", 0, False, f"{method} {path}", "path_not_allowed")
            )
            await _answer(
                writer,
                403,
                f"{method} {path} is not an endpoint the agent may call",
                deny_reason="path_not_allowed",
            )
            return
        upstream = await _connect(writer, gateway.host, gateway.port, tls=gateway.tls)
        if upstream is None:
            return
        key = f"x-api-key: {gateway.api_key}".encode("latin-1")
        upstream[1].write(
            f"{method} {gateway.path_prefix}{path} {version}\r\n".encode("latin-1")
            + _forwarded_headers(header_block, gateway.authority, extra=key)
        )
        await _relay(reader, writer, *upstream)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


async def _public_address(host: str, port: int) -> str | ValueError | None:
    """An address of `host` on the network at large; a ValueError saying why when it is
    one of this machine's or its private network's, None when it does not resolve."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        return None
    addresses = [str(info[4][0]) for info in found]
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address in _NAT64:
            # Where a NAT64 gateway runs, this reaches the IPv4 address it embeds.
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if not address.is_global or address.is_multicast:
            return ValueError(f"resolves to {text}, an address of this machine or its network")
    return addresses[0] if addresses else None


async def _connect(
    writer: asyncio.StreamWriter, host: str, port: int, *, tls: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(
                host.strip("[]"),
                port,
                ssl=ssl.create_default_context() if tls else None,
                server_hostname=host.strip("[]") if tls else None,
            ),
            _CONNECT_TIMEOUT,
        )
    except (OSError, TimeoutError) as exc:
        await _answer(writer, 502, f"cannot reach {host}:{port}: {exc}")
        return None


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


def _forwarded_headers(header_block: bytes, authority: str, *, extra: bytes | None = None) -> bytes:
    # The Host header names the host that was checked, whatever the client sent:
    # a shared gateway must not route the request to a neighbour. One request per
    # upstream connection, for the same reason. Credentials the client sent are
    # dropped where routined supplies its own.
    dropped = (*_HOP_BY_HOP, b"host", *(_CREDENTIALS if extra else ()))
    kept = [
        line
        for line in header_block.split(b"\r\n")
        if line and line.split(b":", 1)[0].strip().lower() not in dropped
    ]
    host = f"Host: {authority}".encode("latin-1")
    return b"\r\n".join([host, *kept, *([extra] if extra else []), b"Connection: close", b"", b""])


class _Activity:
    """When a tunnel last carried data, in either direction."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self.last


async def _pump(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, activity: _Activity
) -> None:
    """Copy one direction until it ends, or until neither direction has moved for a while
    (a request sent, then a long answer streaming back, is not idle)."""
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(source.read(65536), _IDLE_TIMEOUT)
            except TimeoutError:
                if activity.idle_for() < _IDLE_TIMEOUT:
                    continue
                break
            if not chunk:
                break
            activity.last = time.monotonic()
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof():
                sink.write_eof()


async def _answer(
    writer: asyncio.StreamWriter, status: int, message: str, *, deny_reason: str | None = None
) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
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
