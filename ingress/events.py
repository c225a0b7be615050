"""A session's events for one client: the durable log first, then live, without gaps.

The client's queue is registered with the hub before the log is read, so nothing
published in between is missed; ids at or before the last one sent are skipped, so
nothing is sent twice. While the client is behind — its catch-up could not read a log,
or the hub has no Redis subscription — live events are not passed on (the log holds them,
in order): the client polls the logs, with jittered backoff and a per-process cap on
concurrent catch-ups, so an outage does not turn every client into a polling storm.
The Postgres fallback log (where stages publish during a Redis outage) is read too.

A resume point is accepted only in the forms the gateway issues (`valid_event_id`): a
Redis stream id `<ms>-<seq>` (two unsigned 64-bit numbers) or `pg-<n>` (a bigint), in
ASCII digits. (`str.isdigit` also accepts '²' and other Unicode digits, which Redis
refuses and `int` may not parse: such an id would break the stream after its 200.)

A stream given a lease (ingress/streams.py) ends as soon as the lease is closed: its
queue gets `CLOSE`, and a catch-up read in progress is abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.event_log import PG_ID_PREFIX, PostgresEventLog
from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys
from ingress.hub import CLOSE, RESYNC, FanoutHub, SessionEvent
from ingress.streams import StreamLease

POLL_MIN_S = 0.5
POLL_MAX_S = 5.0
CONCURRENT_CATCH_UPS = 32


def _order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


_REDIS_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")  # [0-9]: ASCII only, unlike \d
_PG_ID = re.compile(re.escape(PG_ID_PREFIX) + r"([0-9]{1,19})")
_U64_MAX = 2**64 - 1
_I64_MAX = 2**63 - 1


def valid_event_id(value: str) -> bool:
    """An id this gateway could have sent: `<ms>-<seq>` or `pg-<n>`, within range."""
    if match := _PG_ID.fullmatch(value):
        return int(match[1]) <= _I64_MAX
    if match := _REDIS_ID.fullmatch(value):
        return int(match[1]) <= _U64_MAX and int(match[2]) <= _U64_MAX
    return False


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
        self,
        session_id: str,
        after: str | None,
        keepalive_s: float,
        lease: StreamLease | None = None,
    ) -> AsyncIterator[SessionEvent | None]:
        """Yield events after `after` (all retained ones if None); None = keep-alive tick.
        `after` must be a `valid_event_id`. Ends when `lease` is closed.

        A tick comes every `keepalive_s` without an event whatever the logs do: a
        catch-up read that hangs on a hung Redis or Postgres (until its timeout) holds
        events back, never the keep-alives that tell the client and its proxies the
        stream is alive. (Only catch-ups run as tasks; live events cost none.)
        """
        cursor = await self._cursor_after(after)
        closed = lease.closed if lease is not None else asyncio.get_running_loop().create_future()
        pace = _Pace(keepalive_s)
        with self._hub.subscribe(session_id) as queue:
            if lease is not None:
                lease.attach(queue)
            catch_up = True  # the log first, then live
            while not closed.done():
                if catch_up:
                    reads = self._caught_up(session_id, cursor, pace, closed)
                    async with contextlib.aclosing(reads):  # the client left: stop reading
                        async for caught in reads:
                            yield caught
                    if closed.done():
                        return
                polling = pace.behind or not self._hub.connected
                item = await pace.next_live(queue, polling)
                if item is CLOSE:
                    return
                if item is not None and item is not RESYNC:
                    if not pace.behind and not cursor.seen(item):
                        # (behind: the log has it, the catch-up sends it in order)
                        cursor.advance(item)
                        pace.sent()
                        yield item
                    catch_up = False
                    continue
                catch_up = item is RESYNC or (polling and time.monotonic() >= pace.next_poll)
                if pace.tick_due():
                    pace.sent()
                    yield None

    async def _cursor_after(self, after: str | None) -> _Cursor:
        cursor = _Cursor()
        if after and after.startswith(PG_ID_PREFIX):
            cursor.pg_id = int(after[len(PG_ID_PREFIX) :])
            cursor.ts_ms = await self._fallback.ts_of(cursor.pg_id)
        elif after:
            cursor.redis_id = after
        return cursor

    async def _caught_up(
        self, session_id: str, cursor: _Cursor, pace: _Pace, closed: asyncio.Future[Any]
    ) -> AsyncGenerator[SessionEvent | None, None]:
        """One catch-up read's fresh events, with keep-alive ticks while the read lasts;
        it ends early, the read cancelled, once `closed` is done."""
        reading = asyncio.ensure_future(self._catch_up(session_id, cursor))
        try:
            while not reading.done():
                await asyncio.wait(
                    {reading, closed},
                    timeout=pace.until_tick(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if closed.done():
                    return
                if not reading.done():
                    pace.sent()
                    yield None
        finally:
            reading.cancel()  # the client left mid-read: stop reading
        fresh, complete = reading.result()
        pace.read(fresh=bool(fresh), complete=complete)
        for event in fresh:
            if closed.done():
                return
            pace.sent()
            yield event


class _Pace:
    """A follower's timing: when it last sent something (a tick is due `keepalive_s`
    after), and while it is behind, when it polls the logs next (jittered backoff)."""

    def __init__(self, keepalive_s: float) -> None:
        self.keepalive_s = keepalive_s
        self.last_sent = time.monotonic()
        self.behind = False  # the last catch-up could not read a log
        self.delay = POLL_MIN_S
        self.next_poll = 0.0

    def sent(self) -> None:
        self.last_sent = time.monotonic()

    def until_tick(self) -> float:
        return max(self.last_sent + self.keepalive_s - time.monotonic(), 0)

    def tick_due(self) -> bool:
        return time.monotonic() - self.last_sent >= self.keepalive_s

    def read(self, *, fresh: bool, complete: bool) -> None:
        """A catch-up read ended: with events or not, both logs read or not."""
        self.behind = not complete
        self.delay = POLL_MIN_S if fresh or complete else min(self.delay * 2, POLL_MAX_S)
        self.next_poll = time.monotonic() + self.delay * (0.5 + random.random())

    async def next_live(
        self, queue: asyncio.Queue[SessionEvent], polling: bool
    ) -> SessionEvent | None:
        """The hub's next item, or None when the next tick (or poll, if `polling`) is due
        first."""
        wake_at = self.last_sent + self.keepalive_s
        if polling:
            wake_at = min(wake_at, self.next_poll)
        try:
            async with asyncio.timeout(max(wake_at - time.monotonic(), 0)):
                return await queue.get()
        except TimeoutError:
            return None
