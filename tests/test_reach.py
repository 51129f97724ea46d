"""The server's reach: an account's key cannot make routined connect to this machine,
its networks or the cloud's metadata service (issue 14, finding 6).

The attacks come as a hostile account key would send them, through the management
API over HTTP: every spelling of loopback, the IPv6 forms that carry an IPv4
address, metadata addresses, `allowed_hosts` entries and connector URLs. Git is run
for real against local HTTP servers to show what `reach.git_pin`'s options make it
do: connect only where it was pinned, follow no redirect, and download no pack from
a URL a hostile server names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import ipaddress
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from routined import reach
from routined.config import Settings
from routined.db import Store
from routined.http.app import create_app
from routined.models import Routine
from routined.runs import push
from routined.runs.checkout import authenticated
from routined.runs.failure import Failure
from routined.runs.scope import RunSpec
from routined.testing.fake_github import FakeGitHub, generate_app_key
from tests.conftest import T0, git
from tests.test_management_api import PLANS, PUBLIC_URL, Api, assert_error, operator_key

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)

# Classification: a table of addresses


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "not a public address"),  # carrier-grade NAT, shared
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fd12:3456::1", "unique-local"),
        ("fec0::1", "site-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("192.0.0.170", "IETF protocol"),
        ("2001:db8::1", "private"),  # documentation
        # Cloud metadata services.
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),  # AWS ECS task credentials
        ("100.100.100.200", "metadata"),  # Alibaba
        ("192.0.0.192", "metadata"),  # Oracle
        ("fd00:ec2::254", "metadata"),  # AWS over IPv6
        # IPv6 forms that carry an IPv4 address are judged by it.
        ("::ffff:127.0.0.1", "carries 127.0.0.1, a loopback"),  # IPv4-mapped
        ("::127.0.0.1", "carries 127.0.0.1, a loopback"),  # IPv4-compatible
        ("::ffff:0:a00:1", "carries 10.0.0.1, a private"),  # SIIT
        ("::ffff:0:a9fe:a9fe", "carries 169.254.169.254, a cloud metadata"),
        ("64:ff9b::7f00:1", "carries 127.0.0.1, a loopback"),  # NAT64, well-known prefix
        ("64:ff9b::a9fe:a9fe", "carries 169.254.169.254, a cloud metadata"),
        ("64:ff9b:1::808:808", "local-use NAT64"),  # RFC 8215: a private translator
        ("2002:7f00:1::", "carries 127.0.0.1, a loopback"),  # 6to4
        ("2002:a00:1::1", "carries 10.0.0.1, a private"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "carries 127.0.0.1"),  # Teredo client
    ],
)
def test_addresses_an_account_may_not_reach(address: str, says: str) -> None:
    why = reach.refusal(ipaddress.ip_address(address))
    assert why is not None and says in why, why


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "2a00:1450:4001:80b::200e",
        "64:ff9b::808:808",  # 8.8.8.8 through a NAT64 gateway
        "::ffff:8.8.8.8",  # 8.8.8.8 on a dual-stack socket
        "2002:808:808::1",  # 8.8.8.8's 6to4 network
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert reach.refusal(ipaddress.ip_address(address)) is None


def test_the_operator_opens_a_private_network_and_only_that() -> None:
    ten = (ipaddress.ip_network("10.0.0.0/8"),)
    assert reach.refusal(ipaddress.ip_address("10.1.2.3"), ten) is None
    assert reach.refusal(ipaddress.ip_address("::ffff:10.1.2.3"), ten) is None
    assert reach.refusal(ipaddress.ip_address("64:ff9b::a01:203"), ten) is None
    for other in ("192.168.1.1", "127.0.0.1", "169.254.169.254", "::ffff:192.168.1.1"):
        assert reach.refusal(ipaddress.ip_address(other), ten) is not None, other


@pytest.mark.parametrize(
    "host",
    ["127.1", "2130706433", "0x7f000001", "0x7F000001", "0177.0.0.1", "0x7f.1", "127.0.0.1."],
)
def test_every_spelling_of_an_address_is_that_address(host: str) -> None:
    assert reach.literal(host) == ipaddress.ip_address("127.0.0.1")
    with pytest.raises(reach.Unreachable, match=r"means 127\.0\.0\.1: .* loopback"):
        reach.resolve_now(host, 443)


@pytest.mark.parametrize("host", ["deadbeef", "08.0.0.1", "1.2.3.4.5", "example.com", "127.0.0.1x"])
def test_names_are_not_addresses(host: str) -> None:
    assert reach.literal(host) is None


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost.", "db.localhost"])
def test_this_machines_names_are_refused_whatever_the_network_allowed(host: str) -> None:
    with pytest.raises(reach.Unreachable, match="names this machine"):
        reach.resolve_now(host, 443, LOOPBACK)


def test_a_name_is_refused_for_any_one_address_it_resolves_to() -> None:
    # One private address among public ones: a client may well pick it.
    with pytest.raises(reach.Unreachable, match=r"mixed\.example resolves to 10\.0\.0\.1"):
        reach.judge("mixed.example", ["8.8.8.8", "10.0.0.1", "2606:4700::1111"])
    assert reach.judge("public.example", ["8.8.8.8", "2606:4700::1111"]) == [
        "8.8.8.8",
        "2606:4700::1111",
    ]


def test_a_name_that_does_not_resolve_is_not_refused_ahead_of_a_connection() -> None:
    # .invalid never resolves (RFC 6761): DNS being down looks the same.
    assert reach.refused_now(["repo.invalid", "8.8.8.8"]) == {}
    with pytest.raises(reach.Unresolved):
        reach.resolve_now("repo.invalid", 443)


def test_a_name_that_resolves_to_this_machine_is_refused() -> None:
    name = socket.gethostname()
    found = {info[4][0] for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    if all(reach.refusal(ipaddress.ip_address(a)) is None for a in found):
        pytest.skip(f"{name} resolves to public addresses only here: {found}")
    assert f"{name} resolves to" in reach.refused_now([name])[name]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://a@127.0.0.1@example.com/x.git", "more than one @"),
        ("https://example.com\\@127.0.0.1/x.git", "backslash"),
        ("https://%31%32%37.0.0.1/x.git", "written ambiguously"),
        ("https://exam ple.com/x.git", "spaces"),
        ("https://example.com\n.evil/x.git", "control"),
        ("https://bücher.example/x.git", "xn--"),
        ("https://[::1/x.git", "cannot be read"),
        ("https://example.com:99999/x.git", "port"),
        ("ssh://example.com/x.git", "not https or http"),
    ],
)
def test_urls_clients_could_read_differently_are_refused(url: str, says: str) -> None:
    with pytest.raises(reach.Unreachable, match=says):
        reach.endpoint(url)


# A hostile account key, through the management API over HTTP

REPOSITORY_ATTACKS = [
    "https://127.1/x.git",
    "https://2130706433/x.git",
    "https://0x7f000001/x.git",
    "https://0177.0.0.1/x.git",
    "https://127.0.0.1./x.git",
    "https://localhost./x.git",
    "https://db.localhost/x.git",
    "https://[::ffff:127.0.0.1]/x.git",
    "https://[::127.0.0.1]/x.git",
    "https://[64:ff9b::7f00:1]/x.git",
    "https://[2002:7f00:1::]/x.git",
    "https://169.254.169.254/x.git",
    "https://[fd00:ec2::254]/x.git",
    "https://127.0.0.1:5432/x.git",
    "https://[::1]:8080/x.git",
    "https://10.1.2.3/x.git",
]
HOST_ATTACKS = [
    "127.0.0.1:5432",
    "[::1]:8080",
    "169.254.169.254",
    "[fd00:ec2::254]",
    "0x7f000001",  # a host name to the allowed_hosts syntax, 127.0.0.1 to a resolver
    "localhost",
    "*.localhost",
    "10.1.2.3:443",
]
CONNECTOR_ATTACKS = [
    "http://127.0.0.1:8080/mcp",
    "http://[::1]:8080/sse",
    "https://2130706433/mcp",
    "http://169.254.169.254/latest/meta-data/",
]


@contextlib.contextmanager
def management(store: Store, tmp_path: Path, **env: str) -> Iterator[Api]:
    """The real app on `store`, with an operator key; `env` adds settings."""
    settings = Settings.from_env(
        {
            "ROUTINED_HOME": str(tmp_path / "home"),
            "ROUTINED_PUBLIC_URL": PUBLIC_URL,
            "ROUTINED_PLANS": PLANS,
            **env,
        }
    )
    app = create_app(store, settings, clock=lambda: T0)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, store, settings, tmp_path, operator_key(store), [])


@pytest.fixture
def hostile(sqlite_store: Store, tmp_path: Path) -> Iterator[tuple[Api, str]]:
    """The API, and an admin key of an account that is not the operator's."""
    with management(sqlite_store, tmp_path) as api:
        api.account("mallory")
        yield api, api.key("mallory", "admin")


