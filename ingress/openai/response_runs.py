"""A response's turn, followed in the session's durable log: streamed, read, watched.

Nothing here keeps a response's progress but the log itself (and the row, once the turn
ended): a stream translates the turn's events from the start of the log each time, so a
client that reconnects with `starting_after=N`, to this process or to another one that
started since, gets exactly the events after N; a read (`current`) translates what the
log holds now. A background response is watched (`watch`) by the process that created it
until its turn ends, then its status and events are stored; if that process dies first,
the next read of the response, on any replica, finishes it (and watches it again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from gateway_runtime.errors import DependencyUnavailable
from ingress.openai.response_store import ResponseStore, StoredResponse
from ingress.openai.responses import ResponseHead, ResponseTranslator, sse_frame
from ingress.openai.turn_events import TurnEvent, decode, turn_events
from ingress.resources import Resources
from ingress.streams import StreamLease

log = logging.getLogger(__name__)
Logged = tuple[str, dict[str, Any], str]  # (type, data, log id) of one turn event
KEEPALIVE = b": keep-alive\n\n"
# A read of the log "now" (`logged_now`): its ticks, and how long it waits for a log
# that holds nothing yet.
SNAPSHOT_TICK_S = 0.25
SNAPSHOT_TIMEOUT_S = 1.0
_watching: dict[str, asyncio.Task[None]] = {}  # strong references, by response id


async def _close(events: AsyncIterator[TurnEvent | None]) -> None:
    """End a follow of the log (`turn_events` is an async generator)."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def store_of(res: Resources) -> ResponseStore:
    return ResponseStore(res.pool, res.settings.responses_retention_s)


def replay(head: ResponseHead, events: list[Logged]) -> ResponseTranslator:
    translator = ResponseTranslator(head)
    translator.start()
    for kind, data, event_id in events:
        translator.feed(kind, data, event_id)
    return translator


async def logged_now(res: Resources, session_id: str, turn_id: str) -> list[Logged] | None:
    """The turn's events the log holds now (None: nothing could be read in time).

    The session's follow reads the whole retained log first and yields what it found as
    one batch: that batch is "now". (A log with nothing in it, or one that cannot be
    read, yields nothing but keep-alive ticks: None after SNAPSHOT_TIMEOUT_S.)"""
    events: list[Logged] = []
    batches = res.events.follow(session_id, after=None, keepalive_s=SNAPSHOT_TICK_S)
    try:
        async with asyncio.timeout(SNAPSHOT_TIMEOUT_S):
            async for batch in batches:
                for raw in batch:
                    if (event := decode(raw.id, raw.payload, turn_id)) is not None:
                        events.append((event.type, event.data, event.id))
                if batch:
                    return events
    except TimeoutError:
        return None
    except DependencyUnavailable as exc:
        log.warning("could not read turn %s from the log: %r", turn_id, exc)
        return None
    finally:
        await batches.aclose()
    return events


def _ended(translator: ResponseTranslator, events: list[Logged]) -> list[Logged]:
    """The events up to the one that ended the response (what the row keeps)."""
    replayed = ResponseTranslator(translator.head)
    replayed.start()
    for n, (kind, data, event_id) in enumerate(events):
        replayed.feed(kind, data, event_id)
        if replayed.done:
            return events[: n + 1]
    return events


async def finish(res: Resources, translator: ResponseTranslator, events: list[Logged]) -> None:
    """Store a response whose turn ended (best effort: the next read does it again)."""
    try:
        await store_of(res).finish(
            translator.head.id, translator.status, _ended(translator, events)
        )
    except DependencyUnavailable as exc:
        log.warning("response %s not stored as ended: %r", translator.head.id, exc)


