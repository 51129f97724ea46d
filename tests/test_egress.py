"""The egress proxy: allowlist rules and both proxy forms, over its Unix socket."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from routined.egress import EgressDecision, EgressPolicy, EgressProxy, HostRule, ModelGateway
from routined.testing.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


@pytest.fixture
async def proxy(fake_api: FakeAnthropic) -> AsyncIterator[tuple[Path, list[EgressDecision]]]:
    decisions: list[EgressDecision] = []
    server = EgressProxy(
        EgressPolicy((HostRule("127.0.0.1", fake_api.port),)),
        decisions.append,
        ModelGateway(fake_api.base_url, "sk-ant-test"),
    )
    with tempfile.TemporaryDirectory(prefix="routined-test-") as folder:
        socket_path = Path(folder) / "egress.sock"
        await server.start(socket_path)
        try:
            yield socket_path, decisions
        finally:
            await server.close()


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
        f"CONNECT 127.0.0.1:{fake_api.port} HTTP/1.1\r\n\r\n".encode(),
        b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert tunnel.startswith(b"HTTP/1.1 200 Connection Established")
    assert head.startswith(b"HTTP/1.1 404")
    denied, _ = await exchange(socket_path, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    assert denied.startswith(b"HTTP/1.1 403") and b"host_not_allowed" in denied


@pytest.mark.parametrize("request_line", [b"GARBAGE\r\n\r\n", b"CONNECT nohost HTTP/1.1\r\n\r\n"])
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
    head, _ = await exchange(socket_path, b"GET " + target + b" HTTP/1.1\r\n\r\n")
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
    head, _ = await exchange(socket_path, f"{request_line} HTTP/1.1\r\n\r\n".encode())
    assert head.startswith(b"HTTP/1.1 403") and b"x-deny-reason: path_not_allowed" in head
    assert [d.reason for d in decisions] == ["path_not_allowed"]
