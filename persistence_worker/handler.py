"""The persistence stage's logic: TurnCompleted in, rows, a budget settlement and a memory out.

Every side effect is idempotent per turn (event_id): the rows are written once, the
turn's token reservation is settled to its actual usage once (a failed turn settles what
it used, usually nothing, which releases the reservation; a turn that reserved nothing,
its persona having no budget, has nothing to settle), and a completed exchange is
remembered once. The later effects run even when the rows were stored before, so a crash
between them is repaired by the redelivery.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gateway_runtime.errors import InvalidEvent
from gateway_runtime.ports import DEFAULT_PERSONA, Budgets, Memory, Output, TurnStore
from persistence_worker.metrics import observe_stored
from schemas.events import Event, TurnCompleted
from schemas.topics import Topics

log = logging.getLogger(__name__)


def memory_of(turn: TurnCompleted, limit: int = 2000) -> str | None:
    """What to remember of a turn: the exchange of a completed chat message."""
    if turn.status != "completed" or turn.request.action is not None:
        return None
    return f"User: {turn.request.message}\nAssistant: {turn.answer}"[:limit]


@dataclass
class PersistenceHandler:
    topics: Topics
    store: TurnStore
    budgets: Budgets
    memory: Memory
    stage: str = "persistence"

    @property
    def input_topic(self) -> str:
        return self.topics.completed.name

    async def handle(self, event: Event) -> Sequence[Output]:
        if not isinstance(event, TurnCompleted):
            raise InvalidEvent(f"persistence expects TurnCompleted, got {type(event).__name__}")
        if await self.store.save(event):
            observe_stored(event)
        else:
            log.info("turn already stored; redelivery ignored")
        request = event.request
        if event.reserved_tokens > 0:  # a turn without a budget has no counters to settle
            await self.budgets.settle(
                request.event_id,
                request.tenant,
                request.persona_id or DEFAULT_PERSONA,
                event.usage.prompt_tokens + event.usage.completion_tokens,
            )
        if (content := memory_of(event)) is not None:
            await self.memory.remember(
                request.tenant, event.principal, request.session_id, request.event_id, content
            )
        return []
