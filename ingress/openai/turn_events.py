"""One turn's client-visible events, followed from the session's durable log.

The OpenAI translators (chat completions, Responses) answer one request = one turn,
but the mesh publishes into the session's log, which may hold other turns (a chat
completion that joins a session, a Responses conversation). `SessionEvents.follow`
gives the whole log from its start, then live, with no gap and no duplicate; this
keeps only the turn's own events, decodes them once, and ends after the event that
ends the turn (`assistant.final` or `error`), so a translator is a plain `async for`.

Keep-alive ticks are passed on as None: a streaming translator writes a comment to
keep proxies from closing an idle connection, a non-streaming one checks its deadline.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ingress.resources import Resources
from ingress.streams import StreamLease

# The events after which the turn publishes nothing more.
TERMINAL_TYPES = frozenset({"assistant.final", "error"})


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """One event of the turn: its type, its `data` object and its id in the session log
    (a Redis stream id or `pg-<n>`: a position, not a sequence number of the turn)."""

    type: str
    data: dict[str, Any]
    id: str


def decode(session_event_id: str, payload: str, turn_id: str) -> TurnEvent | None:
    """The event if it belongs to `turn_id` (None otherwise, or if it is unreadable)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("turn_id") != turn_id:
        return None
    data = body.get("data")
    return TurnEvent(
        type=str(body.get("type", "")),
        data=data if isinstance(data, dict) else {},
        id=session_event_id,
    )


async def turn_events(
    res: Resources,
    session_id: str,
    turn_id: str,
    *,
    keepalive_s: float,
    after: str | None = None,
    lease: StreamLease | None = None,
) -> AsyncIterator[TurnEvent | None]:
    """Yield `turn_id`'s events in log order (None = a keep-alive tick, every
    `keepalive_s` without one), ending after `assistant.final` or `error`.

    `after` (a session-log id) starts after that point instead of the log's start;
    `lease` ends the iteration when the stream's lease is closed (key revoked, cap).
    The caller bounds the total wait (a deadline checked on ticks): a turn whose
    events never come would otherwise be followed for ever.
    """
    batches = res.events.follow(session_id, after=after, keepalive_s=keepalive_s, lease=lease)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            if not batch:
                yield None
                continue
            for raw in batch:
                event = decode(raw.id, raw.payload, turn_id)
                if event is None:
                    continue
                yield event
                if event.type in TERMINAL_TYPES:
                    return
