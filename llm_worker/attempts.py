"""Counts how many times the LLM stage started a turn, across crashes and replicas."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable


class TurnAttempts:
    def __init__(self, redis: Redis, ttl_s: int = 24 * 3600) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    async def begin(self, turn_id: str) -> int:
        """Record a start of the turn; returns which attempt this is (1 = first)."""
        key = f"soma:turn-attempts:{turn_id}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, self._ttl_s)
                count, _ = await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable(f"redis unavailable: {exc!r}") from exc
        return int(count)
