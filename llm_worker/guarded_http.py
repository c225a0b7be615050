"""HTTP clients of the LLM stage that check every connection against the egress policy.

The ingress checked a profile's `base_url` when it was written; these check the address
each connection is actually opened to, when it is opened: the name is resolved here, every
address it gives is judged (gateway_runtime/egress.py), and the socket connects to an
address that was judged, so a name that now resolves elsewhere (DNS rebinding), a row
written behind the API's back or a forged turn gains nothing. TLS still verifies the
certificate against the name in the URL.

Two clients, each made once per process, both judged by the same policy:
- `guarded_session` (aiohttp) is the lean OpenAI-compatible adapter's: on the hot path,
  where aiohttp reads a streamed answer for a third to a half of httpx's CPU
  (docs/benchmarks.md);
- `guarded_client` (httpx) is LiteLLM's (llm_worker/litellm_model.py says how it is
  handed over), since LiteLLM's routes take an httpx client.
Neither reads HTTP(S)_PROXY (through a proxy the address connected to would be the
proxy's); neither follows redirects (the lean adapter asks for none).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import httpcore
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway_runtime.egress import FORBIDDEN, EgressPolicy
from gateway_runtime.errors import EgressRefused


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy admits."""

    def __init__(
        self, policy: EgressPolicy, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._policy.addresses(host, port, timeout_s=timeout or 5.0)
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # `addresses` is never empty
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused(FORBIDDEN, "model endpoints are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over `GuardedBackend`.

    httpx does not let its transport take a network backend, so the connection pool
    (`_pool`, httpx 0.28) is built again, with the same limits and that backend."""

    def __init__(self, policy: EgressPolicy, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )


def guarded_client(
    policy: EgressPolicy, *, timeout: httpx.Timeout, limits: httpx.Limits
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=timeout,
        transport=GuardedTransport(policy, limits),
        trust_env=False,
        follow_redirects=False,
    )


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver through the policy: a name resolves to the addresses the policy
    judged, all of them admitted, or the connection fails with EgressRefused."""

    def __init__(self, policy: EgressPolicy, timeout_s: float) -> None:
        self._policy = policy
        self._timeout_s = timeout_s

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await self._policy.addresses(host, port, timeout_s=self._timeout_s)
        return [
            ResolveResult(
                hostname=host,
                host=str(ip),
                port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in addresses
        ]

    async def close(self) -> None:
        return None


def judged_socket(policy: EgressPolicy) -> Callable[[tuple[Any, ...]], socket.socket]:
    """aiohttp's socket factory: the address about to be connected to is judged first.
    aiohttp does not resolve an address written in the URL, so this is where those are
    judged; a resolved name's addresses were judged by `GuardedResolver` already."""

    def make(addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        policy.check(ipaddress.ip_address(sockaddr[0]), sockaddr[1])
        return socket.socket(family, kind, proto)

    return make


def guarded_session(
    policy: EgressPolicy, *, read_timeout_s: float, connect_timeout_s: float, limit: int
) -> aiohttp.ClientSession:
    """The lean adapter's client: at most `limit` connections, no total deadline (a long
    answer streams as long as it needs), `read_timeout_s` between two reads."""
    connector = aiohttp.TCPConnector(
        limit=limit,
        resolver=GuardedResolver(policy, connect_timeout_s),
        socket_factory=judged_socket(policy),
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=read_timeout_s,  # a free connection, then the connect itself
        sock_connect=connect_timeout_s,
        sock_read=read_timeout_s,
    )
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)
