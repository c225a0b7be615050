"""Counts how many times the LLM stage started a turn, across crashes and replicas.

Without Redis the count is unknown and every start counts as the first: the turn still
runs, and its end is still published once (the fallback event log keeps the once-key).
While the process's `RedisGate` says Redis is down it is not asked at all.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys

log = logging.getLogger(__name__)


class TurnAttempts:
    """The `Attempts` port in Redis, shared by every LLM worker."""

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        ttl_s: int = 24 * 3600,
        *,
        gate: RedisGate | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._gate = gate or RedisGate.of(redis)

    async def begin(self, turn_id: str) -> int:
        """Record a start of the turn; returns which attempt this is (1 = first)."""
        key = self._keys.turn_attempts(turn_id)
        if not self._gate.available():
            self._gate.fallback("turn_attempts")
            return 1
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, self._ttl_s)
                count, _ = await pipe.execute()
        except RedisError as exc:
            self._gate.failed("turn_attempts", exc)
            self._gate.fallback("turn_attempts")
            log.warning("attempt count unavailable (%r); assuming a first attempt", exc)
            return 1
        return int(count)