def routine(name: str = "probe", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "prompt": "Tidy up.",
        "repositories": [{"url": "https://git.example.com/acme/app.git"}],
        "triggers": [{"type": "api"}],
        **fields,
    }


def custom(*hosts: str) -> dict[str, Any]:
    return {"network": "custom", "allowed_hosts": list(hosts)}


def refused(api: Api, key: str, body: dict[str, Any], field: str, says: str) -> str:
    """The routine is refused with 400 naming `field`, and nothing is stored."""
    answer = api.call("PUT", "/routines", key, body={"routines": [body]})
    message = assert_error(answer, 400, "invalid_request_error", says, case=str(body))
    assert f"routines[0] ({body['name']}).{field}: " in message, message
    assert api.call("GET", f"/routines/{body['name']}", api.operator).status_code == 404
    return message


def test_an_accounts_key_names_no_repository_off_the_public_internet(
    hostile: tuple[Api, str],
) -> None:
    api, key = hostile
    for number, url in enumerate(REPOSITORY_ATTACKS):
        repositories = [{"url": "https://git.example.com/acme/app.git"}, {"url": url}]
        body = routine(f"repo-{number}", repositories=repositories)
        refused(api, key, body, "repositories[1].url", "https repositories on public hosts")
        # The operator reaches what the operator names.
        api.apply(api.operator, {**body, "name": f"operators-repo-{number}"})


