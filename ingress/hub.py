"""One Redis subscription per ingress process, fanned out to its local SSE/WS clients.

The hub pattern-subscribes to every session's live channel once; each message goes to
the queues of the clients of that session on this process, and is dropped cheaply when
there are none. A client that falls too far behind, and every client after a lost Redis
connection (the hub reconnects with backoff), is told to re-read the durable log from its
last event id (`RESYNC`). A client whose stream must end (its key was revoked) gets
`CLOSE` (ingress/streams.py).

The same subscription carries the revocation channel: a revoked key's id, published by
whichever replica revoked it, is handed to `on_revoked` (ingress/revocation.py), which
ends that key's streams on this replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.redis_keys import RedisKeys

log = logging.getLogger(__name__)


class SessionEvent:
    """One event as clients receive it. The same object goes to every client of the
    session, so its SSE frame is encoded once however many clients there are."""

    __slots__ = ("_sse", "id", "payload", "type")

    def __init__(self, event_id: str, event_type: str, payload: str) -> None:
        self.id = event_id
        self.type = event_type
        self.payload = payload
        self._sse: bytes | None = None

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = f"id: {self.id}\nevent: {self.type}\ndata: {self.payload}\n\n".encode()
        return self._sse

    def ws_text(self) -> str:
        """The payload JSON object with the event id added as its first member."""
        return f'{{"id":"{self.id}",{self.payload[1:]}'


RESYNC = SessionEvent("", "", "")  # not an event: re-read the durable log
CLOSE = SessionEvent("", "", "")  # not an event: the stream ends
Item = SessionEvent


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
        self._queue_size = queue_size
        self.on_revoked = on_revoked  # called with each key id the revocation channel names
        self._clients: dict[str, set[asyncio.Queue[Item]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    @property
    def client_count(self) -> int:
        return sum(len(qs) for qs in self._clients.values())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fanout-hub")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self, session_id: str) -> Iterator[asyncio.Queue[Item]]:
        queue: asyncio.Queue[Item] = asyncio.Queue(self._queue_size)
        self._clients.setdefault(session_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._clients.get(session_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._clients[session_id]

    async def _run(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self._keys.live_pattern)
                await pubsub.subscribe(self._keys.revocations)
                if not self.connected:
                    self.connected = True
                    self._broadcast(RESYNC)  # anything published while away is in the log
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
        queues = self._clients.get(channel[len(self._keys.live_prefix) :].decode())
        if not queues:
            return
        head, _, payload = data.decode().partition("\n")
        stream_id, _, event_type = head.partition(" ")
        item = SessionEvent(stream_id, event_type, payload)
        for queue in queues:
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:  # a slow reader: let it catch up from the log
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(RESYNC)

    def resync(self, session_id: str) -> None:
        """Tell the session's clients to read the durable logs (the fallback log has news)."""
        for queue in self._clients.get(session_id, ()):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(RESYNC)

    def resync_all(self) -> None:
        self._broadcast(RESYNC)

    def _broadcast(self, item: Item) -> None:
        for queues in self._clients.values():
            for queue in queues:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(item)
