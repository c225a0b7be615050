"""A small SSE client for the tests: reads a session's events until a condition holds."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx


@dataclass(frozen=True, slots=True)
class SseEvent:
    id: str
    type: str
    data: dict

    @property
    def turn_id(self) -> str:
        return str(self.data.get("turn_id", ""))


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    until: Callable[[SseEvent], bool],
    *,
    last_event_id: str | None = None,
    limit: int = 10_000,
) -> list[SseEvent]:
    """Events in order up to and including the first for which `until` is true."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[SseEvent] = []
    async with client.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "data" in fields:
                    event = SseEvent(
                        fields.get("id", ""),
                        fields.get("event", "message"),
                        json.loads(fields["data"]),
                    )
                    events.append(event)
                    if until(event) or len(events) >= limit:
                        return events
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.lstrip(" ")
    return events