def test_an_accounts_key_allows_no_host_off_the_public_internet(
    hostile: tuple[Api, str],
) -> None:
    api, key = hostile
    for number, entry in enumerate(HOST_ATTACKS):
        hosts = custom("registry.example.com", "*.example.com", entry)
        body = routine(f"hosts-{number}", environment=hosts)
        refused(api, key, body, "environment.allowed_hosts[2]", "public hosts only")
        api.apply(api.operator, {**body, "name": f"operators-hosts-{number}"})


def test_an_accounts_key_connects_no_mcp_server_off_the_public_internet(
    hostile: tuple[Api, str],
) -> None:
    api, key = hostile
    for number, url in enumerate(CONNECTOR_ATTACKS):
        kind = "sse" if url.endswith("/sse") else "http"
        body = routine(f"mcp-{number}", connectors={"docs": {"type": kind, "url": url}})
        refused(api, key, body, "connectors.docs.url", "public hosts only")
        api.apply(api.operator, {**body, "name": f"operators-mcp-{number}"})


def test_an_accounts_key_neither_acts_as_the_github_app_nor_lifts_the_caps(
    hostile: tuple[Api, str],
) -> None:
    """The attacks: an account's routine asked for pull requests (made as the
    operator's GitHub App, installed on the operator's repositories) and for a
    terabyte of memory; both ran. Now both are refused, and the operator may."""
    api, key = hostile
    greedy: list[tuple[dict[str, Any], str, str]] = [
        ({"pull_requests": True}, "pull_requests", "operator's GitHub App"),
        ({"comment": True}, "comment", "operator's GitHub App"),
        ({"limits": {"memory": "1TiB"}}, "limits.memory", "at most 4 GiB"),
        ({"limits": {"pids": 4_000_000}}, "limits.pids", "at most 1024"),
        ({"limits": {"disk": "1024TiB"}}, "limits.disk", "at most 10 GiB"),
        ({"limits": {"cpu": 1024}}, "limits.cpu", "at most 1"),
    ]
    for number, (fields, field, says) in enumerate(greedy):
        body = routine(f"greedy-{number}", **fields)
        refused(api, key, body, field, says)
        api.apply(api.operator, {**body, "name": f"operators-greedy-{number}"})
    # Within the server's defaults, an account asks what it likes.
    api.apply(key, routine("modest", limits={"memory": "2GiB", "pids": 256, "cpu": 0.5}))


