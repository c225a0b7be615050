"""Turns requested by clients become TurnRequested events on the requests topic.

`start_turn` is the one way in, for POST and the WebSocket alike: the Idempotency-Key
(if any), admission (rate limits, the session claim), then the turn is handed to Kafka
or, while Kafka does not answer, to the Postgres outbox (ingress/outbox.py). Either
way it is durable when this returns, within the request's deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.tokens import asked_text
from gateway_runtime.tracing import producer_span
from ingress.auth.admission import Admission
from ingress.auth.errors import Denied
from ingress.idempotency import Remembered, request_hash
from ingress.resources import Resources
from schemas.events import ChatMessage, TurnRequested

log = logging.getLogger(__name__)
_announcements: set[asyncio.Task[None]] = set()  # strong references until they finish


@dataclass(frozen=True, slots=True)
class NewTurn:
    """What the client asked for."""

    session_id: str | None
    message: str
    action: str | None = None
    persona_id: str | None = None
    attachments: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    # The OpenAI API's turns (TurnRequested v3): which API, the conversation as the client
    # sent it, and the generation parameters of its model calls.
    api: str | None = None
    messages: list[ChatMessage] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)
    after_turn_id: str | None = None  # continues this turn's exchange (previous_response_id)

    def fingerprint(self) -> str:
        return request_hash("turn", json.dumps(dataclasses.asdict(self), sort_keys=True))


@dataclass(frozen=True, slots=True)
class Accepted:
    session_id: str
    event_id: str
    queued: bool = False  # in the outbox until Kafka answers again
    replayed: bool = False  # the answer an Idempotency-Key got before


def _event(turn: NewTurn, admission: Admission, session_id: str, event_id: str) -> TurnRequested:
    principal = admission.principal
    return TurnRequested(
        event_id=event_id,
        session_id=session_id,
        message=turn.message,
        created_at_ms=int(time.time() * 1000),
        tenant=principal.tenant,
        persona_id=turn.persona_id,
        attachments=list(turn.attachments),
        metadata=dict(turn.metadata),
        principal=principal.subject,
        action=turn.action,
        api=turn.api,
        messages=list(turn.messages),
        generation_json=json.dumps(turn.generation, separators=(",", ":"))
        if turn.generation
        else None,
        after_turn_id=turn.after_turn_id,
    )


async def start_turn(
    res: Resources,
    admission: Admission,
    turn: NewTurn,
    *,
    deadline: float,
    idempotency_key: str | None = None,
) -> Accepted:
    """Admit and publish (or queue) the turn; `deadline` is a `time.monotonic()` value."""
    subject = admission.principal.subject
    remembered: Remembered | None = None
    if idempotency_key is not None:
        remembered = await res.idempotency.find(subject, idempotency_key)
        if remembered is not None:
            _same_request(remembered, turn)
            if remembered.state == "accepted":
                return Accepted(remembered.session_id, remembered.event_id, replayed=True)
    if remembered is None:
        # Rate limits and the session claim first: a refused turn is never published.
        asked = asked_text(turn.message, turn.messages)
        session_id = await admission.admit(turn.session_id, turn.persona_id, asked)
        event_id = uuid.uuid4().hex
        if idempotency_key is not None:
            mine = Remembered(session_id, event_id, turn.fingerprint(), "reserved")
            remembered = await res.idempotency.reserve(subject, idempotency_key, mine)
            _same_request(remembered, turn)  # a concurrent request may have won the key
            if remembered.state == "accepted":  # a concurrent retry won and is done
                return Accepted(remembered.session_id, remembered.event_id, replayed=True)
            session_id, event_id = remembered.session_id, remembered.event_id
    else:
        # Reserved before but maybe never published: publish the same turn again.
        session_id, event_id = remembered.session_id, remembered.event_id
    event = _event(turn, admission, session_id, event_id)
    topic = res.topics.requested.name
    with producer_span(topic, event_id, session_id) as trace:  # the turn's trace starts here
        record = res.codec.encode(event, **trace.headers())
        outcome = await res.outbox.publish(topic, record, deadline)
    if idempotency_key is not None:
        try:
            await res.idempotency.accept(subject, idempotency_key)
        except DependencyUnavailable as exc:
            # Still `reserved`: a retry publishes it again and the policy stage drops it.
            log.warning("idempotency key not marked accepted: %r", exc)
    if outcome == "queued":
        _announce_queued(res, event)
    return Accepted(session_id, event_id, queued=outcome == "queued")


async def cancel_turn(res: Resources, session_id: str, turn_id: str) -> bool:
    """Cancel a turn that has not ended: its stream gets `turn.cancelled` (once), and the
    LLM stage, which looks for that event's key, stops the model call and ends the turn as
    `cancelled`. False when the turn had already ended (nothing to cancel)."""
    if await res.fanout.recorded(res.keys.turn_ended(turn_id)) is not None:
        return False
    await res.fanout.publish(
        session_id,
        turn_id,
        "turn.cancelled",
        {"reason": "cancelled by the client"},
        once_key=res.keys.turn_cancelled(turn_id),
    )
    return True


def _same_request(remembered: Remembered, turn: NewTurn) -> None:
    if remembered.request_hash != turn.fingerprint():
        raise Denied(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request; use a new key",
        )


def _announce_queued(res: Resources, event: TurnRequested) -> None:
    """Tell the session's stream the turn waits for Kafka (best effort, off the request)."""

    async def announce() -> None:
        try:
            await asyncio.wait_for(
                res.fanout.publish(
                    event.session_id,
                    event.event_id,
                    "turn.queued",
                    {
                        "reason": "kafka_unavailable",
                        "message": "Kafka is not answering; the turn is kept in the outbox "
                        "and starts as soon as it is back",
                    },
                ),
                res.settings.turn_accept_deadline_s,
            )
        except Exception as exc:  # best effort: the turn itself is safe in the outbox
            log.warning("could not announce a queued turn: %r", exc)

    task = asyncio.create_task(announce())
    _announcements.add(task)
    task.add_done_callback(_announcements.discard)
