"""The server's reach: which addresses routined may connect to on a routine's behalf.

A routine applied by the operator reaches whatever the operator names. One applied
with an account's key reaches public addresses only: not this machine (its
database, routined's own API), not its private networks, and not the cloud's
metadata service, unless the operator allows a private network explicitly
(`ROUTINED_ALLOW_PRIVATE_NETWORKS`). A name is judged by every address it
resolves to, and resolved again at each connection (its DNS may change between
`apply` and a run); whoever connects then uses an address this module judged, so
the name cannot resolve elsewhere a moment later.

`refusal` classifies one address. IPv6 addresses that carry an IPv4 address
(IPv4-mapped and -compatible, SIIT, NAT64, 6to4, Teredo) are judged by that
address too, since a host with the matching translation reaches it. A host is
an IP address however it is spelled: `127.1`, `2130706433`, `0x7f000001` and
`0177.0.0.1` are all 127.0.0.1 to the resolver, to curl and to browsers.

Three doors use it: `refused_now` judges at `apply` every host an account's
routine names (`routined.operations.tenancy`); the egress proxy calls `resolve` for
each connection a run makes; and git, which resolves names itself, is given
`git_pin`'s options so that it connects only to the addresses judged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit

from routined.errors import NotAllowed

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata services: link-local or private mostly, named here so a refusal
# says what they are, and for those Python counts as global (Oracle's).
_METADATA = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",
        "169.254.170.2",
        "100.100.100.200",
        "192.0.0.192",
        "fd00:ec2::254",
    )
)
# Special-purpose blocks Python 3.11's `is_global` lets through.
_NOT_PUBLIC: tuple[tuple[Network, str], ...] = (
    (ipaddress.ip_network("192.0.0.0/24"), "an IETF protocol address"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "a local-use NAT64 address (RFC 8215)"),
    (ipaddress.ip_network("fec0::/10"), "a site-local address"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")

# The forms inet_aton reads as IPv4: one to four numbers, each decimal, octal
# (leading 0) or hex (0x), with the trailing dot a name may have.
_NUMBERS = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)
# A host name as every client reads it alike: ASCII labels, an optional final dot.
_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?", re.IGNORECASE)
_DEFAULT_PORTS = {"https": 443, "http": 80}

# At `apply`: how long names may take to resolve in all, and how many at once.
# A name not resolved by then is judged at each connection, like one whose DNS
# is down; the wait is bounded because the store's transaction is open meanwhile.
APPLY_WAIT = 3.0
_RESOLVERS = 8


class Unreachable(NotAllowed, ValueError):
    """The host may not be reached (or does not resolve); the message says why."""


class Unresolved(Unreachable):
    """The name does not resolve, now. Whoever judges ahead of a connection may let
    it be (it is judged again when something connects); a connection may not."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, by any translation that reaches it."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's: where a packet to it goes
    if address in _NAT64 or address in _SIIT or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why an account's routine may not reach `address` (None: it may), e.g.
    "127.0.0.1 is a loopback address (this machine)".

    `allowed` are the private networks the operator opened to accounts.
    """
    if _allowed(address, allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            what = None if _allowed(inner, allowed) else _kind(inner)
            if what is not None:
                return f"{address} carries {inner}, {what}"
            if _translates(address):
                # Mapped, SIIT and well-known NAT64 addresses go where their IPv4
                # address goes (64:ff9b::808:808 is 8.8.8.8); Python calls their
                # blocks reserved, which says nothing about that.
                return None
    what = _kind(address)
    return None if what is None else f"{address} is {what}"


def _translates(address: ipaddress.IPv6Address) -> bool:
    return address.ipv4_mapped is not None or address in _SIIT or address in _NAT64


def _allowed(address: Address, allowed: Sequence[Network]) -> bool:
    return any(address in network for network in allowed if network.version == address.version)


def _kind(address: Address) -> str | None:
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address (this machine)"
    if address.is_unspecified:
        return "the unspecified address (this machine)"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    for network, what in _NOT_PUBLIC:
        if address.version == network.version and address in network:
            return what
    if isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL:
        return "a unique-local address (a private network)"
    if address.is_private:
        return "a private address"
    if not address.is_global or address.is_reserved:
        return "not a public address"
    return None


def literal(host: str) -> Address | None:
    """`host` as an IP address when it is written as one (brackets allowed), in any
    spelling the resolver takes: `127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    if not _NUMBERS.fullmatch(text):
        return None
    try:
        # The C library's own reading, the one curl and getaddrinfo share.
        return ipaddress.IPv4Address(socket.inet_aton(text.removesuffix(".")))
    except OSError:
        return None


def names_this_machine(host: str) -> bool:
    """Whether `host` is this machine's by definition (`localhost`, `*.localhost`)."""
    # Resolvers (curl's among them) answer these themselves, whatever DNS says.
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def judge(host: str, addresses: Sequence[str], allowed: Sequence[Network] = ()) -> list[str]:
    """`addresses` (what `host` resolved to), or Unreachable if any of them is refused
    (a name with one private address among public ones could be made to use it) or
    the name is this machine's own."""
    if names_this_machine(host):
        raise Unreachable(f"{host} names this machine")
    if not addresses:
        raise Unresolved(f"{host} does not resolve")
    written = literal(host)
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        why = refusal(address, allowed)
        if why is None:
            continue
        if written is None:
            raise Unreachable(f"{host} resolves to {address}: {why}")
        if _spelled(host):
            raise Unreachable(f"{host} means {address}: {why}")
        raise Unreachable(why)
    return list(addresses)


def _spelled(host: str) -> bool:
    """Whether `host` is an IPv4 address in one of inet_aton's other spellings."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return True
    return False


async def resolve(host: str, port: int, allowed: Sequence[Network] = ()) -> list[str]:
    """The addresses of `host` to connect to, each judged; Unreachable says why not
    (Unresolved when the name does not resolve)."""
    known = _without_lookup(host)
    if known is not None:
        return judge(host, known, allowed)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise Unresolved(f"{host} does not resolve") from None
    return judge(host, _distinct(found), allowed)


def resolve_now(host: str, port: int, allowed: Sequence[Network] = ()) -> list[str]:
    """`resolve`, for code outside an event loop."""
    known = _without_lookup(host)
    if known is not None:
        return judge(host, known, allowed)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise Unresolved(f"{host} does not resolve") from None
    return judge(host, _distinct(found), allowed)


def _without_lookup(host: str) -> list[str] | None:
    """What `host` is without asking a resolver: its address when it is written as
    one, nothing for this machine's names (judged as such); None for other names."""
    if names_this_machine(host):
        return []
    address = literal(host)
    return None if address is None else [str(address)]


def _distinct(found: Sequence[tuple[Any, ...]]) -> list[str]:
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def refused_now(
    hosts: Iterable[str], allowed: Sequence[Network] = (), *, within: float = APPLY_WAIT
) -> dict[str, str]:
    """Why each of `hosts` that is refused is, by host; hosts not in the answer may
    be named.

    Addresses and this machine's names are judged as written. Names are resolved a
    few at a time, for at most `within` seconds in all; one that does not resolve
    (or not in time) is not refused here, since DNS may be down: it is judged again
    at each connection. No port takes part, so a refusal never depends on whether
    anything listens.
    """
    refused: dict[str, str] = {}
    names = []
    ordered = list(dict.fromkeys(hosts))
    for host in ordered:
        if _without_lookup(host) is None:
            names.append(host)
            continue
        try:
            resolve_now(host, 0, allowed)
        except Unreachable as why:
            refused[host] = str(why)
    if not names:
        return refused
    pool = ThreadPoolExecutor(min(_RESOLVERS, len(names)), thread_name_prefix="reach")
    try:
        pending = {pool.submit(resolve_now, name, 0, allowed): name for name in names}
        done, _late = wait(pending, timeout=within)
    finally:
        # A lookup still running ends on its own (the resolver has its timeout).
        pool.shutdown(wait=False, cancel_futures=True)
    for future in done:
        error = future.exception()
        if isinstance(error, Unreachable) and not isinstance(error, Unresolved):
            refused[pending[future]] = str(error)
        elif error is not None and not isinstance(error, Unresolved):
            raise error
    return {host: refused[host] for host in ordered if host in refused}


def endpoint(url: str, schemes: Sequence[str] = ("https", "http")) -> tuple[str, int]:
    """The host and port `url` connects to, the host as written (in lower case, an
    IPv6 address in brackets); Unreachable when `url` is not one of `schemes`, or is
    written so that clients could disagree on its host (they must all connect where
    it was judged)."""
    if not url.isascii() or any(not char.isprintable() or char.isspace() for char in url):
        raise Unreachable(
            "the URL has spaces, control or non-ASCII characters; write an international "
            "name in its xn-- form and percent-encode the rest"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise Unreachable("the URL's host cannot be read") from None
    if parts.scheme.lower() not in schemes:
        raise Unreachable(f"the URL is not {' or '.join(schemes)}")
    authority = parts.netloc.rpartition("@")[2]
    if parts.netloc.count("@") > 1 or "\\" in parts.netloc or "%" in authority:
        raise Unreachable(
            "the URL's host is written ambiguously (more than one @, a backslash or a %); "
            "percent-encode them in the user name or password"
        )
    bracketed = authority.startswith("[")
    if bracketed:
        try:
            host = f"[{ipaddress.IPv6Address(host)}]"
        except ValueError:
            raise Unreachable("the URL has no IPv6 address between its brackets") from None
    elif not _NAME.fullmatch(host):
        raise Unreachable("the URL's host is not a host name or an IP address")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme.lower()]
    except ValueError:
        raise Unreachable("the URL's port is not a number from 1 to 65535") from None
    return host, port


def entry_host(entry: str) -> tuple[str, bool]:
    """The host of an `allowed_hosts` entry (`host`, `host:port`, `[v6]:port`,
    `*.domain`, checked by `routined.sandbox.network.check_host`) and whether it is a
    wildcard's domain, which names no host to resolve before a connection."""
    if entry.startswith("["):
        return entry[: entry.index("]") + 1], False
    host = entry.partition(":")[0]
    return host.removeprefix("*."), host.startswith("*.")


async def git_pin(url: str, allowed: Sequence[Network] = ()) -> list[str]:
    """git options (`-c …`) that make git reach `url`'s host at addresses judged now
    and nowhere else; Unreachable (Unresolved for a name that does not resolve)
    before git runs when it may not."""
    host, port = endpoint(url)
    return pin_options(host, port, await resolve(host, port, allowed))


def git_pin_now(url: str, allowed: Sequence[Network] = ()) -> list[str]:
    """`git_pin`, for code outside an event loop."""
    host, port = endpoint(url)
    return pin_options(host, port, resolve_now(host, port, allowed))


def pin_options(host: str, port: int, addresses: Sequence[str]) -> list[str]:
    """git options that connect to `host:port` at `addresses` only.

    git resolves the host itself (through curl): `http.curloptResolve` hands curl
    the addresses instead, for the host as curl reads it (curl does not drop a
    final dot, so both spellings are pinned). What else could send git elsewhere
    is turned off: redirects, which curl would follow to a host it resolves itself
    (and which also govern dumb HTTP's `http-alternates`), and protocol v2, whose
    `packfile-uris` section a server may send unasked, making git download a pack
    from any URL it names. An IPv6 address is its own address: curl looks nothing
    up for it, and `CURLOPT_RESOLVE` cannot name one.
    """
    options = ["-c", "http.followRedirects=false", "-c", "protocol.version=0"]
    if host.startswith("["):
        return options
    pinned = ",".join(f"[{text}]" if ":" in text else text for text in addresses)
    bare = host.lower().removesuffix(".")
    for name in (bare, f"{bare}."):
        options += ["-c", f"http.curloptResolve={name}:{port}:{pinned}"]
    return options
