"""Network levels: `allowed_hosts` entries, the policy of each level, the trusted list and its docs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from routined.sandbox import network

DOCS = Path(__file__).parents[1] / "docs" / "network.md"


@pytest.mark.parametrize(
    ("entry", "normalised"),
    [
        ("pypi.org", "pypi.org"),
        ("PyPI.org", "pypi.org"),
        ("*.Internal.Example.com", "*.internal.example.com"),
        ("*.internal", "*.internal"),
        ("localhost", "localhost"),
        ("build_cache.lan", "build_cache.lan"),  # internal names have underscores
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("127.0.0.2:8080", "127.0.0.2:8080"),
        ("registry.local:05000", "registry.local:5000"),
        ("*.example.com:443", "*.example.com:443"),
        ("[::1]", "[::1]"),
        ("[0:0:0:0:0:0:0:1]:8080", "[::1]:8080"),
        ("[FD00::A]:65535", "[fd00::a]:65535"),
    ],
)
def test_valid_entries_come_back_normalised(entry: str, normalised: str) -> None:
    assert network.check_host(entry) == normalised


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("", "is empty"),
        (" pypi.org", "has spaces"),
        ("py pi.org", "has spaces"),
        ("https://pypi.org", "is a URL"),
        ("pypi.org/simple", "has more than a host and a port"),
        ("user@pypi.org", "has more than a host and a port"),
        ("[fe80::1%eth0]", "has more than a host and a port"),
        ("*", "would allow every host"),
        ("*foo.com", "a '*' that is not a leading '*.'"),
        ("foo.*.com", "a '*' that is not a leading '*.'"),
        ("*.*.com", "a '*' that is not a leading '*.'"),
        ("*.", "is not a host name"),
        ("-pypi.org", "is not a host name"),
        ("pypi..org", "is not a host name"),
        ("pypi.org.", "is not a host name"),
        ("a" * 64 + ".com", "is not a host name"),
        ("bücher.example", "xn-- form"),
        ("pypi.org:0", "a port that is not a number from 1 to 65535"),
        ("pypi.org:65536", "a port that is not a number from 1 to 65535"),
        ("pypi.org:https", "a port that is not a number from 1 to 65535"),
        ("pypi.org:", "a port that is not a number from 1 to 65535"),
        ("999.0.0.1", "is not an IPv4 address"),
        ("127.1", "is not an IPv4 address"),
        ("*.10.0.0.1", "puts a wildcard on an IP address"),
        ("::1", "without its brackets"),
        ("[::1", "has no closing ']'"),
        ("[pypi.org]", "has no IPv6 address between the brackets"),
        ("[::1]8080", "not a :port"),
    ],
)
def test_invalid_entries_are_refused_with_what_a_valid_one_looks_like(
    entry: str, problem: str
) -> None:
    with pytest.raises(ValueError, match="allowed_hosts entry") as refused:
        network.check_host(entry)
    assert problem in str(refused.value)
    assert "e.g. '*.example.com' or '127.0.0.2:8080'" in str(refused.value)


@pytest.mark.parametrize(
    ("level", "allowed_hosts", "include_trusted", "host", "port", "allowed"),
    [
        ("none", [], False, "pypi.org", 443, False),
        ("none", [], False, "127.0.0.2", 8080, False),
        ("trusted", [], False, "pypi.org", 443, True),
        ("trusted", [], False, "raw.githubusercontent.com", 443, True),
        ("trusted", [], False, "example.com", 443, False),
        ("trusted", [], False, "api.anthropic.com", 443, False),  # the gateway is the way there
        ("full", [], False, "example.com", 443, True),
        ("full", [], False, "169.254.169.254", 80, True),
        ("custom", ["*.internal.example.com"], False, "git.internal.example.com", 443, True),
        ("custom", ["*.internal.example.com"], False, "internal.example.com", 443, False),
        ("custom", ["*.internal.example.com"], False, "pypi.org", 443, False),
        ("custom", ["*.internal.example.com"], True, "pypi.org", 443, True),
        ("custom", ["127.0.0.2:8080"], False, "127.0.0.2", 8080, True),
        ("custom", ["127.0.0.2:8080"], False, "127.0.0.2", 8081, False),
        ("custom", ["[::1]:8080"], False, "[::1]", 8080, True),
        ("custom", [], False, "pypi.org", 443, False),
    ],
)
def test_each_level_allows_its_hosts(
    level: str,
    allowed_hosts: list[str],
    include_trusted: bool,
    host: str,
    port: int,
    allowed: bool,
) -> None:
    policy = network.policy(level, allowed_hosts, include_trusted=include_trusted)
    assert policy.allows(host, port) is allowed


@pytest.mark.parametrize("level", ["none", "trusted", "custom"])
def test_hosts_routined_adds_pass_at_every_level(level: str) -> None:
    policy = network.policy(level, extra_hosts=["MCP.example.com:8443", "::1"])
    assert policy.allows("mcp.example.com", 8443)
    assert not policy.allows("mcp.example.com", 443)
    assert policy.allows("::1", 9)  # a URL's hostname gives IPv6 addresses bare
    assert not policy.allows("other.example.com", 8443)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: network.policy("open"), "network 'open' is not a level; use one of none, trusted"),
        (lambda: network.policy("Trusted"), "is not a level"),
        (
            lambda: network.policy("trusted", ["pypi.org"]),
            "allowed_hosts applies only to network: custom",
        ),
        (
            lambda: network.policy("none", include_trusted=True),
            "include_trusted applies only to network: custom",
        ),
        (lambda: network.policy("custom", "pypi.org"), "allowed_hosts is a list of hosts"),
        (
            lambda: network.policy("custom", ["https://x.com"]),
            "allowed_hosts entry 'https://x.com'",
        ),
        (lambda: network.policy("none", extra_hosts=["a b"]), "extra_hosts entry 'a b'"),
        (lambda: network.policy("full", extra_hosts=["a/b"]), "extra_hosts entry 'a/b'"),
    ],
)
def test_policy_refuses_what_does_not_fit(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        call()
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("level", "allowed_hosts", "include_trusted", "extra_hosts", "described"),
    [
        ("none", [], False, [], "none: only the model API"),
        ("none", [], False, ["mcp.example.com"], "none: only the model API + 1 added by routined"),
        ("trusted", [], False, [], f"trusted: {len(network.TRUSTED_HOSTS)} hosts"),
        ("full", [], False, ["mcp.example.com"], "full: any host"),
        ("custom", ["a.com", "*.b.com", "127.0.0.2:8080"], False, [], "custom: 3 hosts"),
        ("custom", ["a.com", "A.com", "b.com", "c.com"], True, [], "custom: 3 hosts + trusted"),
        ("custom", [], False, [], "custom: only the model API"),
    ],
)
def test_each_policy_describes_itself(
    level: str,
    allowed_hosts: list[str],
    include_trusted: bool,
    extra_hosts: list[str],
    described: str,
) -> None:
    policy = network.policy(
        level, allowed_hosts, include_trusted=include_trusted, extra_hosts=extra_hosts
    )
    assert policy.describe() == described


def test_the_trusted_list_is_well_formed() -> None:
    patterns = [entry.pattern for entry in network.TRUSTED_HOSTS]
    assert len(patterns) == len(set(patterns)), "a trusted host is listed twice"
    for entry in network.TRUSTED_HOSTS:
        assert network.check_host(entry.pattern) == entry.pattern
        assert ":" not in entry.pattern, "a trusted host is open on every port"
        assert entry.category.strip() == entry.category != ""
    assert 150 <= len(patterns) <= 300


@pytest.mark.parametrize(
    "host",
    [
        "pypi.org", "files.pythonhosted.org", "www.python.org", "conda.anaconda.org",
        "repo.anaconda.com", "registry.npmjs.org", "registry.yarnpkg.com", "repo.yarnpkg.com",
        "nodejs.org", "dl.deno.land", "jsr.io", "bun.sh", "crates.io", "index.crates.io",
        "static.crates.io", "static.rust-lang.org", "sh.rustup.rs", "proxy.golang.org",
        "sum.golang.org", "go.dev", "dl.google.com", "rubygems.org", "index.rubygems.org",
        "repo1.maven.org", "repo.maven.apache.org", "plugins.gradle.org", "services.gradle.org",
        "api.adoptium.net", "api.foojay.io", "api.nuget.org", "repo.packagist.org",
        "repo.hex.pm", "pub.dev", "cpan.metacpan.org", "cloud.r-project.org",
        "hackage.haskell.org", "deb.debian.org", "security.debian.org", "archive.ubuntu.com",
        "de.archive.ubuntu.com", "dl-cdn.alpinelinux.org", "formulae.brew.sh", "github.com",
        "api.github.com", "codeload.github.com", "raw.githubusercontent.com",
        "objects.githubusercontent.com", "release-assets.githubusercontent.com", "gitlab.com",
        "bitbucket.org", "downloads.sourceforge.net", "netix.dl.sourceforge.net",
        "registry-1.docker.io", "auth.docker.io", "production.cloudflare.docker.com", "ghcr.io",
        "quay.io", "cdn01.quay.io", "gcr.io", "us.gcr.io", "europe-docker.pkg.dev",
        "mcr.microsoft.com", "westeurope.data.mcr.microsoft.com", "public.ecr.aws",
    ],
)  # fmt: skip
def test_the_trusted_level_reaches_registries_git_hosts_and_toolchains(host: str) -> None:
    assert network.policy("trusted").allows(host, 443)


@pytest.mark.parametrize(
    "host",
    [
        "example.com", "pypi.org.example.com", "evilpypi.org", "githubusercontent.com",
        "gist.github.com.example.com", "api.anthropic.com", "169.254.169.254", "127.0.0.1",
        "localhost", "s3.amazonaws.com", "pastebin.com",
    ],
)  # fmt: skip
def test_the_trusted_level_stops_elsewhere(host: str) -> None:
    assert not network.policy("trusted").allows(host, 443)


def test_the_docs_list_the_trusted_hosts_as_they_are() -> None:
    text = DOCS.read_text()
    start = text.index(network.TABLE_START) + len(network.TABLE_START)
    shown = text[start : text.index(network.TABLE_END)]
    assert shown.strip() == network.trusted_hosts_table().strip(), (
        "docs/network.md lists other trusted hosts than TRUSTED_HOSTS; "
        "run `.venv/bin/python -m routined.sandbox.network docs/network.md`"
    )
    for entry in network.TRUSTED_HOSTS:
        assert f"`{entry.pattern}`" in shown


def test_the_docs_table_is_rewritten_in_place(tmp_path: Path) -> None:
    page = tmp_path / "network.md"
    page.write_text(
        f"# Before\n\n{network.TABLE_START}\n\n| stale | table |\n\n{network.TABLE_END}\n\nAfter.\n"
    )
    subprocess.run([sys.executable, "-m", "routined.sandbox.network", str(page)], check=True)
    assert page.read_text() == (
        f"# Before\n\n{network.TABLE_START}\n\n{network.trusted_hosts_table()}\n"
        f"{network.TABLE_END}\n\nAfter.\n"
    )
