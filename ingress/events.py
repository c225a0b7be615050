"""A session's events for one client: the durable log first, then live, without gaps.

The client's queue is registered with the hub before the log is read, so nothing
published in between is missed; ids at or before the last one sent are skipped, so
nothing is sent twice. While the hub has no Redis subscription, the Postgres fallback
log (where the stages publish during a Redis outage) is polled instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.event_log import PG_ID_PREFIX, PostgresEventLog
from gateway_runtime.fanout import FanoutKeys
from ingress.hub import RESYNC, FanoutHub, Item

FALLBACK_POLL_S = 0.5


def _order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def valid_event_id(value: str) -> bool:
    if value.startswith(PG_ID_PREFIX):
        return value[len(PG_ID_PREFIX) :].isdigit() and len(value) <= 30
    ms, _, seq = value.partition("-")
    return ms.isdigit() and seq.isdigit() and len(value) <= 40


class _Cursor:
    """Where a client is in each log: the Redis stream id and the fallback log id."""

    def __init__(self) -> None:
        self.redis_id: str | None = None
        self.pg_id = 0
        self.ts_ms = 0

    def seen(self, item: Item) -> bool:
        if item[0].startswith(PG_ID_PREFIX):
            return int(item[0][len(PG_ID_PREFIX) :]) <= self.pg_id
        return self.redis_id is not None and _order(item[0]) <= _order(self.redis_id)

    def advance(self, item: Item, ts_ms: int | None = None) -> None:
        if item[0].startswith(PG_ID_PREFIX):
            self.pg_id = int(item[0][len(PG_ID_PREFIX) :])
            self.ts_ms = max(self.ts_ms, ts_ms or 0)
        else:
            self.redis_id = item[0]
            self.ts_ms = max(self.ts_ms, _order(item[0])[0])


class SessionEvents:
    def __init__(
        self, redis: Redis, hub: FanoutHub, fallback: PostgresEventLog, keys: FanoutKeys
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._hub = hub
        self._fallback = fallback

    async def _redis_after(self, session_id: str, cursor: _Cursor) -> list[Item]:
        if cursor.redis_id:
            low = f"({cursor.redis_id}"
        elif cursor.ts_ms:
            low = f"{cursor.ts_ms + 1}-0"
        else:
            low = "-"
        try:
            entries = await self._redis.xrange(self._keys.stream(session_id), min=low, max="+")
        except RedisError:
            return []  # Redis is down: the fallback log is what there is
        return [(i.decode(), f[b"t"].decode(), f[b"e"].decode()) for i, f in entries]

    async def _fallback_after(self, session_id: str, cursor: _Cursor) -> list[tuple[Item, int]]:
        after_ts = 0 if cursor.pg_id else (_order(cursor.redis_id)[0] if cursor.redis_id else 0)
        rows = await self._fallback.after(session_id, after_id=cursor.pg_id, after_ts_ms=after_ts)
        return [((i, t, p), ts) for i, t, p, ts in rows]

    async def _catch_up(self, session_id: str, cursor: _Cursor) -> list[Item]:
        """Unseen events of both logs, merged by time."""
        merged: list[tuple[int, Item]] = [
            (_order(item[0])[0], item) for item in await self._redis_after(session_id, cursor)
        ]
        merged += [(ts, item) for item, ts in await self._fallback_after(session_id, cursor)]
        merged.sort(key=lambda pair: pair[0])
        fresh = []
        for ts, item in merged:
            if not cursor.seen(item):
                cursor.advance(item, ts)
                fresh.append(item)
        return fresh

    async def follow(
        self, session_id: str, after: str | None, keepalive_s: float
    ) -> AsyncIterator[Item | None]:
        """Yield events after `after` (all retained ones if None); None = keep-alive tick."""
        cursor = _Cursor()
        if after and after.startswith(PG_ID_PREFIX):
            cursor.pg_id = int(after[len(PG_ID_PREFIX) :])
            cursor.ts_ms = await self._fallback.ts_of(cursor.pg_id)
        elif after:
            cursor.redis_id = after
        with self._hub.subscribe(session_id) as queue:
            try:
                for item in await self._catch_up(session_id, cursor):
                    yield item
            except DependencyUnavailable:
                pass  # both logs unreadable: live events may still come
            quiet_since = time.monotonic()
            while True:
                wait = keepalive_s if self._hub.connected else FALLBACK_POLL_S
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if not self._hub.connected:
                        for fresh in await self._catch_up(session_id, cursor):
                            quiet_since = time.monotonic()
                            yield fresh
                    if time.monotonic() - quiet_since >= keepalive_s:
                        quiet_since = time.monotonic()
                        yield None
                    continue
                if item is RESYNC:
                    for fresh in await self._catch_up(session_id, cursor):
                        yield fresh
                    continue
                if cursor.seen(item):
                    continue
                cursor.advance(item)
                quiet_since = time.monotonic()
                yield item