async def current(res: Resources, stored: StoredResponse) -> dict[str, Any]:
    """The response object now: from its stored events once it ended, else from the log."""
    if stored.events is not None:
        return replay(stored.head, stored.events).response()
    events = await logged_now(res, stored.session_id, stored.turn_id)
    if events is None:  # the log cannot be read: what the row knows
        body = ResponseTranslator(stored.head).response()
        body["status"] = stored.status
        return body
    translator = replay(stored.head, events)
    if translator.done:
        await finish(res, translator, events)
    else:
        watch(res, stored)
        if stored.status == "cancelled":  # cancelled; its turn.cancelled not read yet
            translator.status = "cancelled"
    return translator.response()


def watch(res: Resources, stored: StoredResponse) -> None:
    """Follow the response's turn to its end in the background, then store it."""
    if stored.id in _watching:
        return
    task = asyncio.create_task(_watch(res, stored))
    _watching[stored.id] = task
    task.add_done_callback(lambda _: _watching.pop(stored.id, None))


async def _watch(res: Resources, stored: StoredResponse) -> None:
    translator = ResponseTranslator(stored.head)
    translator.start()
    events: list[Logged] = []
    try:
        async with asyncio.timeout(res.settings.responses_retention_s):
            follow = turn_events(
                res, stored.session_id, stored.turn_id, keepalive_s=res.settings.sse_keepalive_s
            )
            try:
                async for event in follow:
                    if event is None:
                        continue
                    events.append((event.type, event.data, event.id))
                    translator.feed(event.type, event.data, event.id)
                    if translator.done:
                        break
            finally:
                await _close(follow)
    except TimeoutError:
        log.warning("response %s: its turn did not end within the retention", stored.id)
        return
    if translator.done:
        await finish(res, translator, events)


class Follow:
    """A response's turn followed in the log, holding a stream lease of its caller's
    (released by `close`): its events one at a time, each awaited until a deadline."""

    def __init__(
        self, res: Resources, session_id: str, turn_id: str, lease: StreamLease | None
    ) -> None:
        self.res = res
        self.lease = lease
        self.events = turn_events(
            res, session_id, turn_id, keepalive_s=res.settings.sse_keepalive_s, lease=lease
        )
        self._closed = False

    async def next(self, deadline: float) -> TurnEvent | None:
        """The next event or tick (None); TimeoutError past `deadline` (the loop's
        clock); StopAsyncIteration when the follow ended (the turn, or the lease, did)."""
        async with asyncio.timeout_at(deadline):
            return await anext(self.events)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await _close(self.events)
        finally:
            if self.lease is not None:
                self.res.streams.release(self.lease)


async def stream(
    res: Resources,
    head: ResponseHead,
    follow: Follow | None,
    *,
    stored: StoredResponse | None,
    starting_after: int,
    deadline: float,
    read: list[Logged] | None = None,
) -> AsyncIterator[bytes]:
    """The response's SSE frames after `starting_after` (-1: all): from its stored events
    once it ended, else translated from the log (`read`: its events already taken from
    `follow`) as its turn runs. Ends after the terminal event, or at `deadline` or when
    the lease ends (the client may resume); then the row is finished, or left to a watch."""
    translator = ResponseTranslator(head)

    def frames(events: list[dict[str, Any]]) -> bytes:
        return b"".join(sse_frame(e) for e in events if e["sequence_number"] > starting_after)

    logged = list(read or [])
    try:
        if chunk := frames(translator.start()):
            yield chunk
        for kind, data, event_id in stored.events if stored and stored.events else logged:
            if chunk := frames(translator.feed(kind, data, event_id)):
                yield chunk
        while follow is not None and not translator.done:
            try:
                event = await follow.next(deadline)
            except (TimeoutError, StopAsyncIteration):
                return
            if event is None:
                yield KEEPALIVE
                continue
            logged.append((event.type, event.data, event.id))
            if chunk := frames(translator.feed(event.type, event.data, event.id)):
                yield chunk
    finally:
        if follow is not None:
            await follow.close()
        if stored is not None and stored.events is None:
            if translator.done:
                await finish(res, translator, logged)
            else:
                watch(res, stored)
