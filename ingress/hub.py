"""One Redis subscription per ingress process, fanned out to its local SSE/WS clients.

The hub pattern-subscribes to every session's live channel once; each message becomes one
`SessionEvent` (its SSE frame encoded once, however many clients) handed to the
`Follower`s of that session on this process, and is dropped cheaply when there are none.
A follower is what one stream costs the hub: a list of events not yet sent and one wake-up
future while its stream waits, no queue and no task (at 10,000 idle clients an
`asyncio.Queue` each was 2.3 KB per client, and a wake-up through it several times the
Python of this loop). A client that falls too far behind (SSE_CLIENT_QUEUE events), and
every client after a lost Redis connection (the hub reconnects with backoff), is told to
re-read the durable log from its last event id (`resync`). A stream that must end (its
key was revoked, its client left) is `close`d (ingress/streams.py).

The same subscription carries the revocation channel: a revoked key's id, published by
whichever replica revoked it, is handed to `on_revoked` (ingress/revocation.py), which
ends that key's streams on this replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.redis_keys import RedisKeys

log = logging.getLogger(__name__)


class SessionEvent:
    """One event as clients receive it. The same object goes to every client of the
    session, so its SSE frame is encoded (and its id parsed) once however many clients
    there are."""

    __slots__ = ("_order", "_sse", "id", "payload", "type")

    def __init__(self, event_id: str, event_type: str, payload: str) -> None:
        self.id = event_id
        self.type = event_type
        self.payload = payload
        self._sse: bytes | None = None
        self._order: tuple[int, int] | None = None

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = f"id: {self.id}\nevent: {self.type}\ndata: {self.payload}\n\n".encode()
        return self._sse

    @property
    def order(self) -> tuple[int, int]:
        """A Redis stream id `<ms>-<seq>` as numbers (for comparing positions)."""
        if self._order is None:
            ms, _, seq = self.id.partition("-")
            self._order = (int(ms), int(seq or 0))
        return self._order

    def ws_text(self) -> str:
        """The payload JSON object with the event id added as its first member."""
        return f'{{"id":"{self.id}",{self.payload[1:]}'


class Follower:
    """One stream's place in the hub: the session's live events it has not taken yet,
    and whether it must re-read the log (`resync`) or end (`closed`).

    Its stream waits on `wait`'s future, woken by the hub, by `close`, or by its alarm
    (keep-alive, poll), which is set once and set again only when it rang or must ring
    earlier, so a busy stream costs no timer churn per event. The live events, the
    follower and its pending list outlast the waits; what each wait allocates is one
    future (at thousands of clients, objects that survive from one event to the next
    are what the garbage collector spends its time on).
    """

    __slots__ = ("_alarm_at", "_alarms", "_limit", "_waiter", "closed", "pending", "resync")

    def __init__(self, limit: int, alarms: _Alarms) -> None:
        self._limit = limit
        self._alarms = alarms
        self.pending: list[SessionEvent] = []
        self.resync = False
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._alarm_at = math.inf

    def push(self, event: SessionEvent) -> None:
        if len(self.pending) < self._limit:
            self.pending.append(event)
        else:  # a slow reader: let it catch up from the log (it loses nothing)
            self.pending.clear()
            self.resync = True
        self.wake()

    def request_resync(self) -> None:
        self.resync = True
        self.wake()

    def close(self) -> None:
        """End the stream: what is pending is not sent any more."""
        self.closed = True
        self.pending.clear()
        self.wake()

    def wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # (cancelled: its stream is gone)
                waiter.set_result(None)

    def wait(self, until: float) -> asyncio.Future[None]:
        """A future done when the follower is woken, or the loop's clock reaches `until`;
        done already if closed. The caller checks what it is waiting for (pending events,
        resync, its own deadlines) before and after."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if self.closed or until <= loop.time():
            waiter.set_result(None)
            return waiter
        if until < self._alarm_at:
            self._alarm_at = until
            self._alarms.set(self, until)
        self._waiter = waiter
        return waiter

    def ring(self, at: float) -> None:
        """The alarm set for `at` went off (the alarm clock's call)."""
        if at == self._alarm_at:  # not one it has since replaced by an earlier one
            self._alarm_at = math.inf
            self.wake()

    def detach(self) -> None:
        self._alarm_at = math.inf  # (a pending alarm then rings for nobody)


class _Alarms:
    """The followers' alarms in one heap, with one loop timer for the earliest: a timer
    handle per stream was 0.6 KB of every idle client. An alarm a follower replaced is
    left in the heap and skipped when it comes up."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Follower]] = []
        self._seq = itertools.count()  # (ties: never compare followers)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def set(self, follower: Follower, at: float) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), follower))
        if at < self._timer_at:
            self._arm(at)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(at, self._ring)
        self._timer_at = at

    def _ring(self) -> None:
        self._timer, self._timer_at = None, math.inf
        heap = self._heap
        now = asyncio.get_running_loop().time()
        while heap and heap[0][0] <= now:
            at, _, follower = heapq.heappop(heap)
            follower.ring(at)
        if heap:
            self._arm(heap[0][0])

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class FanoutHub:
    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        *,
        queue_size: int,
        on_revoked: Callable[[str], None] | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._live_prefix_len = len(keys.live_prefix)
        self._queue_size = queue_size
        self.on_revoked = on_revoked  # called with each key id the revocation channel names
        self._followers: dict[str, set[Follower]] = {}
        self._count = 0
        self._alarms = _Alarms()
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    @property
    def client_count(self) -> int:
        return self._count

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fanout-hub")

    async def stop(self) -> None:
        self._alarms.stop()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def add(self, session_id: str) -> Follower:
        """A new follower of the session's live events; `remove` it when its stream ends."""
        follower = Follower(self._queue_size, self._alarms)
        self._followers.setdefault(session_id, set()).add(follower)
        self._count += 1
        return follower

    def remove(self, session_id: str, follower: Follower) -> None:
        follower.detach()
        followers = self._followers.get(session_id)
        if followers is not None and follower in followers:
            self._count -= 1
            followers.discard(follower)
            if not followers:
                del self._followers[session_id]

    async def _run(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self._keys.live_pattern)
                await pubsub.subscribe(self._keys.revocations)
                if not self.connected:
                    self.connected = True
                    self.resync_all()  # anything published while away is in the log
                delay = 0.1
                async for message in pubsub.listen():
                    if message["type"] == "pmessage":
                        self._deliver(message["channel"], message["data"])
                    elif message["type"] == "message" and self.on_revoked is not None:
                        self.on_revoked(message["data"].decode(errors="replace"))
            except (RedisError, OSError) as exc:
                self.connected = False
                log.warning("fan-out subscription lost (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py

    def _deliver(self, channel: bytes, data: bytes) -> None:
        followers = self._followers.get(channel[self._live_prefix_len :].decode())
        if not followers:
            return
        head, _, payload = data.decode().partition("\n")
        stream_id, _, event_type = head.partition(" ")
        event = SessionEvent(stream_id, event_type, payload)
        for follower in followers:
            follower.push(event)

    def resync(self, session_id: str) -> None:
        """Tell the session's clients to read the durable logs (the fallback log has news)."""
        for follower in self._followers.get(session_id, ()):
            follower.request_resync()

    def resync_all(self) -> None:
        for followers in self._followers.values():
            for follower in followers:
                follower.request_resync()
