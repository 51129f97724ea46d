"""The egress proxy: allowlist rules and both proxy forms, over its Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from routined.sandbox import network
from routined.sandbox.egress import (
    EgressDecision,
    EgressPolicy,
    EgressProxy,
    HostRule,
    ModelGateway,
)
from routined.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("rule", "host", "port", "allowed"),
    [
        ("api.anthropic.com:443", "api.anthropic.com", 443, True),
        ("api.anthropic.com:443", "api.anthropic.com", 80, False),
        ("api.anthropic.com:443", "evil.com", 443, False),
        ("API.Anthropic.com", "api.anthropic.com", 8443, True),
        ("*.example.com", "a.example.com", 443, True),
        ("*.example.com", "a.b.example.com", 443, True),
        ("*.example.com", "example.com", 443, False),
        ("*.example.com", "badexample.com", 443, False),
        ("127.0.0.1:8080", "127.0.0.1", 8080, True),
        ("[::1]:8080", "::1", 8080, True),
    ],
)
def test_host_rules(rule: str, host: str, port: int, allowed: bool) -> None:
    assert EgressPolicy((HostRule.parse(rule),)).allows(host, port) is allowed


def test_an_empty_policy_allows_nothing() -> None:
    assert not EgressPolicy().allows("api.anthropic.com", 443)


@pytest.mark.parametrize(
    ("host", "port"), [("example.com", 443), ("127.0.0.1", 5432), ("::1", 22), ("", 1)]
)
def test_allow_all_allows_any_host(host: str, port: int) -> None:
    assert EgressPolicy(allow_all=True).allows(host, port)
    assert not EgressPolicy().allows(host, port)


_INDEXED_RULES = (
    *network.policy("trusted").trusted,
    *map(
        HostRule.parse,
        ["*.example.com:8443", "example.com:80", "127.0.0.2:8080", "[::1]:9000", "*.internal"],
    ),
)
_PROBES = [
    "pypi.org", "PyPI.ORG", "x.pypi.org", "files.pythonhosted.org", "githubusercontent.com",
    "raw.githubusercontent.com", "a.b.githubusercontent.com", "githubusercontent.com.evil.com",
    "evilgithubusercontent.com", ".githubusercontent.com", "a..githubusercontent.com",
    "example.com", "a.example.com", "a.b.example.com", "badexample.com", "internal",
    "db.internal", "127.0.0.2", "127.0.0.3", "[::1]", "::1", "", ".", "com",
    "us-docker.pkg.dev", "pkg.dev",
]  # fmt: skip


def matches(rule: HostRule, host: str, port: int) -> bool:
    """What one rule says, read plainly: the reference the policy's index must agree with."""
    if rule.port is not None and rule.port != port:
        return False
    if rule.host.startswith("*."):
        return host.endswith(rule.host[1:]) and host != rule.host[2:]
    return host == rule.host


def test_the_policy_answers_as_its_rules_do() -> None:
    """The policy looks hosts up in sets; each answer is the rules' own."""
    policy = EgressPolicy(_INDEXED_RULES)
    answers = set()
    for host in _PROBES:
        for port in (80, 443, 8080, 8443, 9000):
            expected = any(matches(rule, host.lower().strip("[]"), port) for rule in _INDEXED_RULES)
            assert policy.allows(host, port) is expected, (host, port)
            answers.add(expected)
    assert answers == {True, False}


def test_names_longer_than_dns_allows_match_no_wildcard() -> None:
    policy = EgressPolicy((HostRule.parse("*.example.com"), HostRule.parse("*.a.a")))
    assert policy.allows("a" * 240 + ".example.com", 443)  # 252 characters
    assert not policy.allows("a" * 242 + ".example.com", 443)  # 254
    assert not policy.allows("a." * 30_000 + "a", 443)


@pytest.mark.parametrize(
    ("policy", "described"),
    [
        (EgressPolicy(), "none: only the model API"),
        (EgressPolicy(allow_all=True), "full: any host"),
        (EgressPolicy((HostRule("a.com"), HostRule("a.com"))), "custom: 1 host"),
        (
            EgressPolicy((HostRule("a.com"),), trusted=(HostRule("b.com"),), level="custom"),
            "custom: 1 host + trusted",
        ),
        (
            EgressPolicy(trusted=(HostRule("b.com"), HostRule("c.com")), level="trusted"),
            "trusted: 2 hosts",
        ),
        (
            EgressPolicy(extra=(HostRule("mcp.example.com"),)),
            "none: only the model API + 1 added by routined",
        ),
    ],
)
def test_a_policy_describes_itself(policy: EgressPolicy, described: str) -> None:
    assert policy.describe() == described


