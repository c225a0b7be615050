"""Whether to ask Redis now: after a failure, not until a background probe answers.

A stopped Redis refuses a connection at once, but a hung one (SIGSTOP, a wedged host)
costs REDIS_TIMEOUT_S per command: without a gate every key lookup, rate-limit check and
breaker update of every turn would wait that long before its fallback. With one, the
calls in flight when Redis fails wait once; later calls go straight to their fallback
while a PING probes Redis in the background once a second, and its first answer
switches every user of the gate back to Redis, with no operator action. The probe runs
whether or not calls arrive, so a quiet process is back as soon as a busy one.

One gate per Redis client (`RedisGate.of(redis)`: every user of a client shares it, so
one failure sends all of them to their fallbacks at once). Its users report failures
(`failed`: logged once per outage, counted in `soma_redis_outages_total`) and count
every call they served from a fallback (`fallback`: `soma_redis_fallbacks_total{use}`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0

REDIS_OUTAGES = Counter(
    "soma_redis_outages_total", "Times a process found Redis unavailable and fell back"
)
REDIS_FALLBACKS = Counter(
    "soma_redis_fallbacks_total",
    "Calls served without Redis (Postgres or a safe default), by what they were for",
    ["use"],
)


class RedisGate:
    _of_client: weakref.WeakKeyDictionary[Redis, RedisGate] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, redis: Redis) -> RedisGate:
        """The gate of this Redis client (created on first use)."""
        gate = cls._of_client.get(redis)
        if gate is None:
            gate = cls._of_client[redis] = cls(redis)
        return gate

    def __init__(self, redis: Redis, *, probe_interval_s: float = PROBE_INTERVAL_S) -> None:
        self._redis = redis
        self._interval = probe_interval_s
        self._down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None
        # Outages seen so far: a user that must reconcile after one compares it.
        self.outages = 0

    def available(self) -> bool:
        """True when Redis may be asked (it answered last time, or a probe since)."""
        return self._down_since is None

    def failed(self, use: str, exc: BaseException) -> None:
        """A call to Redis failed: skip Redis until a probe answers."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self.outages += 1
        REDIS_OUTAGES.inc()
        log.warning(
            "redis unavailable (%s: %r); falling back, probing every %.1f s",
            use,
            exc,
            self._interval,
        )
        self._probe = asyncio.create_task(self._probe_until_up())

    @staticmethod
    def fallback(use: str) -> None:
        REDIS_FALLBACKS.labels(use).inc()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)

    async def _probe_until_up(self) -> None:
        """PING once a second, whether or not anything asks, until Redis answers."""
        while self._down_since is not None:
            await asyncio.sleep(self._interval)
            try:
                await self._redis.ping()
            except (RedisError, OSError):
                continue
            log.info("redis is back after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
