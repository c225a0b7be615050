"""A session's events for one client: the durable log first, then live, without gaps.

The client's queue is registered with the hub before the log is read, so nothing
published in between is missed; ids at or before the last one sent are skipped, so
nothing is sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.fanout import stream_key
from ingress.hub import RESYNC, FanoutHub, Item


def _order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def valid_event_id(value: str) -> bool:
    ms, _, seq = value.partition("-")
    return ms.isdigit() and seq.isdigit() and len(value) <= 40


class SessionEvents:
    def __init__(self, redis: Redis, hub: FanoutHub) -> None:
        self._redis = redis
        self._hub = hub

    async def _log_after(self, session_id: str, after: str | None) -> list[Item]:
        try:
            entries = await self._redis.xrange(
                stream_key(session_id), min=f"({after}" if after else "-", max="+"
            )
        except RedisError as exc:
            raise DependencyUnavailable(f"event log unavailable: {exc!r}") from exc
        return [(i.decode(), f[b"t"].decode(), f[b"e"].decode()) for i, f in entries]

    async def follow(
        self, session_id: str, after: str | None, keepalive_s: float
    ) -> AsyncIterator[Item | None]:
        """Yield events after `after` (all retained ones if None); None = keep-alive tick."""
        with self._hub.subscribe(session_id) as queue:
            last = after
            for item in await self._log_after(session_id, last):
                last = item[0]
                yield item
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), keepalive_s)
                except TimeoutError:
                    yield None
                    continue
                if item is RESYNC:
                    for logged in await self._log_after(session_id, last):
                        last = logged[0]
                        yield logged
                    continue
                if last is not None and _order(item[0]) <= _order(last):
                    continue
                last = item[0]
                yield item