def test_a_public_only_policy_says_so() -> None:
    policy = EgressPolicy((HostRule("a.com"),), public_only=True)
    assert policy.describe() == "custom: 1 host (public addresses only)"


@pytest.mark.parametrize(
    ("base_url", "authority", "prefix", "tls"),
    [
        ("https://api.anthropic.com", "api.anthropic.com", "", True),
        ("http://127.0.0.1:8765", "127.0.0.1:8765", "", False),
        (
            "https://gateway.example.com:8443/anthropic/",
            "gateway.example.com:8443",
            "/anthropic",
            True,
        ),
    ],
)
def test_model_gateways(base_url: str, authority: str, prefix: str, tls: bool) -> None:
    gateway = ModelGateway(base_url, "k")
    assert (gateway.authority, gateway.path_prefix, gateway.tls) == (authority, prefix, tls)


def test_a_gateway_needs_an_http_url() -> None:
    with pytest.raises(ValueError, match="is not an http"):
        ModelGateway("ftp://example.com", "k")


@contextlib.asynccontextmanager
async def serving(
    policy: EgressPolicy, fake_api: FakeAnthropic
) -> AsyncIterator[tuple[Path, list[EgressDecision]]]:
    """A run's proxy with `policy`, its model gateway the fake API; its socket and decisions."""
    decisions: list[EgressDecision] = []
    server = EgressProxy(policy, decisions.append, ModelGateway(fake_api.base_url, "sk-ant-test"))
    with tempfile.TemporaryDirectory(prefix="routined-test-") as folder:
        socket_path = Path(folder) / "egress.sock"
        await server.start(socket_path)
        try:
            yield socket_path, decisions
        finally:
            await server.close()


@pytest.fixture
async def proxy(fake_api: FakeAnthropic) -> AsyncIterator[tuple[Path, list[EgressDecision]]]:
    async with serving(EgressPolicy((HostRule("127.0.0.1", fake_api.port),)), fake_api) as served:
        yield served


@dataclass
class Neighbour:
    """A web server on 127.0.0.2, standing for a service on routined's host."""

    port: int
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0


@pytest.fixture
async def neighbour() -> AsyncIterator[Neighbour]:
    found = Neighbour(0)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        found.connections += 1
        found.heads.append(await reader.readuntil(b"\r\n\r\n"))
        body = b"neighbour here\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.2", 0)
    found.port = server.sockets[0].getsockname()[1]
    try:
        yield found
    finally:
        server.close()
        await server.wait_closed()


def connect(target: str) -> bytes:
    """A CONNECT request as clients send it (HTTP/1.1 wants a Host header)."""
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


async def exchange(socket_path: Path, *messages: bytes) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    answers = []
    for message in messages:
        writer.write(message)
        await writer.drain()
        answers.append(await reader.readuntil(b"\r\n\r\n"))
    answers.append(await reader.read())
    writer.close()
    return answers


async def test_absolute_form_requests_reach_an_allowed_host(
    proxy: tuple[Path, list[EgressDecision]], fake_api: FakeAnthropic
) -> None:
    socket_path, decisions = proxy
    request = (
        f"GET {fake_api.base_url}/v1/models HTTP/1.1\r\nHost: 127.0.0.1:{fake_api.port}\r\n"
        "Proxy-Connection: keep-alive\r\n\r\n"
    ).encode()
    head, body = await exchange(socket_path, request)
    assert head.startswith(b"HTTP/1.1 404")  # the fake's own answer, not the proxy's
    assert b"not_found_error" in body
    assert decisions == [EgressDecision("127.0.0.1", fake_api.port, True, "GET")]


async def test_other_hosts_get_403_host_not_allowed(
    proxy: tuple[Path, list[EgressDecision]],
) -> None:
    socket_path, decisions = proxy
    head, body = await exchange(
        socket_path, b"GET http://127.0.0.2:9/ HTTP/1.1\r\nHost: 127.0.0.2:9\r\n\r\n"
    )
    assert head.startswith(b"HTTP/1.1 403")
    assert b"x-deny-reason: host_not_allowed" in head
    assert b"127.0.0.2:9 is not on this run's network allowlist" in body
    assert decisions == [EgressDecision("127.0.0.2", 9, False, "GET")]