def test_what_an_account_may_name_it_still_may(hostile: tuple[Api, str]) -> None:
    """Public addresses, names that resolve to them or (DNS being down) not at all, and
    wildcards, judged at each connection."""
    api, key = hostile
    body = routine(
        repositories=[
            {"url": "https://git.example.com/acme/app.git"},
            {"url": "https://x-access-token:t0ken@8.8.8.8:8443/acme/app.git"},
            {"url": "https://[2606:4700::1111]/acme/app.git"},
            {"url": "https://[64:ff9b::808:808]/acme/app.git"},
        ],
        environment=custom("*.example.com", "8.8.8.8:53", "[2606:4700::1111]", "mirror.invalid"),
        connectors={"docs": {"type": "http", "url": "https://mcp.example.com/mcp"}},
    )
    assert [change["action"] for change in api.apply(key, body)] == ["created"]


def test_a_name_of_this_machine_is_refused_in_every_field(hostile: tuple[Api, str]) -> None:
    api, key = hostile
    name = socket.gethostname()
    found = {info[4][0] for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    if all(reach.refusal(ipaddress.ip_address(a)) is None for a in found):
        pytest.skip(f"{name} resolves to public addresses only here: {found}")
    says = f"{name} resolves to"
    refused(
        api,
        key,
        routine(repositories=[{"url": f"https://{name}/x.git"}]),
        "repositories[0].url",
        says,
    )
    refused(
        api, key, routine(environment=custom(f"{name}:22")), "environment.allowed_hosts[0]", says
    )
    mcp = {"docs": {"type": "http", "url": f"http://{name}:8000/mcp"}}
    refused(api, key, routine(connectors=mcp), "connectors.docs.url", says)


def test_a_refusal_is_the_same_whether_anything_listens(hostile: tuple[Api, str]) -> None:
    """No port-scanner oracle: the answer names the address, never what is behind it."""
    api, key = hostile
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: a connection is refused
        ports = [listening.getsockname()[1], closed.getsockname()[1]]
        answers = [
            {
                refused(api, key, routine(environment=custom(f"127.0.0.1:{port}")),
                        "environment.allowed_hosts[0]", "loopback"),
                refused(api, key, routine(repositories=[{"url": f"https://127.1:{port}/x.git"}]),
                        "repositories[0].url", "loopback"),
                refused(api, key, routine(connectors={"docs": {"type": "http", "url": f"http://127.0.0.1:{port}/mcp"}}),
                        "connectors.docs.url", "loopback"),
            }
            for port in ports
        ]  # fmt: skip
    assert answers[0] == answers[1]
    assert not any(str(port) in message for port in ports for message in answers[0])


def test_the_operator_opens_a_private_network_to_accounts(
    sqlite_store: Store, tmp_path: Path
) -> None:
    with management(sqlite_store, tmp_path, ROUTINED_ALLOW_PRIVATE_NETWORKS="10.0.0.0/8") as api:
        api.account("acme")
        key = api.key("acme", "write")
        opened = routine(
            repositories=[{"url": "https://10.1.2.3/acme/app.git"}],
            environment=custom("10.1.2.3:8080", "[::ffff:10.9.9.9]"),
            connectors={"docs": {"type": "http", "url": "http://10.1.2.3:8000/mcp"}},
        )
        assert [c["action"] for c in api.apply(key, opened)] == ["created"]
        # Only that network: the rest of the private address space stays closed.
        for url, says in [
            ("https://192.168.1.1/x.git", "private"),
            ("https://127.0.0.1/x.git", "loopback"),
            ("https://169.254.169.254/x.git", "metadata"),
        ]:
            body = routine("other", repositories=[{"url": url}])
            refused(api, key, body, "repositories[0].url", says)


def test_who_applied_a_routine_sets_its_reach(store: Store, tmp_path: Path) -> None:
    """An account's routine is recorded as reaching public addresses only, for the run
    pipeline to judge every connection again; the operator's is not."""

    def public_only() -> bool:
        with store.transaction(readonly=True) as session:
            return bool(
                session.scalar(select(Routine.public_only).where(Routine.name == "nightly"))
            )

    with management(store, tmp_path) as api:
        writer = api.key("default", "write")  # the default account's, but not the operator
        api.apply(writer, routine("nightly"))
        assert public_only()
        [change] = api.apply(api.operator, routine("nightly"))
        assert not public_only()
        assert change["action"] == "updated" and "reach" in change["description"], change
        api.apply(writer, routine("nightly"))
        assert public_only()


# git at connect time: real git against local HTTP servers


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, handler: type[BaseHTTPRequestHandler], **state: Any):
        self.seen: list[str] = []
        self.state = state
        super().__init__((host, 0), handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Recorded(BaseHTTPRequestHandler):
    server: _Server

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            self.server.seen.append(f"{self.command} {self.path}")
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Files(_Recorded, SimpleHTTPRequestHandler):
    """A folder over HTTP: a repository there is served by git's dumb protocol."""

    def __init__(self, request: Any, address: Any, server: _Server) -> None:
        super().__init__(request, address, server, directory=str(server.state["root"]))


class _Redirect(_Recorded):
    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("location", f"{self.server.state['to']}{self.path}")
        self.send_header("content-length", "0")
        self.end_headers()


class _HostileBackend(_Recorded):
    """git's smart HTTP (git http-backend), with one change a hostile server makes: every
    protocol v2 fetch asks for packfile URIs, as if the client had, so the repository's
    `uploadpack.blobPackfileUri` is sent to a client that never asked for one."""

    def do_GET(self) -> None:
        self._backend(b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if b"command=fetch" in body:
            arguments = body.index(b"0001") + 4  # after the delimiter: the arguments
            line = b"packfile-uris http\n"
            body = body[:arguments] + b"%04x" % (len(line) + 4) + line + body[arguments:]
        self._backend(body)

    def _backend(self, body: bytes) -> None:
        path, _, query = self.path.partition("?")
        env = {
            **os.environ,
            "GIT_PROJECT_ROOT": str(self.server.state["root"]),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_GIT_PROTOCOL": self.headers.get("git-protocol", ""),
        }
        said = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=True
        ).stdout
        head, _, rest = said.partition(b"\r\n\r\n")
        headers = dict(line.decode().split(": ", 1) for line in head.split(b"\r\n"))
        self.send_response(int(headers.pop("Status", "200").split()[0]))
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)


