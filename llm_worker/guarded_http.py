"""HTTP clients of the LLM stage that check every connection against the egress policy.

The ingress checked a profile's `base_url` when it was written; these check the address
each connection is actually opened to, when it is opened: the name is resolved here, every
address it gives is judged (gateway_runtime/egress.py), and the socket connects to an
address that was judged, so a name that now resolves elsewhere (DNS rebinding), a row
written behind the API's back or a forged turn gains nothing. TLS still verifies the
certificate against the name in the URL.

`guarded_client` is the LLM stage's one HTTP client: the lean OpenAI-compatible adapter's,
and LiteLLM's (llm_worker/litellm_model.py says how it is handed to LiteLLM). It does not
read HTTP(S)_PROXY (through a proxy the address connected to would be the proxy's) and
does not follow redirects.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

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