async def test_connect_tunnels_to_an_allowed_host_only(
    proxy: tuple[Path, list[EgressDecision]], fake_api: FakeAnthropic
) -> None:
    socket_path, _decisions = proxy
    tunnel, head, _body = await exchange(
        socket_path,
        connect(f"127.0.0.1:{fake_api.port}"),
        b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert tunnel.startswith(b"HTTP/1.1 200 Connection Established")
    assert head.startswith(b"HTTP/1.1 404")
    denied, _ = await exchange(socket_path, connect("example.com:443"))
    assert denied.startswith(b"HTTP/1.1 403") and b"host_not_allowed" in denied


@pytest.mark.parametrize("request_line", [b"GARBAGE\r\n\r\n", connect("nohost")])
async def test_malformed_requests_get_400(
    proxy: tuple[Path, list[EgressDecision]], request_line: bytes
) -> None:
    socket_path, decisions = proxy
    head, _ = await exchange(socket_path, request_line)
    assert head.startswith(b"HTTP/1.1 400")
    assert decisions == []


async def test_the_host_header_names_the_host_that_was_checked(
    proxy: tuple[Path, list[EgressDecision]], fake_api: FakeAnthropic
) -> None:
    socket_path, _ = proxy
    body = b'{"model": "m", "messages": []}'
    request = (
        f"POST {fake_api.base_url}/v1/messages/count_tokens HTTP/1.1\r\n"
        "Host: admin.internal\r\nx-api-key: sk-ant-test\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    head, _ = await exchange(socket_path, request)
    assert head.startswith(b"HTTP/1.1 200")
    [seen] = [r for r in fake_api.requests if r.body == {"model": "m", "messages": []}]
    assert seen.headers["host"] == f"127.0.0.1:{fake_api.port}"
    fake_api.requests.remove(seen)


@pytest.mark.parametrize("target", [b"http://[::1/", b"http://127.0.0.1:99999/", b"ftp://x/"])
async def test_malformed_urls_get_400(
    proxy: tuple[Path, list[EgressDecision]], target: bytes
) -> None:
    socket_path, decisions = proxy
    head, _ = await exchange(socket_path, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert decisions == []


@pytest.mark.parametrize("form", ["origin", "absolute"])
async def test_the_gateway_forwards_model_requests_with_the_real_key(
    proxy: tuple[Path, list[EgressDecision]], fake_api: FakeAnthropic, form: str
) -> None:
    socket_path, decisions = proxy
    body = b'{"model": "gateway-test", "messages": []}'
    target = (
        "/v1/messages/count_tokens"
        if form == "origin"
        else "http://127.0.0.1:3128/v1/messages/count_tokens"
    )
    request = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n"
        "x-api-key: sk-ant-routined-gateway-holds-the-real-key\r\n"
        "Authorization: Bearer stolen\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    head, answer = await exchange(socket_path, request)
    assert head.startswith(b"HTTP/1.1 200") and b"input_tokens" in answer
    [seen] = [r for r in fake_api.requests if r.body == {"model": "gateway-test", "messages": []}]
    fake_api.requests.remove(seen)
    assert seen.headers["x-api-key"] == "sk-ant-test"
    assert "authorization" not in seen.headers
    assert seen.headers["host"] == f"127.0.0.1:{fake_api.port}"
    assert decisions == []


@pytest.mark.parametrize(
    "request_line",
    [
        "GET /v1/models",
        "POST /v1/files",
        "POST /v1/messages/batches",
        "GET /v1/messages",
        "POST /api/x",
    ],
)
async def test_the_gateway_passes_only_what_claude_code_needs(
    proxy: tuple[Path, list[EgressDecision]], request_line: str
) -> None:
    socket_path, decisions = proxy
    head, _ = await exchange(
        socket_path, f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n\r\n".encode()
    )
    assert head.startswith(b"HTTP/1.1 403") and b"x-deny-reason: path_not_allowed" in head
    assert [d.reason for d in decisions] == ["path_not_allowed"]


async def test_under_none_the_gateway_answers_and_nothing_else_does(
    fake_api: FakeAnthropic, neighbour: Neighbour
) -> None:
    async with serving(network.policy("none"), fake_api) as (socket_path, decisions):
        body = b'{"model": "network-none", "messages": []}'
        head, answer = await exchange(
            socket_path,
            b"POST /v1/messages/count_tokens HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body,
        )
        assert head.startswith(b"HTTP/1.1 200") and b"input_tokens" in answer
        [seen] = [
            r for r in fake_api.requests if r.body == {"model": "network-none", "messages": []}
        ]
        fake_api.requests.remove(seen)
        denied, why = await exchange(socket_path, connect(f"127.0.0.2:{neighbour.port}"))
    assert denied.startswith(b"HTTP/1.1 403")
    assert b"x-deny-reason: host_not_allowed" in denied
    assert f"127.0.0.2:{neighbour.port} is not on this run's network allowlist".encode() in why
    assert decisions == [EgressDecision("127.0.0.2", neighbour.port, False, "CONNECT")]
    assert neighbour.heads == []


async def test_a_custom_host_and_port_are_reached_and_no_other(
    fake_api: FakeAnthropic, neighbour: Neighbour
) -> None:
    allowed = network.policy("custom", [f"127.0.0.2:{neighbour.port}"])
    async with serving(allowed, fake_api) as (socket_path, decisions):
        tunnel, head, body = await exchange(
            socket_path,
            connect(f"127.0.0.2:{neighbour.port}"),
            b"GET /through-the-tunnel HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        assert tunnel.startswith(b"HTTP/1.1 200 Connection Established")
        assert head.startswith(b"HTTP/1.1 200 OK") and body == b"neighbour here\n"
        head, body = await exchange(
            socket_path,
            f"GET http://127.0.0.2:{neighbour.port}/absolute HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        )
        assert head.startswith(b"HTTP/1.1 200 OK") and body == b"neighbour here\n"
        for target in ("127.0.0.2:9", f"127.0.0.1:{fake_api.port}"):
            denied, _ = await exchange(socket_path, connect(target))
            assert denied.startswith(b"HTTP/1.1 403") and b"host_not_allowed" in denied
    assert [head.split(b"\r\n")[:2] for head in neighbour.heads] == [
        [b"GET /through-the-tunnel HTTP/1.1", b"Host: x"],
        [b"GET /absolute HTTP/1.1", f"Host: 127.0.0.2:{neighbour.port}".encode()],
    ]
    assert [(d.host, d.allowed) for d in decisions] == [
        ("127.0.0.2", True),
        ("127.0.0.2", True),
        ("127.0.0.2", False),
        ("127.0.0.1", False),
    ]


async def test_under_full_local_addresses_stay_out_of_reach(
    fake_api: FakeAnthropic, neighbour: Neighbour
) -> None:
    async with serving(network.policy("full"), fake_api) as (socket_path, decisions):
        for target in (f"127.0.0.2:{neighbour.port}", "localhost:5432", "169.254.169.254:80"):
            denied, why = await exchange(socket_path, connect(target))
            assert denied.startswith(b"HTTP/1.1 403") and b"host_not_allowed" in denied
            assert b"which network: full does not reach" in why
        denied, _ = await exchange(
            socket_path, f"GET {fake_api.base_url}/v1/models HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        assert denied.startswith(b"HTTP/1.1 403")
    assert [(d.host, d.allowed) for d in decisions] == [
        ("127.0.0.2", False),
        ("localhost", False),
        ("169.254.169.254", False),
        ("127.0.0.1", False),
    ]
    assert neighbour.heads == []


async def test_under_full_a_host_routined_adds_is_reached_even_when_local(
    fake_api: FakeAnthropic, neighbour: Neighbour
) -> None:
    named = network.policy("full", extra_hosts=[f"127.0.0.2:{neighbour.port}"])
    async with serving(named, fake_api) as (socket_path, decisions):
        tunnel, head, body = await exchange(
            socket_path,
            connect(f"127.0.0.2:{neighbour.port}"),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        assert tunnel.startswith(b"HTTP/1.1 200 Connection Established")
        assert head.startswith(b"HTTP/1.1 200 OK") and body == b"neighbour here\n"
    assert [(d.host, d.allowed) for d in decisions] == [("127.0.0.2", True)]


# 127.0.0.2, where the neighbour listens, as an attacker may write it: resolver
# spellings, IPv6 forms that carry it, and names of this machine.
_LOCAL_SPELLINGS = [
    "127.0.0.2",
    "127.2",
    "2130706434",
    "0x7f000002",
    "0177.0.0.2",
    "[::ffff:127.0.0.2]",
    "[::127.0.0.2]",
    "[::ffff:0:7f00:2]",
    "[64:ff9b::7f00:2]",
    "[64:ff9b:1::7f00:2]",
    "[2002:7f00:2::]",
    "[::1]",
    "0.0.0.0",
    "localhost.",
    "LocalHost",
]


@pytest.mark.parametrize("host", _LOCAL_SPELLINGS)
async def test_under_full_this_machine_is_out_of_reach_however_it_is_written(
    fake_api: FakeAnthropic, neighbour: Neighbour, host: str
) -> None:
    async with serving(network.policy("full"), fake_api) as (socket_path, decisions):
        for request in (
            connect(f"{host}:{neighbour.port}"),
            f"GET http://{host}:{neighbour.port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        ):
            denied, why = await exchange(socket_path, request)
            assert denied.startswith(b"HTTP/1.1 403")
            assert b"x-deny-reason: host_not_allowed" in denied
            assert b"which network: full does not reach" in why
            assert decisions[-1].detail and decisions[-1].detail.encode() in why
    assert [d.allowed for d in decisions] == [False, False]
    assert neighbour.connections == 0


@pytest.mark.parametrize(
    "named_by",
    [
        pytest.param(lambda hosts: network.policy("custom", hosts), id="its allowed_hosts"),
        pytest.param(lambda hosts: network.policy("none", extra_hosts=hosts), id="routined"),
        pytest.param(lambda hosts: network.policy("full", extra_hosts=hosts), id="full"),
    ],
)
async def test_an_accounts_routine_reaches_no_local_host_whoever_names_it(
    fake_api: FakeAnthropic,
    neighbour: Neighbour,
    named_by: Callable[[list[str]], EgressPolicy],
) -> None:
    """An account's key set `allowed_hosts: [127.0.0.2:PORT]` (issue 14, finding 6)."""
    target = f"127.0.0.2:{neighbour.port}"
    policy = dataclasses.replace(named_by([target]), public_only=True)
    async with serving(policy, fake_api) as (socket_path, decisions):
        for request in (
            connect(target),
            f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode(),
        ):
            denied, why = await exchange(socket_path, request)
            assert denied.startswith(b"HTTP/1.1 403")
            assert b"x-deny-reason: host_not_allowed" in denied
            assert b"127.0.0.2 is a loopback address" in why
            assert b"ROUTINED_ALLOW_PRIVATE_NETWORKS" in why
        # The model gateway is the operator's setting, on loopback here: it still answers.
        body = b'{"model": "public-only", "messages": []}'
        head, answer = await exchange(
            socket_path,
            b"POST /v1/messages/count_tokens HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body,
        )
        assert head.startswith(b"HTTP/1.1 200") and b"input_tokens" in answer
    [seen] = [r for r in fake_api.requests if r.body == {"model": "public-only", "messages": []}]
    fake_api.requests.remove(seen)
    assert [(d.host, d.allowed, d.detail) for d in decisions] == [
        ("127.0.0.2", False, "127.0.0.2 is a loopback address (this machine)")
    ] * 2
    assert neighbour.connections == 0


async def test_the_operator_may_open_a_private_network_to_accounts(
    fake_api: FakeAnthropic, neighbour: Neighbour
) -> None:
    target = f"127.0.0.2:{neighbour.port}"
    policy = dataclasses.replace(
        network.policy("custom", [target, f"127.0.0.1:{fake_api.port}"]),
        public_only=True,
        private_allowed=(ipaddress.ip_network("127.0.0.2/32"),),
    )
    async with serving(policy, fake_api) as (socket_path, decisions):
        tunnel, head, body = await exchange(
            socket_path, connect(target), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert tunnel.startswith(b"HTTP/1.1 200 Connection Established")
        assert head.startswith(b"HTTP/1.1 200 OK") and body == b"neighbour here\n"
        denied, why = await exchange(socket_path, connect(f"127.0.0.1:{fake_api.port}"))
        assert denied.startswith(b"HTTP/1.1 403") and b"127.0.0.1 is a loopback address" in why
    assert [(d.host, d.allowed) for d in decisions] == [("127.0.0.2", True), ("127.0.0.1", False)]
    assert neighbour.connections == 1
