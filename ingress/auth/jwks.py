"""The identity provider's signing keys (JWKS), fetched once for everyone who needs them.

An IdP outage must not become a gateway outage, nor serialize every request behind a
fetch that hangs. So:
- a known `kid` is answered from the keys in hand, even stale ones (older than
  JWKS_CACHE_S): a stale set starts one refresh in the background, nobody waits for it;
- an unknown `kid` needs a fetch; every request that needs one shares the one in flight
  (single flight), which lasts at most JWKS_FETCH_TIMEOUT_S. After a successful fetch an
  unknown `kid` refetches at most every REFETCH_MIN_S, so forged kids cannot hammer the IdP;
  an unknown `kid` refused within that window was not looked up (`UnknownSigningKey.looked_up`
  is False): it may be a key the IdP published since, so it is no failed login
  (ingress/auth/throttle.py);
- after a failed fetch there is none for a backoff (JWKS_BACKOFF_S, doubled per failure
  up to JWKS_BACKOFF_MAX_S): meanwhile a request that needs the IdP fails at once with
  `JwksUnavailable` (503 with Retry-After), and known keys keep working. A body that holds
  no usable key set (`[]`, `null`, HTML, keys PyJWT refuses) is a failed fetch like a
  timeout: whatever the IdP answers must not become a 500 nor skip the backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import jwt

log = logging.getLogger(__name__)

REFETCH_MIN_S = 30.0


class UnknownSigningKey(Exception):
    """The JWKS has no key with this `kid`: freshly fetched (`looked_up`), or fetched less
    than REFETCH_MIN_S ago and not fetched again for it."""

    def __init__(self, kid: str, *, looked_up: bool) -> None:
        super().__init__(f"no signing key {kid!r} in the JWKS")
        self.looked_up = looked_up


class JwksUnavailable(Exception):
    """The JWKS cannot be fetched now; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JwksCache:
    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        cache_s: float,
        fetch_timeout_s: float,
        backoff_s: float,
        backoff_max_s: float,
    ) -> None:
        self._url = url
        self._http = http
        self._cache_s = cache_s
        self._fetch_timeout_s = fetch_timeout_s
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -1e9
        self._fetch: asyncio.Task[bool] | None = None  # the one in flight
        self._failures = 0  # in a row
        self._retry_at = 0.0  # no fetch before this (monotonic), after a failure
        self.fetches = 0  # started, for the metrics and tests

    async def key(self, kid: str) -> Any:
        """The verification key named `kid`."""
        found = self._keys.get(kid)
        if found is not None:
            if time.monotonic() - self._fetched_at >= self._cache_s:
                self._start_fetch()  # stale: refreshed in the background, used meanwhile
            return found.key
        fetch = self._fetch or self._fetch_for_unknown(kid)
        # shield: a request that gives up (client gone) does not cancel everyone's fetch
        if not await asyncio.shield(fetch):
            raise self._unavailable()
        found = self._keys.get(kid)
        if found is None:
            raise UnknownSigningKey(kid, looked_up=True)
        return found.key

    def _fetch_for_unknown(self, kid: str) -> asyncio.Task[bool]:
        now = time.monotonic()
        if now < self._retry_at:
            raise self._unavailable()
        if self._keys and now - self._fetched_at < REFETCH_MIN_S:
            raise UnknownSigningKey(kid, looked_up=False)
        fetch = self._start_fetch()
        assert fetch is not None  # none in flight, not in backoff: one was started
        return fetch

    def _start_fetch(self) -> asyncio.Task[bool] | None:
        """The fetch in flight, starting one unless in backoff."""
        if self._fetch is None and time.monotonic() >= self._retry_at:
            self.fetches += 1
            self._fetch = asyncio.create_task(self._fetch_keys(), name="jwks-fetch")
        return self._fetch

    async def _fetch_keys(self) -> bool:
        """Fetch the JWKS; True when the keys were replaced. Never raises."""
        try:
            async with asyncio.timeout(self._fetch_timeout_s):
                response = await self._http.get(self._url, timeout=self._fetch_timeout_s)
            response.raise_for_status()
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError(f"the JWKS is a JSON {type(body).__name__}, not an object")
            keyset = jwt.PyJWKSet.from_dict(body)
        except Exception as exc:  # whatever the IdP answers, or fails to: a failed fetch
            self._failures += 1
            backoff = min(self._backoff_max_s, self._backoff_s * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + backoff
            log.warning(
                "JWKS fetch failed; keeping the keys in hand, next try in %.0fs: %r",
                backoff,
                exc,
            )
            return False
        else:
            self._keys = {k.key_id or "": k for k in keyset.keys}
            self._fetched_at = time.monotonic()
            self._failures, self._retry_at = 0, 0.0
            return True
        finally:
            self._fetch = None

    def _unavailable(self) -> JwksUnavailable:
        wait = max(1.0, self._retry_at - time.monotonic())
        return JwksUnavailable("the identity provider's keys (JWKS) cannot be fetched now", wait)