@contextlib.contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1", **state: Any
) -> Iterator[_Server]:
    server = _Server(host, handler, **state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """git as routined runs it: no prompt, and no proxy between it and the servers."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**env, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def served(origin: Path) -> Path:
    """The origin's folder, its repository ready for git's dumb HTTP protocol."""
    git("update-server-info", cwd=origin)
    return origin.parent


def test_git_connects_where_it_is_pinned_and_nowhere_else(served: Path, origin: Path) -> None:
    head = git("rev-parse", "main", cwd=origin)
    # Only 127.0.0.2 serves, and repo.invalid resolves nowhere (RFC 6761): git can
    # reach the repository only at the address it is handed.
    with serving(_Files, "127.0.0.2", root=served) as server:
        for host in ("repo.invalid", "REPO.Invalid", "repo.invalid."):
            url = f"http://{host}:{server.port}/app.git"
            unpinned = run_git("ls-remote", url)
            assert unpinned.returncode != 0 and "resolve host" in unpinned.stderr, unpinned
            pinned = run_git(
                *reach.pin_options(reach.endpoint(url)[0], server.port, ["127.0.0.2"]),
                "ls-remote", url,
            )  # fmt: skip
            assert pinned.returncode == 0, pinned.stderr
            assert f"{head}\trefs/heads/main" in pinned.stdout
        assert server.seen


def test_git_pin_judges_the_host_and_pins_what_it_judged(served: Path, origin: Path) -> None:
    head = git("rev-parse", "main", cwd=origin)
    with serving(_Files, root=served) as server:
        # 127.0.0.0/8 opened, as ROUTINED_ALLOW_PRIVATE_NETWORKS would: loopback stands
        # in for a public host here.
        url = f"http://127.0.0.1:{server.port}/app.git"
        options = reach.git_pin_now(url, LOOPBACK)
        assert f"http.curloptResolve=127.0.0.1:{server.port}:127.0.0.1" in options
        listed = run_git(*options, "ls-remote", url)
        assert listed.returncode == 0 and head in listed.stdout, listed.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_git_pin_in_the_event_loop_judges_alike(anyio_backend: str) -> None:
    assert await reach.git_pin("https://8.8.8.8/x.git") == reach.git_pin_now(
        "https://8.8.8.8/x.git"
    )
    with pytest.raises(reach.Unreachable, match="loopback"):
        await reach.git_pin("https://0x7f000001/x.git")


def test_loopback_by_name_or_number_is_refused_before_git_runs(served: Path) -> None:
    with serving(_Files, root=served) as server:
        port = server.port
        for url, allowed in [
            (f"http://localhost:{port}/app.git", LOOPBACK),  # this machine's by name
            (f"http://localhost.:{port}/app.git", LOOPBACK),
            (f"http://127.1:{port}/app.git", ()),
            (f"http://2130706433:{port}/app.git", ()),
            (f"http://0x7f000001:{port}/app.git", ()),
            (f"http://0177.0.0.1:{port}/app.git", ()),
            (f"http://[::ffff:127.0.0.1]:{port}/app.git", ()),
        ]:
            with pytest.raises(reach.Unreachable) as refusal:
                reach.git_pin_now(url, allowed)
            assert str(port) not in str(refusal.value), refusal.value
        assert server.seen == []


def test_git_follows_no_redirect_from_a_judged_host(served: Path) -> None:
    with serving(_Files, root=served) as elsewhere:
        to = f"http://127.0.0.1:{elsewhere.port}"
        with serving(_Redirect, to=to) as redirecting:
            url = f"http://127.0.0.1:{redirecting.port}/app.git"
            options = reach.git_pin_now(url, LOOPBACK)
            followed = run_git(*options, "ls-remote", url)
            assert followed.returncode != 0, followed.stdout
            assert redirecting.seen and elsewhere.seen == []
            # Git's default follows it: the server above really redirects.
            assert run_git("ls-remote", url).returncode == 0
            assert elsewhere.seen


def test_git_downloads_no_pack_from_a_url_a_hostile_server_names(
    origin: Path, tmp_path: Path
) -> None:
    """Under protocol v2 a server may answer a fetch with `packfile-uris`, asked for or
    not, and git then downloads a pack from each URL it names: a request to any host
    and port, past the pin and with no redirect involved."""
    with serving(_Files, root=tmp_path / "nothing") as elsewhere:
        blob = git("rev-parse", "main:README.md", cwd=origin)
        pack = subprocess.run(
            ["git", "pack-objects", str(tmp_path / "offloaded")],
            cwd=origin, input=f"{blob}\n", capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        offloaded = f"http://127.0.0.1:{elsewhere.port}/offloaded-{pack}.pack"
        git("config", "uploadpack.blobPackfileUri", f"{blob} {pack} {offloaded}", cwd=origin)
        git("config", "uploadpack.allowSidebandAll", "true", cwd=origin)
        with serving(_HostileBackend, root=origin.parent) as hostile:
            url = f"http://127.0.0.1:{hostile.port}/app.git"
            options = reach.git_pin_now(url, LOOPBACK)
            cloned = run_git(*options, "clone", "--quiet", url, str(tmp_path / "pinned"))
            assert cloned.returncode == 0, cloned.stderr
            assert (tmp_path / "pinned" / "README.md").exists()
            assert hostile.seen and elsewhere.seen == []
            # Without the options git asks the other server: the attack is real.
            run_git("clone", "--quiet", url, str(tmp_path / "unpinned"))
            assert elsewhere.seen == [f"GET /offloaded-{pack}.pack"]


def test_routines_stored_before_keep_the_reach_they_had(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        store.migrate("0007")
        with store.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO routines (id, account_id, name, prompt, created_at, updated_at, "
                "catch_up, catch_up_window, overlap, stagger, pull_requests, comment) VALUES "
                "('rtn_old', 'acct_default', 'old', 'p', '2026-11-01 00:00:00', "
                "'2026-11-01 00:00:00', 'latest', 604800, 'skip', 0, 0, 0)"
            )
        store.migrate()
        with store.transaction() as session:
            old = session.get(Routine, "rtn_old")
            assert old is not None and old.public_only is False
    finally:
        store.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_accounts_routine_never_clones_or_pushes_as_the_github_app(
    anyio_backend: str, sqlite_store: Store, tmp_path: Path, origin: Path
) -> None:
    """The attack: an account's routine named a repository the operator's GitHub App
    is installed on; routined minted the app's token for it, and the account's agent
    read the operator's private repository and forced its main branch. Such a routine
    now reaches GitHub as anyone does; the operator's routines keep the app's token."""
    key_file = tmp_path / "app.pem"
    with FakeGitHub(private_key=generate_app_key(key_file)) as github:
        github.add_repository("acme/secret", git_dir=origin)
        github.add_installation(7, "acme", ["secret"])
        settings = Settings.from_env(
            {
                "ROUTINED_HOME": str(tmp_path / "home"),
                "ROUTINED_GITHUB_APP_ID": str(github.app_id),
                "ROUTINED_GITHUB_PRIVATE_KEY_FILE": str(key_file),
                "ROUTINED_GITHUB_API_URL": github.base_url,
                "ROUTINED_GITHUB_URL": github.web_origin,
            }
        )
        url = f"{github.web_origin}/acme/secret.git"
        context = RunSpec(
            run_id="run_1", session_id="session_1", routine_id="rtn_1", account_id="acc_1",
            routine="borrow", prompt="x", model=None, text=None, trigger_type="api",
            repositories=(url,), push_rules=(push.RESTRICTED,), public_only=True,
        )  # fmt: skip
        assert await authenticated(settings, context, [url], Failure.CLONE_FAILED) == [url]
        assert not [r for r in github.requests if r.path.endswith("/access_tokens")]
        operators = dataclasses.replace(context, public_only=False)
        [with_token] = await authenticated(settings, operators, [url], Failure.CLONE_FAILED)
        assert with_token != url and "@" in with_token
        assert [r for r in github.requests if r.path.endswith("/access_tokens")]
