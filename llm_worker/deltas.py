"""Streamed answer text to the session, a frame per window instead of a frame per token.

Every `assistant.delta` is a Redis script call here, a pub/sub message, and an SSE or
WebSocket write per client at the ingress: per token, that was most of what a streamed
turn cost the mesh. The first piece of a turn goes out at once (time to first token is
what a client feels); pieces after it are gathered for up to `window_s` and sent as one
delta with their texts joined, so a client still gets every token, in order, in fewer
frames. `seq` is the number of pieces sent so far, the last one included, so it still
grows with every frame. A window of 0 sends every piece as it comes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Send = Callable[[int, str], Awaitable[object]]  # (seq, text)


class DeltaCoalescer:
    """One turn's deltas: `add` each piece, `close` when the stream ends (or fails)."""

    def __init__(self, send: Send, window_s: float) -> None:
        self._send = send
        self._window_s = window_s
        self._pending: list[str] = []
        self._count = 0  # pieces added
        self._sent_at = -float("inf")
        self._lock = asyncio.Lock()  # frames go out in order, one at a time
        self._timer: asyncio.Task[None] | None = None  # while it sleeps
        self._failed: BaseException | None = None  # a timed send's error, for `close`

    async def add(self, text: str) -> None:
        self._pending.append(text)
        self._count += 1
        wait = self._sent_at + self._window_s - time.monotonic()
        if wait <= 0:
            await self._flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_after(wait))

    async def close(self) -> None:
        """Send what is pending; after this, every piece added has been sent (or the
        error of the send that failed is raised)."""
        if self._timer is not None:  # still asleep: its pieces go in this last frame
            self._timer.cancel()
            self._timer = None
        await self._flush()  # waits for a timed send in progress, then sends the rest
        if self._failed is not None:
            raise self._failed

    async def _flush_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._timer = None  # from here on `close` waits for this send instead
        try:
            await self._flush()
        except Exception as exc:
            self._failed = exc

    async def _flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            text, seq = "".join(self._pending), self._count
            self._pending.clear()
            self._sent_at = time.monotonic()
            await self._send(seq, text)
