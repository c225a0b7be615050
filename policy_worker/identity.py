"""Who sent a turn, and whether they belong to its tenant now.

The broker decides who may write which topic: the requests topic only the mesh's own
services (the ingress), an automation's inbound topic only that automation. So a turn
from an inbound topic runs as the automation that owns the topic, in its tenant, and a
turn on the requests topic carries the principal the ingress verified; either way the
principal must belong to the turn's tenant when the turn is decided (adapters/principals.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from adapters.session_claims import SessionOfAnotherTenant
from gateway_runtime.delivery import current_delivery
from gateway_runtime.errors import InvalidEvent
from gateway_runtime.ports import DEFAULT_TENANT, Principals, SessionClaimer
from policy_worker.denials import deny
from schemas.events import TurnRequested
from schemas.topics import Topics

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class TurnIdentity:
    topics: Topics
    principals: Principals
    claims: SessionClaimer
    require_auth: bool

    async def from_inbound(self, event: TurnRequested) -> tuple[TurnRequested, bool]:
        """A turn from an automation's inbound topic, as that automation in its tenant;
        True when it is one (its principal's tenant is then known to be the turn's).

        The broker let only the automation's credentials write the topic, so the topic is
        who sent it; the record's own `principal` and `tenant` may only agree with it (a
        `tenant` left at the schema's default takes the automation's).
        """
        topic = self.inbound_source()
        if topic is None:
            return event, False
        automation = await self.principals.automation_of(topic)
        if automation is None or not automation.active:
            state = "revoked" if automation is not None else "unknown"
            raise InvalidEvent(
                f"{topic} is not the inbound topic of an active automation ({state}): "
                "the turn is not run"
            )
        if event.principal not in (None, "", automation.principal):
            raise InvalidEvent(
                f"forged principal: {topic} belongs to {automation.principal}, "
                "the record names another"
            )
        if event.tenant not in (automation.tenant, DEFAULT_TENANT):
            raise InvalidEvent(
                f"forged tenant: {automation.principal} belongs to tenant "
                f"{automation.tenant!r}, the record names another"
            )
        try:
            await self.claims.claim(
                automation.principal, automation.tenant, event.session_id, event.persona_id
            )
        except SessionOfAnotherTenant as exc:
            raise InvalidEvent(
                f"session of another tenant: {automation.principal} may not post to it"
            ) from exc
        turn = dataclasses.replace(event, principal=automation.principal, tenant=automation.tenant)
        return turn, True

    def inbound_source(self) -> str | None:
        """The inbound topic the turn came from: the record's own topic, or, for a replay
        the gateway made of an inbound record (on the requests topic, which only the mesh
        writes), the topic it replays; None for the ingress's turns."""
        delivery = current_delivery()
        if delivery is None:
            return None
        if delivery.topic != self.topics.requested.name:
            return delivery.topic
        replayed = delivery.replay_source
        if replayed is not None and self.topics.is_inbound(replayed[0]):
            return replayed[0]
        return None

    async def check_member(self, event: TurnRequested, principal: str) -> None:
        """The principal belongs to the turn's tenant now (not revoked, not another's)."""
        if principal == ANONYMOUS and not self.require_auth:
            if event.tenant != DEFAULT_TENANT:
                raise deny(
                    "forbidden",
                    "anonymous turns run in the default tenant only",
                    tell_session=False,
                )
            return
        tenant = await self.principals.tenant_of(principal)
        if tenant is None:
            raise deny(
                "principal_unknown", f"{principal} is unknown or revoked", tell_session=False
            )
        if tenant != event.tenant:
            raise deny(
                "forbidden",
                f"{principal} does not belong to tenant {event.tenant!r}",
                tell_session=False,
            )
