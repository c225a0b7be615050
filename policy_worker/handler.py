"""The policy stage's logic: TurnRequested in, TurnAuthorized out (or a denial).

With `GATEWAY_REQUIRE_AUTH=false` every turn runs as its principal or as `anonymous`.
With auth required, a turn without an authenticated principal is denied: automations
publishing straight to Kafka must carry one (see docs/events.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway_runtime.errors import InvalidEvent
from gateway_runtime.fanout import FanoutPublisher
from gateway_runtime.stage import Output
from schemas.events import ErrorInfo, Event, TurnAuthorized, TurnRequested
from schemas.topics import Topics

log = logging.getLogger(__name__)
ANONYMOUS = "anonymous"


@dataclass
class PolicyHandler:
    topics: Topics
    fanout: FanoutPublisher
    require_auth: bool
    stage: str = "policy"

    @property
    def input_topic(self) -> str:
        return self.topics.requested.name

    async def handle(self, event: Event) -> Sequence[Output]:
        if not isinstance(event, TurnRequested):
            raise InvalidEvent(f"policy stage expects TurnRequested, got {type(event).__name__}")
        principal = event.principal or (None if self.require_auth else ANONYMOUS)
        if principal is None:
            await self.fanout.publish_error(
                event.session_id,
                event.event_id,
                ErrorInfo(code="unauthenticated", message="the turn carries no principal"),
            )
            log.info("turn denied: no principal")
            return []
        await self.fanout.publish(
            event.session_id, event.event_id, "turn.accepted", {"principal": principal}
        )
        authorized = TurnAuthorized(
            request=event, principal=principal, authorized_at_ms=int(time.time() * 1000)
        )
        return [Output(self.topics.authorized.name, authorized)]
