"""Turns requested by clients become TurnRequested events on the requests topic."""

from __future__ import annotations

import time
import uuid

from ingress.deps import Principal
from ingress.resources import Resources
from schemas.events import TurnRequested


async def request_turn(
    res: Resources,
    principal: Principal,
    *,
    session_id: str | None,
    message: str,
    action: str | None = None,
    persona_id: str | None = None,
    attachments: list[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> TurnRequested:
    """Publish the turn and wait for the broker's acknowledgement: a 202 means durable."""
    event = TurnRequested(
        event_id=uuid.uuid4().hex,
        session_id=session_id or uuid.uuid4().hex,
        message=message,
        created_at_ms=int(time.time() * 1000),
        tenant=principal.tenant,
        persona_id=persona_id,
        attachments=list(attachments or []),
        metadata=dict(metadata or {}),
        principal=principal.subject,
        action=action,
    )
    await res.publisher.publish(res.topics.requested.name, res.codec.encode(event))
    return event
