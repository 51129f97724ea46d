"""A routine's network level: which hosts its run's egress proxy lets through.

`environment.network` in a routine's file picks one of four levels:

- `none`: only the model API. That is the proxy's own gateway, always reachable
  and not a host rule, so nothing here can take it away.
- `trusted` (the default): the model API and `TRUSTED_HOSTS`, the package
  registries, git hosts and toolchain downloads that builds and tests fetch from.
- `full`: any host.
- `custom`: the routine's `allowed_hosts`, plus `TRUSTED_HOSTS` when it says
  `include_trusted: true`.

`docs/network.md` shows `TRUSTED_HOSTS` by category; after changing the list,
`python -m routined.sandbox.network docs/network.md` rewrites that table (a test fails
until it agrees).

Over 500 lines and still one concept: most of it is the trusted hosts' list, by
category, which `docs/network.md` shows.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from routined.sandbox.egress import EgressPolicy, HostRule

Level = Literal["none", "trusted", "full", "custom"]
LEVELS: tuple[Level, ...] = get_args(Level)


@dataclass(frozen=True)
class TrustedHost:
    """One entry of the trusted list: a host or `*.domain`, and what it is for."""

    pattern: str
    category: str


def _entries(category: str, *patterns: str) -> tuple[TrustedHost, ...]:
    return tuple(TrustedHost(pattern, category) for pattern in patterns)


# Hosts that builds fetch from, chosen for what package managers and installers
# really contact (including the CDN hosts their downloads redirect to). A
# wildcard is used only where a service spreads over many subdomains. Hosts that
# take uploads from anyone holding a token are here too (registries must be):
# docs/network.md says what that means for untrusted prompts.
TRUSTED_HOSTS: tuple[TrustedHost, ...] = (
    *_entries(
        "Python",
        "pypi.org",
        "files.pythonhosted.org",
        "pypi.python.org",
        "test.pypi.org",
        "test-files.pythonhosted.org",
        "bootstrap.pypa.io",
        "www.python.org",
        "python.org",
        "download.pytorch.org",
        "pypi.nvidia.com",
        "astral.sh",
    ),
    *_entries(
        "Conda",
        "conda.anaconda.org",
        "repo.anaconda.com",
        "anaconda.org",
        "repo.continuum.io",
        "repo.prefix.dev",
        "micro.mamba.pm",
        "pixi.sh",
    ),
    *_entries(
        "JavaScript",
        "registry.npmjs.org",
        "registry.yarnpkg.com",
        "repo.yarnpkg.com",
        "yarnpkg.com",
        "classic.yarnpkg.com",
        "npm.pkg.github.com",
        "nodejs.org",
        "unofficial-builds.nodejs.org",
        "get.pnpm.io",
        "bun.sh",
        "bun.com",
        "deno.land",
        "dl.deno.land",
        "jsr.io",
        "npm.jsr.io",
        "esm.sh",
    ),
    *_entries(
        "Browsers for tests",
        "cdn.playwright.dev",
        "playwright.download.prss.microsoft.com",
        "playwright.azureedge.net",
        "googlechromelabs.github.io",
    ),
    *_entries(
        "Rust",
        "crates.io",
        "index.crates.io",
        "static.crates.io",
        "static.rust-lang.org",
        "sh.rustup.rs",
    ),
    *_entries(
        "Go",
        "proxy.golang.org",
        "sum.golang.org",
        "golang.org",
        "go.dev",
        "gopkg.in",
    ),
    *_entries(
        "Google downloads",
        # Go, Android and Chrome downloads; Dart, Flutter and Chrome for Testing archives.
        "dl.google.com",
        "storage.googleapis.com",
    ),
    *_entries(
        "Ruby",
        "rubygems.org",
        "index.rubygems.org",
        "cache.ruby-lang.org",
    ),
    *_entries(
        "Java, Kotlin and Scala",
        "repo.maven.apache.org",
        "repo1.maven.org",
        "maven-central.storage-download.googleapis.com",
        "central.sonatype.com",
        "oss.sonatype.org",
        "s01.oss.sonatype.org",
        "repository.apache.org",
        "maven.google.com",
        "maven.pkg.github.com",
        "jitpack.io",
        "repo.spring.io",
        "plugins.gradle.org",
        "plugins-artifacts.gradle.org",
        "services.gradle.org",
        "downloads.gradle.org",
        "downloads.gradle-dn.com",
        "repo.gradle.org",
        "dlcdn.apache.org",
        "downloads.apache.org",
        "archive.apache.org",
        "download.jetbrains.com",
        "cache-redirector.jetbrains.com",
        "repo.scala-sbt.org",
        "repo.typesafe.com",
        "clojars.org",
        "repo.clojars.org",
    ),
    *_entries(
        "JDKs",
        "api.adoptium.net",
        "api.foojay.io",
        "jdk.java.net",
        "download.java.net",
        "download.oracle.com",
        "corretto.aws",
        "cdn.azul.com",
        "api.azul.com",
        "download.bell-sw.com",
        "get.sdkman.io",
        "api.sdkman.io",
    ),
    *_entries(
        ".NET",
        "api.nuget.org",
        "globalcdn.nuget.org",
        "www.nuget.org",
        "nuget.org",
        "dist.nuget.org",
        "nuget.pkg.github.com",
        "dot.net",
        "builds.dotnet.microsoft.com",
        "dotnetcli.azureedge.net",
        "dotnetcli.blob.core.windows.net",
        "ci.dot.net",
        "www.powershellgallery.com",
    ),
    *_entries(
        "PHP",
        "packagist.org",
        "repo.packagist.org",
        "getcomposer.org",
        "pecl.php.net",
        "www.php.net",
    ),
    *_entries(
        "Elixir and Erlang",
        "hex.pm",
        "repo.hex.pm",
        "builds.hex.pm",
        "www.erlang.org",
    ),
    *_entries(
        "Dart and Flutter",
        "pub.dev",
        "pub.dartlang.org",
    ),
    *_entries(
        "Perl",
        "cpan.org",
        "www.cpan.org",
        "metacpan.org",
        "cpan.metacpan.org",
        "fastapi.metacpan.org",
    ),
    *_entries(
        "R",
        "cran.r-project.org",
        "cloud.r-project.org",
        "cran.rstudio.com",
        "packagemanager.posit.co",
        "bioconductor.org",
        "*.r-universe.dev",
    ),
    *_entries(
        "Haskell",
        "hackage.haskell.org",
        "downloads.haskell.org",
        "get-ghcup.haskell.org",
        "stackage.org",
        "www.stackage.org",
    ),
    *_entries(
        "Other languages",
        "opam.ocaml.org",
        "download.swift.org",
        "cdn.cocoapods.org",
        "pkg.julialang.org",
        "julialang-s3.julialang.org",
        "ziglang.org",
        "luarocks.org",
    ),
    *_entries(
        "Linux packages",
        "deb.debian.org",
        "security.debian.org",
        "archive.debian.org",
        "snapshot.debian.org",
        "archive.ubuntu.com",
        "*.archive.ubuntu.com",
        "security.ubuntu.com",
        "ports.ubuntu.com",
        "ppa.launchpadcontent.net",
        "ppa.launchpad.net",
        "keyserver.ubuntu.com",
        "dl-cdn.alpinelinux.org",
        "mirrors.fedoraproject.org",
        "dl.fedoraproject.org",
        "download.fedoraproject.org",
        "dl.rockylinux.org",
        "repo.almalinux.org",
        "download.opensuse.org",
        "geo.mirror.pkgbuild.com",
        "packages.microsoft.com",
        "download.docker.com",
        "apt.llvm.org",
        "deb.nodesource.com",
        "packages.cloud.google.com",
        "developer.download.nvidia.com",
    ),
    *_entries(
        "Homebrew and Nix",
        "formulae.brew.sh",
        "cache.nixos.org",
        "channels.nixos.org",
        "releases.nixos.org",
        "nixos.org",
    ),
    *_entries(
        "Git hosting",
        "github.com",
        "api.github.com",
        "codeload.github.com",
        "lfs.github.com",
        # raw., objects., release-assets., media. (LFS) and the container blobs.
        "*.githubusercontent.com",
        "gitlab.com",
        "bitbucket.org",
        "api.bitbucket.org",
        "codeberg.org",
        "git.sr.ht",
        "*.googlesource.com",
        "git.kernel.org",
        "salsa.debian.org",
    ),
    *_entries(
        "Source downloads",
        "sourceforge.net",
        "downloads.sourceforge.net",
        "*.dl.sourceforge.net",
        "ftp.gnu.org",
        "mirrors.kernel.org",
        "cdn.kernel.org",
    ),
    *_entries(
        "Containers",
        "docker.io",
        "registry-1.docker.io",
        "auth.docker.io",
        "index.docker.io",
        "hub.docker.com",
        "registry.hub.docker.com",
        # Where Docker Hub redirects layer downloads.
        "production.cloudflare.docker.com",
        "production.cloudfront.docker.com",
        "docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com",
        "ghcr.io",
        "quay.io",
        "*.quay.io",
        "gcr.io",
        "*.gcr.io",
        "*.pkg.dev",
        "mcr.microsoft.com",
        "*.data.mcr.microsoft.com",
        "public.ecr.aws",
        "registry.k8s.io",
        "registry.gitlab.com",
    ),
    *_entries(
        "Build and infrastructure tools",
        "bcr.bazel.build",
        "releases.bazel.build",
        "mirror.bazel.build",
        "releases.hashicorp.com",
        "registry.terraform.io",
        "registry.opentofu.org",
        "get.helm.sh",
        "dl.k8s.io",
        "cdn.dl.k8s.io",
        "pkgs.k8s.io",
    ),
    *_entries(
        "Certificate status",
        # Revocation checks that some clients (NuGet signature checks, Java with
        # revocation on) make before they trust a download.
        "ocsp.digicert.com",
        "crl3.digicert.com",
        "crl4.digicert.com",
        "ocsp.sectigo.com",
        "crl.sectigo.com",
        "ocsp.usertrust.com",
        "crl.usertrust.com",
        "ocsp.globalsign.com",
        "crl.globalsign.com",
        "ocsp.pki.goog",
        "crl.pki.goog",
        "*.c.lencr.org",
        "oneocsp.microsoft.com",
    ),
)

_TRUSTED_RULES = tuple(HostRule.parse(entry.pattern) for entry in TRUSTED_HOSTS)

_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")
_FORM = (
    "write a host name, *.domain (its subdomains), an IPv4 address or an [IPv6] address, "
    "each with an optional :port, e.g. '*.example.com' or '127.0.0.2:8080'"
)


def check_host(text: str) -> str:
    """One `allowed_hosts` entry, checked and in lower case; ValueError says what is wrong."""
    return _check(text, "allowed_hosts")


def policy(
    level: str,
    allowed_hosts: Sequence[str] = (),
    *,
    include_trusted: bool = False,
    extra_hosts: Sequence[str] = (),
) -> EgressPolicy:
    """The egress policy for a routine's network level.

    `extra_hosts` are hosts routined itself adds (the routine's remote MCP
    servers), written as `allowed_hosts` entries are (bare IPv6 addresses are
    taken too). They apply at every level; under `full` they are what reaches
    addresses of routined's own machine and network, which `full` alone does not.
    """
    for name, hosts in (("allowed_hosts", allowed_hosts), ("extra_hosts", extra_hosts)):
        if isinstance(hosts, str):  # a string is a sequence too: of one-letter hosts
            raise ValueError(f"{name} is a list of hosts, e.g. ['pypi.org'], not one string")
    if level not in LEVELS:
        raise ValueError(f"network {level!r} is not a level; use one of {', '.join(LEVELS)}")
    if allowed_hosts and level != "custom":
        raise ValueError("allowed_hosts applies only to network: custom")
    if include_trusted and level != "custom":
        raise ValueError("include_trusted applies only to network: custom")
    # Checked at every level, `full` too, so a bad host fails whatever the level.
    extra = _rules(_check(_bracketed(host), "extra_hosts") for host in extra_hosts)
    if level == "full":
        return EgressPolicy(allow_all=True, extra=extra, level=level)
    own = _rules(_check(host, "allowed_hosts") for host in allowed_hosts)
    trusted = _TRUSTED_RULES if level == "trusted" or include_trusted else ()
    return EgressPolicy(own, trusted=trusted, extra=extra, level=level)


def trusted_hosts_table() -> str:
    """`TRUSTED_HOSTS` as the Markdown table in docs/network.md: one row per category."""
    groups: dict[str, list[str]] = {}
    for entry in TRUSTED_HOSTS:
        groups.setdefault(entry.category, []).append(f"`{entry.pattern}`")
    rows = [f"| {category} | {', '.join(hosts)} |" for category, hosts in groups.items()]
    return "\n".join(["| Category | Hosts |", "| --- | --- |", *rows]) + "\n"


TABLE_START = (
    "<!-- trusted hosts: generated by `python -m routined.sandbox.network docs/network.md` -->"
)
TABLE_END = "<!-- end of trusted hosts -->"


def _check(text: str, field: str) -> str:
    def refuse(problem: str) -> ValueError:
        return ValueError(f"{field} entry {text!r}: {problem}; {_FORM}")

    if not text:
        raise refuse("is empty")
    if any(char.isspace() for char in text):
        raise refuse("has spaces")
    if "://" in text:
        raise refuse("is a URL")
    if any(char in text for char in "/?#@%"):
        raise refuse("has more than a host and a port")
    if not text.isascii():
        raise refuse("is not ASCII (write an international name in its xn-- form)")
    entry = text.lower()
    port: int | None = None
    if entry.startswith("["):
        inside, bracket, rest = entry[1:].partition("]")
        if not bracket:
            raise refuse("has no closing ']'")
        try:
            address = ipaddress.IPv6Address(inside)
        except ValueError:
            raise refuse("has no IPv6 address between the brackets") from None
        if rest and not rest.startswith(":"):
            raise refuse("has something after the IPv6 address that is not a :port")
        host, port_text = f"[{address.compressed}]", rest[1:] if rest else None
    elif entry.count(":") > 1:
        raise refuse("looks like an IPv6 address without its brackets")
    else:
        host, colon, port_text = entry.partition(":")
        port_text = port_text if colon else None
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
            raise refuse("has a port that is not a number from 1 to 65535")
        port = int(port_text)
    if not host.startswith("["):
        name = host[2:] if host.startswith("*.") else host
        if host == "*":
            raise refuse("would allow every host (that is network: full)")
        if "*" in name:
            raise refuse("has a '*' that is not a leading '*.'")
        if not _NAME.fullmatch(name) or len(name) > 253:
            raise refuse("is not a host name")
        if name.rpartition(".")[2].isdigit():
            # No top-level domain is all digits: this is meant as an IPv4 address.
            if name != host:
                raise refuse("puts a wildcard on an IP address")
            try:
                ipaddress.IPv4Address(name)
            except ValueError:
                raise refuse("is not an IPv4 address") from None
    return host if port is None else f"{host}:{port}"


def _bracketed(host: str) -> str:
    # A URL's hostname gives an IPv6 address bare; a host rule needs its brackets.
    try:
        return f"[{ipaddress.IPv6Address(host)}]"
    except ValueError:
        return host


def _rules(entries: Iterable[str]) -> tuple[HostRule, ...]:
    return tuple(dict.fromkeys(HostRule.parse(entry) for entry in entries))


def _rewrite_docs(path: Path) -> None:
    text = path.read_text()
    before, start, rest = text.partition(TABLE_START)
    _, end, after = rest.partition(TABLE_END)
    if not (start and end):
        raise SystemExit(f"{path}: needs the lines {TABLE_START} and {TABLE_END} around the table")
    path.write_text(f"{before}{TABLE_START}\n\n{trusted_hosts_table()}\n{TABLE_END}{after}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m routined.sandbox.network docs/network.md")
    _rewrite_docs(Path(sys.argv[1]))
