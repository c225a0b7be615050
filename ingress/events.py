"""A session's events for one client: the durable log first, then live, without gaps.

The client's queue is registered with the hub before the log is read, so nothing
published in between is missed; ids at or before the last one sent are skipped, so
nothing is sent twice. While the client is behind — its catch-up could not read a log,
or the hub has no Redis subscription — live events are not passed on (the log holds them,
in order): the client polls the logs, with jittered backoff and a per-process cap on
concurrent catch-ups, so an outage does not turn every client into a polling storm.
The Postgres fallback log (where stages publish during a Redis outage) is read too.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.event_log import PG_ID_PREFIX, PostgresEventLog
from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys
from ingress.hub import RESYNC, FanoutHub, SessionEvent

POLL_MIN_S = 0.5
POLL_MAX_S = 5.0
CONCURRENT_CATCH_UPS = 32


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

    def seen(self, event: SessionEvent) -> bool:
        if event.id.startswith(PG_ID_PREFIX):
            return int(event.id[len(PG_ID_PREFIX) :]) <= self.pg_id
        return self.redis_id is not None and _order(event.id) <= _order(self.redis_id)

    def advance(self, event: SessionEvent, ts_ms: int | None = None) -> None:
        if event.id.startswith(PG_ID_PREFIX):
            self.pg_id = int(event.id[len(PG_ID_PREFIX) :])
            self.ts_ms = max(self.ts_ms, ts_ms or 0)
        else:
            self.redis_id = event.id
            self.ts_ms = max(self.ts_ms, _order(event.id)[0])


class SessionEvents:
    def __init__(
        self,
        redis: Redis,
        hub: FanoutHub,
        fallback: PostgresEventLog,
        keys: RedisKeys,
        gate: RedisGate | None = None,
    ) -> None:
        self._redis = redis
        self._gate = gate or RedisGate.of(redis)
        self._hub = hub
        self._fallback = fallback
        self._keys = keys
        self._catch_ups = asyncio.Semaphore(CONCURRENT_CATCH_UPS)

    async def _redis_after(self, session_id: str, cursor: _Cursor) -> list[SessionEvent]:
        if cursor.redis_id:
            low = f"({cursor.redis_id}"
        elif cursor.ts_ms:
            low = f"{cursor.ts_ms + 1}-0"
        else:
            low = "-"
        if not self._gate.available():
            self._gate.fallback("session_events")
            raise DependencyUnavailable("event log unavailable: redis is down")
        try:
            raw = await self._redis.xrange(self._keys.stream(session_id), min=low, max="+")
            # redis-py types replies for every decoding mode; ours returns bytes.
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], raw)
        except RedisError as exc:
            self._gate.failed("session_events", exc)
            raise DependencyUnavailable(f"event log unavailable: {exc!r}") from exc
        return [SessionEvent(i.decode(), f[b"t"].decode(), f[b"e"].decode()) for i, f in entries]

    async def _fallback_after(
        self, session_id: str, cursor: _Cursor
    ) -> list[tuple[SessionEvent, int]]:
        after_ts = 0 if cursor.pg_id else (_order(cursor.redis_id)[0] if cursor.redis_id else 0)
        rows = await self._fallback.after(session_id, after_id=cursor.pg_id, after_ts_ms=after_ts)
        return [(SessionEvent(i, t, p), ts) for i, t, p, ts in rows]

    async def _catch_up(self, session_id: str, cursor: _Cursor) -> tuple[list[SessionEvent], bool]:
        """Unseen events of both logs, merged by time, and whether both could be read."""
        complete = True
        merged: list[tuple[int, SessionEvent]] = []
        async with self._catch_ups:
            try:
                merged += [
                    (_order(e.id)[0], e) for e in await self._redis_after(session_id, cursor)
                ]
            except DependencyUnavailable:
                complete = False
            try:
                merged += [(ts, e) for e, ts in await self._fallback_after(session_id, cursor)]
            except DependencyUnavailable:
                complete = False
        merged.sort(key=lambda pair: pair[0])
        fresh = []
        for ts, event in merged:
            if not cursor.seen(event):
                cursor.advance(event, ts)
                fresh.append(event)
        return fresh, complete

    async def follow(
        self, session_id: str, after: str | None, keepalive_s: float
    ) -> AsyncIterator[SessionEvent | None]:
        """Yield events after `after` (all retained ones if None); None = keep-alive tick.

        A tick comes every `keepalive_s` without an event whatever the logs do: a
        catch-up read that hangs on a hung Redis or Postgres (until its timeout) holds
        events back, never the keep-alives that tell the client and its proxies the
        stream is alive. (Only catch-ups run as tasks; live events cost none.)
        """
        cursor = _Cursor()
        if after and after.startswith(PG_ID_PREFIX):
            cursor.pg_id = int(after[len(PG_ID_PREFIX) :])
            cursor.ts_ms = await self._fallback.ts_of(cursor.pg_id)
        elif after:
            cursor.redis_id = after
        with self._hub.subscribe(session_id) as queue:
            catch_up = True  # the log first, then live
            behind = False
            delay = POLL_MIN_S
            next_poll = 0.0
            last_sent = time.monotonic()
            while True:
                if catch_up:
                    reading = asyncio.ensure_future(self._catch_up(session_id, cursor))
                    try:
                        while not reading.done():
                            wait_s = last_sent + keepalive_s - time.monotonic()
                            await asyncio.wait({reading}, timeout=max(wait_s, 0))
                            if not reading.done():
                                last_sent = time.monotonic()
                                yield None
                    finally:
                        reading.cancel()  # the client left mid-read: stop reading
                    fresh, complete = reading.result()
                    behind, catch_up = not complete, False
                    delay = POLL_MIN_S if fresh or complete else min(delay * 2, POLL_MAX_S)
                    next_poll = time.monotonic() + delay * (0.5 + random.random())
                    for event in fresh:
                        last_sent = time.monotonic()
                        yield event
                polling = behind or not self._hub.connected
                # Wake for whichever comes first: an event, the next poll, the next tick.
                wake_at = last_sent + keepalive_s
                if polling:
                    wake_at = min(wake_at, next_poll)
                item: SessionEvent | None = None
                try:
                    async with asyncio.timeout(max(wake_at - time.monotonic(), 0)):
                        item = await queue.get()
                except TimeoutError:
                    pass
                if item is not None and item is not RESYNC:
                    if behind or cursor.seen(item):
                        continue  # behind: the log has it, the catch-up sends it in order
                    cursor.advance(item)
                    last_sent = time.monotonic()
                    yield item
                    continue
                catch_up = item is RESYNC or (polling and time.monotonic() >= next_poll)
                if time.monotonic() - last_sent >= keepalive_s:
                    last_sent = time.monotonic()
                    yield None
