"""Where a model profile may send the gateway: the egress policy that stops SSRF.

A profile's `base_url` is an address the LLM stage calls on someone's behalf, with the
profile's credential and the tenant's prompt. Whoever writes profiles must not be able to
turn that into requests to the gateway's own network (the cloud metadata service, the
admin ports of Redis, OPA or OpenFGA on loopback, a private database). So a model endpoint
may be only:

- `http` or `https`, without userinfo (`user:pass@`);
- at addresses that are globally routable: not loopback, unspecified, link-local,
  private, shared (100.64/10), multicast, reserved or documentation ranges, in IPv4 or
  IPv6, judging the IPv4 address inside IPv4-mapped, IPv4-compatible, 6to4, Teredo and
  NAT64 addresses too, and reading numeric spellings (`0x7f000001`, `2130706433`,
  `0177.0.0.1`, `127.1`) as the C resolver does;
- unless MODEL_EGRESS_ALLOW lists the address: an IP or a CIDR, with or without a port
  (`127.0.0.1:18088`, `10.20.0.0/16`, `[fd00::5]:8000`). Names are not accepted there:
  an allow-list by name is only as strong as whoever answers for that name.

A name is judged by every address it resolves to. The ingress checks when a profile is
written (422 with `code`); the LLM stage checks again each time it opens a connection, on
the addresses it then connects to (llm_worker/guarded_http.py), so a name that resolves to
a public address at validation and to a private one later (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway_runtime.errors import EgressRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

INVALID = "base_url_invalid"
FORBIDDEN = "base_url_forbidden"
UNRESOLVABLE = "base_url_unresolvable"

# IPv6 prefixes that carry an IPv4 address in their last 32 bits (besides the ones
# `ipaddress` unwraps): IPv4-compatible (deprecated) and NAT64 (RFC 6052, RFC 8215).
_V4_IN_LOW_BITS = tuple(
    ipaddress.IPv6Network(n) for n in ("::/96", "64:ff9b::/96", "64:ff9b:1::/48")
)
# What inet_aton reads as an IPv4 address: digits, dots, hex (0x..) and octal (0..) parts.
_NUMERIC_HOST = re.compile(r"[0-9][0-9a-fA-FxX.]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL points: its scheme, its host (no brackets, lower case) and its port."""

    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One MODEL_EGRESS_ALLOW entry: a network and, optionally, the one port it allows."""

    network: IPNetwork
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        text = text.strip()
        host, port = text, None
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else None
        elif text.count(":") == 1:  # IPv4 or CIDR with a port (IPv6 needs brackets then)
            host, _, number = text.partition(":")
            port = int(number)
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError as exc:
            raise ValueError(
                f"MODEL_EGRESS_ALLOW entry {text!r}: an IP address or CIDR, optionally with"
                " :port, not a name"
            ) from exc
        return cls(network, port)

    def admits(self, ip: IPAddress, port: int) -> bool:
        return ip in self.network and self.port in (None, port)


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, if it is one (any spelling the C resolver accepts)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _candidates(ip: IPAddress) -> list[IPAddress]:
    """The address and every IPv4 address it carries (checked first: they name it best)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return [ip]
    inner: list[IPAddress] = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo:
        inner.extend(ip.teredo)
    if int(ip) > 1 and any(ip in net for net in _V4_IN_LOW_BITS):  # not :: or ::1
        inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [*inner, ip]


def non_global_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address (None if it is)."""
    for address in _candidates(ip):
        for reason, hit in (
            ("loopback", address.is_loopback),
            ("unspecified", address.is_unspecified),
            ("link-local", address.is_link_local),
            ("multicast", address.is_multicast),
            ("private", address.is_private),
            ("reserved", address.is_reserved),
        ):
            if hit:
                return reason
        if not address.is_global:
            return "not globally routable"
    return None


def parse_target(url: str) -> Target:
    """Scheme, host and port of a model endpoint URL; EgressRefused if it cannot be one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EgressRefused(INVALID, f"base_url {url!r} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise EgressRefused(INVALID, "base_url must be an http or https URL")
    if "@" in parts.netloc:
        raise EgressRefused(INVALID, "base_url may not carry credentials (user:password@)")
    if not parts.hostname:
        raise EgressRefused(INVALID, "base_url has no host")
    return Target(scheme, parts.hostname, port or _DEFAULT_PORTS[scheme])


class EgressPolicy:
    """Decides which addresses the gateway may open model connections to."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self._allow = tuple(AllowEntry.parse(entry) for entry in allow)

    def refusal(self, ip: IPAddress, port: int) -> str | None:
        """Why the gateway may not connect to ip:port (None: it may)."""
        reason = non_global_reason(ip)
        if reason is None:
            return None
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if any(entry.admits(plain or ip, port) for entry in self._allow):
            return None
        return reason

    def check(self, ip: IPAddress, port: int, shown: str | None = None) -> None:
        """EgressRefused unless the gateway may connect to ip:port (`shown`: how the
        error names the endpoint, the address itself by default)."""
        reason = self.refusal(ip, port)
        if reason is not None:
            raise EgressRefused(
                FORBIDDEN,
                f"{shown or ip} port {port} is not a public address ({reason}) and"
                " MODEL_EGRESS_ALLOW does not list it",
            )

    async def addresses(self, host: str, port: int, timeout_s: float = 5.0) -> list[IPAddress]:
        """Every address host:port resolves to, if the policy admits them all; else
        EgressRefused. A name with one forbidden address among public ones is refused:
        which of them a client library would pick is not ours to guess."""
        literal = literal_address(host)
        found = [literal] if literal is not None else await _resolve(host, port, timeout_s)
        for ip in found:
            shown = host if literal is not None else f"{host} (resolves to {ip})"
            self.check(ip, port, shown)
        return found

    async def check_url(self, url: str) -> Target:
        """The URL's target, once its scheme, form and every address pass the policy."""
        target = parse_target(url)
        await self.addresses(target.host, target.port)
        return target


async def _resolve(host: str, port: int, timeout_s: float) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # socket.gaierror is an OSError; a name IDNA cannot encode raises a UnicodeError.
    except (OSError, TimeoutError, UnicodeError) as exc:
        raise EgressRefused(UNRESOLVABLE, f"{host} does not resolve ({exc})") from exc
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]))
        if ip not in found:
            found.append(ip)
    if not found:
        raise EgressRefused(UNRESOLVABLE, f"{host} resolves to no address")
    return found
