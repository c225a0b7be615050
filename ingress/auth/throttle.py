"""Failed authentications, per credential and per client address: past a limit, 429.

Guessing a key is hopeless (256 bits), but every bad credential costs a Redis or Postgres
lookup, a JWT verification, a log line: a client that keeps failing is stopped before
any of that. Failures are counted twice, in windows of `window_s`:
- per (address, credential): a client retrying one bad credential (an old key in a
  script's loop) gets 429 for it after `limit` failures; the address's other credentials
  are still checked;
- per address, with a cap ADDRESS_FACTOR times higher: a client trying many credentials
  gets 429 for every credential this process has not seen verify.
A credential that verified here before (a bounded set of keyed fingerprints) is always
checked, even from an address over its cap: an address is shared (a NAT, loopback with
auth off, where any local process may send bad keys), and a guesser must not lock an
operator out, and the exemption is worth nothing to a guesser, who has no good credential.
The price: a good credential this process has not seen yet waits for the window's end
while its address is over the cap.

The counts live in this process (dicts, no Redis): a request with good credentials costs
a fingerprint and two dictionary lookups, and a client spreading its failures over N
replicas gets N times the limit, which is still a limit. The address is the connection's
peer (behind a proxy: what uvicorn's `--forwarded-allow-ips` lets the proxy say).
Fingerprints are keyed with a secret of the process, so they say nothing of the
credential outside it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Hashable

ADDRESS_FACTOR = 10  # an address's cap, in failures of any credentials: limit x this
MAX_VERIFIED = 50_000  # fingerprints of credentials seen to verify, least recent dropped


class _Windows:
    """Failures per key in fixed windows; oldest first, bounded."""

    def __init__(self, window_s: float, max_keys: int) -> None:
        self._window_s = window_s
        self._max_keys = max_keys
        self._windows: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def failures(self, key: Hashable) -> tuple[int, float]:
        """Failures of `key` in its window, and the seconds the window has left."""
        entry = self._windows.get(key)
        if entry is None:
            return 0, 0.0
        start, failures = entry
        left = start + self._window_s - time.monotonic()
        if left <= 0:
            del self._windows[key]
            return 0, 0.0
        return failures, left

    def add(self, key: Hashable) -> None:
        now = time.monotonic()
        start, failures = self._windows.pop(key, (now, 0))
        if now - start >= self._window_s:
            start, failures = now, 0
        self._windows[key] = (start, failures + 1)
        if len(self._windows) > self._max_keys:
            self._windows.popitem(last=False)


class FailedAuthThrottle:
    def __init__(self, limit: int, window_s: float, *, max_clients: int = 100_000) -> None:
        self._limit = limit  # 0: no limit
        self._per_credential = _Windows(window_s, max_clients)
        self._per_address = _Windows(window_s, max_clients)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._secret = secrets.token_bytes(32)

    def fingerprint(self, credential: str) -> bytes:
        return hashlib.blake2b(credential.encode(), key=self._secret, digest_size=16).digest()

    def retry_after(self, client: str, fingerprint: bytes) -> float | None:
        """Seconds until `client` may try this credential again; None when it may now."""
        if not self._limit or fingerprint in self._verified:
            return None
        failures, left = self._per_credential.failures((client, fingerprint))
        if failures >= self._limit:
            return left
        failures, left = self._per_address.failures(client)
        if failures >= self._limit * ADDRESS_FACTOR:
            return left
        return None

    def failed(self, client: str, fingerprint: bytes) -> None:
        """Count one failed authentication of `client` with this credential."""
        self._verified.pop(fingerprint, None)  # revoked since, say
        if self._limit:
            self._per_credential.add((client, fingerprint))
            self._per_address.add(client)

    def verified(self, fingerprint: bytes) -> None:
        """The credential verified: from now on it is checked whatever its address did."""
        self._verified[fingerprint] = None
        self._verified.move_to_end(fingerprint)
        if len(self._verified) > MAX_VERIFIED:
            self._verified.popitem(last=False)
