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
hub follower wakes closed, and a catch-up read in progress is abandoned.

Events come in batches: whatever a stream finds waiting when it wakes goes out in one
write (under load, a client's several events cost one send, not one each).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncGenerator
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.event_log import PG_ID_PREFIX, PostgresEventLog
from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys
from ingress.hub import FanoutHub, Follower, SessionEvent
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

    __slots__ = ("pg_id", "redis_id", "redis_order", "ts_ms")

    def __init__(self) -> None:
        self.redis_id: str | None = None
        self.redis_order = (-1, -1)  # redis_id as numbers; nothing is before it when None
        self.pg_id = 0
        self.ts_ms = 0

    def seen(self, event: SessionEvent) -> bool:
        if event.id.startswith(PG_ID_PREFIX):
            return int(event.id[len(PG_ID_PREFIX) :]) <= self.pg_id
        return event.order <= self.redis_order

    def advance(self, event: SessionEvent, ts_ms: int | None = None) -> None:
        if event.id.startswith(PG_ID_PREFIX):
            self.pg_id = int(event.id[len(PG_ID_PREFIX) :])
            self.ts_ms = max(self.ts_ms, ts_ms or 0)
        else:
            self.redis_id = event.id
            self.redis_order = event.order
            self.ts_ms = max(self.ts_ms, event.order[0])

    def fresh(self, events: list[SessionEvent]) -> list[SessionEvent]:
        """The live events not sent yet, in order; the cursor moves past them."""
        out = []
        for event in events:
            if not self.seen(event):
                self.advance(event)
                out.append(event)
        return out


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
    ) -> AsyncGenerator[list[SessionEvent], None]:
        """Yield batches of events after `after` (all retained ones if None), in order; an
        empty batch is a keep-alive tick. `after` must be a `valid_event_id`. Ends when
        `lease` is closed.

        A tick comes every `keepalive_s` without an event whatever the logs do: a
        catch-up read that hangs on a hung Redis or Postgres (until its timeout) holds
        events back, never the keep-alives that tell the client and its proxies the
        stream is alive. (Only catch-ups run as tasks; live events cost none.)
        """
        cursor = await self._cursor_after(after)
        pace = _Pace(keepalive_s)
        follower = self._hub.add(session_id)
        try:
            if lease is not None:
                lease.attach(follower)
            catch_up = True  # the log first, then live
            while not follower.closed:
                if catch_up:
                    reads = self._caught_up(session_id, cursor, pace, follower)
                    async with contextlib.aclosing(reads):  # the client left: stop reading
                        async for caught in reads:
                            yield caught
                            del caught  # (nor the last batch: an idle stream would hold it)
                    del reads
                    if follower.closed:
                        return
                polling = pace.behind or not self._hub.connected
                if not follower.pending and not follower.resync:
                    await follower.wait(pace.wake_at(polling))
                    if follower.closed:
                        return
                if follower.resync:  # the logs hold what the hub may have missed or dropped
                    follower.resync = False
                    follower.pending.clear()
                    catch_up = True
                    continue
                if pace.behind:  # the log has them: a catch-up sends them, in order
                    follower.pending.clear()
                elif follower.pending:
                    fresh = cursor.fresh(follower.pending)
                    follower.pending.clear()
                    if fresh:
                        pace.sent()
                        yield fresh
                    del fresh
                catch_up = polling and pace.now() >= pace.next_poll
                if pace.tick_due():
                    pace.sent()
                    yield []
        finally:
            self._hub.remove(session_id, follower)

    async def _cursor_after(self, after: str | None) -> _Cursor:
        cursor = _Cursor()
        if after and after.startswith(PG_ID_PREFIX):
            cursor.pg_id = int(after[len(PG_ID_PREFIX) :])
            cursor.ts_ms = await self._fallback.ts_of(cursor.pg_id)
        elif after:
            cursor.redis_id = after
            cursor.redis_order = _order(after)
        return cursor

    async def _caught_up(
        self, session_id: str, cursor: _Cursor, pace: _Pace, follower: Follower
    ) -> AsyncGenerator[list[SessionEvent], None]:
        """One catch-up read's fresh events, with keep-alive ticks while the read lasts;
        it ends early, the read cancelled, once `follower` is closed."""
        reading = asyncio.ensure_future(self._catch_up(session_id, cursor))
        reading.add_done_callback(follower.wake)
        try:
            while not reading.done():
                await follower.wait(pace.tick_at())  # (live events wake it too: kept)
                if follower.closed:
                    return
                if not reading.done() and pace.tick_due():
                    pace.sent()
                    yield []
        finally:
            reading.cancel()  # the client left mid-read: stop reading
        fresh, complete = reading.result()
        pace.read(fresh=bool(fresh), complete=complete)
        if fresh and not follower.closed:
            pace.sent()
            yield fresh


class _Pace:
    """A follower's timing, on the event loop's clock (the one its timers use): when it
    last sent something (a tick is due `keepalive_s` after), and while it is behind,
    when it polls the logs next (jittered backoff)."""

    __slots__ = ("_loop", "behind", "delay", "keepalive_s", "last_sent", "next_poll")

    def __init__(self, keepalive_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.keepalive_s = keepalive_s
        self.last_sent = self._loop.time()
        self.behind = False  # the last catch-up could not read a log
        self.delay = POLL_MIN_S
        self.next_poll = 0.0

    def now(self) -> float:
        return self._loop.time()

    def sent(self) -> None:
        self.last_sent = self._loop.time()

    def tick_at(self) -> float:
        return self.last_sent + self.keepalive_s

    def tick_due(self) -> bool:
        return self._loop.time() >= self.last_sent + self.keepalive_s

    def wake_at(self, polling: bool) -> float:
        """When the next tick (or poll, if `polling`) is due."""
        due = self.last_sent + self.keepalive_s
        return min(due, self.next_poll) if polling else due

    def read(self, *, fresh: bool, complete: bool) -> None:
        """A catch-up read ended: with events or not, both logs read or not."""
        self.behind = not complete
        self.delay = POLL_MIN_S if fresh or complete else min(self.delay * 2, POLL_MAX_S)
        self.next_poll = self._loop.time() + self.delay * (0.5 + random.random())
