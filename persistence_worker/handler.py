"""The persistence stage's logic: TurnCompleted in, rows out, no further events."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway_runtime.errors import InvalidEvent
from gateway_runtime.stage import Output
from schemas.events import Event, TurnCompleted
from schemas.topics import Topics

log = logging.getLogger(__name__)


class TurnStore(Protocol):
    async def save(self, turn: TurnCompleted) -> bool: ...


@dataclass
class PersistenceHandler:
    topics: Topics
    store: TurnStore
    stage: str = "persistence"

    @property
    def input_topic(self) -> str:
        return self.topics.completed.name

    async def handle(self, event: Event) -> Sequence[Output]:
        if not isinstance(event, TurnCompleted):
            raise InvalidEvent(f"persistence expects TurnCompleted, got {type(event).__name__}")
        if not await self.store.save(event):
            log.info("turn already stored; redelivery ignored")
        return []
