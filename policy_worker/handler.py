"""The policy stage's logic: TurnRequested in, TurnAuthorized out (or a denial).

For each turn, in order:
0. who sent it (policy_worker/identity.py): a turn from an automation's inbound topic
   runs as the automation that owns the topic, in its tenant; a record naming another
   principal or tenant, or from a topic no active automation owns, is dead-lettered with
   the reason, and the session of an automation's turn is claimed for its tenant (another
   tenant's session is refused the same way);
1. a second Kafka record of a turn already admitted is dropped (adapters/admissions.py);
2. the principal must belong to the turn's tenant now (a key or automation not revoked,
   adapters/principals.py); with auth off a turn of `anonymous` runs in `default` and
   skips step 3; with auth required a turn without a principal is denied;
3. OpenFGA: the principal must have `can_write` on the session (adapters/session_claims.py:
   its owner needs no OpenFGA round trip while OpenFGA answers; cached decisions stand in
   for a short while when OpenFGA is unreachable, then the turn is refused);
4. OPA: the tenant's policy decides on budgets and models from the current usage;
   unreachable, it refuses unless the tenant is `fail_open`;
5. an automation's turn counts against the tenant's RPM/TPM (the ingress counted the
   others);
6. the turn's estimated tokens are reserved atomically against the persona's daily
   budget (the persistence stage settles them when the turn ends).
A denial is the turn's first (and only) event on the session stream: an `error` event
with a machine-readable `code`, a `message` for a person and, when waiting helps,
`retry_after_s`. Nothing is published to the next topic, so nothing is spent. A poster
that may not write the session (steps 2 and 3 said no) is not told there: its denial is
logged and counted only, so nobody can write `error` events into someone else's stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway_runtime.delivery import REPLAY_HEADERS, current_delivery
from gateway_runtime.errors import (
    AuthzUnavailable,
    DependencyUnavailable,
    InvalidEvent,
    PolicyUnavailable,
)
from gateway_runtime.ports import (
    DEFAULT_ROLE,
    Admissions,
    Budgets,
    BudgetUsage,
    Decision,
    Fanout,
    Output,
    PolicyEngine,
    Principals,
    Profiles,
    RateLimits,
    SessionClaimer,
    StoredProfile,
    Tenant,
    Tenants,
)
from gateway_runtime.settings import TurnShapeSettings
from gateway_runtime.tokens import TurnCeiling, TurnCosts, asked_text, turn_estimate
from policy_worker.denials import Denied, deny
from policy_worker.identity import ANONYMOUS, TurnIdentity
from policy_worker.metrics import DECISIONS
from schemas.events import Event, TurnAuthorized, TurnRequested
from schemas.tools import load_definitions
from schemas.topics import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Plan:
    tenant: Tenant
    persona: str  # the budget the turn spends: a declared persona's, else the shared one
    ceiling: TurnCeiling  # the most the turn may spend: what is reserved
    profile: StoredProfile  # the one the turn will run on (the context stage's choice)

    @property
    def estimate(self) -> int:
        return self.ceiling.tokens


def _default_costs() -> TurnCosts:
    """With the settings' defaults; the worker passes one built from its settings."""
    shape = TurnShapeSettings.model_fields
    return TurnCosts(
        load_definitions(),
        context_window_tokens=shape["context_window_tokens"].default,
        max_tool_rounds=shape["max_tool_rounds"].default,
    )


@dataclass
class PolicyHandler:
    topics: Topics
    fanout: Fanout
    require_auth: bool
    engine: PolicyEngine
    budgets: Budgets
    tenants: Tenants
    admissions: Admissions
    principals: Principals
    claims: SessionClaimer
    profiles: Profiles
    rate_limits: RateLimits
    costs: TurnCosts = dataclasses.field(default_factory=_default_costs)
    stage: str = "policy"
    identity: TurnIdentity = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.identity = TurnIdentity(self.topics, self.principals, self.claims, self.require_auth)

    @property
    def input_topic(self) -> str:
        return self.topics.requested.name

    async def handle(self, event: Event) -> Sequence[Output]:
        if not isinstance(event, TurnRequested):
            raise InvalidEvent(f"policy stage expects TurnRequested, got {type(event).__name__}")
        event, from_automation = await self.identity.from_inbound(event)
        try:
            principal = self._principal(event)
        except Denied as denied:
            return await self._denied(event, denied) if await self._first_record(event) else []
        try:
            # Whether this record runs the turn, the principal's tenant, OpenFGA and OPA
            # answer independent questions (all reads but the first): ask them at once.
            # A second record of the turn is dropped whatever they say; then who may post
            # comes first: its denial is the one that counts.
            first, member, write, plan = await asyncio.gather(
                self._first_record(event),
                _nothing() if from_automation else self.identity.check_member(event, principal),
                self._check_write(event, principal),
                self._policy(event, principal),
                return_exceptions=True,
            )
            if isinstance(first, BaseException):
                raise first
            if not first:
                return []
            for outcome in (member, write, plan):
                if isinstance(outcome, BaseException):
                    raise outcome
            assert isinstance(plan, _Plan)
            if from_automation:  # the ingress's clients were counted there
                await self._check_rate(event, principal, plan.tenant)
            reserved = await self._reserve(event, principal, plan)
        except Denied as denied:
            return await self._denied(event, denied)
        DECISIONS.labels("allowed").inc()
        await self.fanout.publish(
            event.session_id,
            event.event_id,
            "turn.accepted",
            {"principal": principal, "reserved_tokens": reserved},
        )
        authorized = TurnAuthorized(
            request=event,
            principal=principal,
            authorized_at_ms=int(time.time() * 1000),
            reserved_tokens=reserved,
            max_output_tokens=plan.tenant.max_output_tokens,
        )
        return [Output(self.topics.authorized.name, authorized)]

    async def _denied(self, event: TurnRequested, denied: Denied) -> list[Output]:
        DECISIONS.labels(denied.error.code).inc()
        log.info("turn denied: %s", denied.error.code)
        if denied.tell_session:
            await self.fanout.publish_error(event.session_id, event.event_id, denied.error)
        return []

    async def _first_record(self, event: TurnRequested) -> bool:
        """False for a second record of a turn already admitted (dropped, not run twice).

        Replay headers count only on the requests topic, where the gateway writes them: on
        an inbound topic they are the automation's word, and it may not re-run a turn."""
        delivery = current_delivery()
        if delivery is not None and delivery.topic != self.input_topic:
            delivery = dataclasses.replace(
                delivery, headers=[h for h in delivery.headers if h[0] not in REPLAY_HEADERS]
            )
        if delivery is None or await self.admissions.admit(event.event_id, delivery):
            return True
        DECISIONS.labels("duplicate").inc()
        log.warning("dropped a second record of an admitted turn")
        return False

    def _principal(self, event: TurnRequested) -> str:
        if not self.require_auth and not event.principal:
            return ANONYMOUS
        if not event.principal:
            raise deny("unauthenticated", "the turn carries no principal", tell_session=False)
        return event.principal

    async def _check_write(self, event: TurnRequested, principal: str) -> None:
        if principal == ANONYMOUS and not self.require_auth:
            return
        try:
            allowed = await self.claims.can_write(principal, event.session_id)
        except AuthzUnavailable as exc:
            raise deny(
                "authz_unavailable",
                f"authorization cannot be decided now, so the turn was refused ({exc}). "
                "Send it again in a few seconds.",
                5.0,
            ) from exc
        if not allowed:
            raise deny(
                "forbidden",
                f"{principal} may not post to session {event.session_id}",
                tell_session=False,
            )

    async def _policy(self, event: TurnRequested, principal: str) -> _Plan:
        """OPA's decision on the turn from the current usage; a refusal raises. A tenant
        the tenants file does not name is refused, never given `default`'s settings."""
        tenant = self.tenants.find(event.tenant)
        if tenant is None:
            raise deny(
                "unknown_tenant",
                f"tenant {event.tenant!r} is not configured (conf/tenants.yaml), so its "
                "turns are not run; ask an operator to add it",
            )
        persona = tenant.budget_persona(event.persona_id)
        profile = await self._profile(event, tenant)
        ceiling = self.costs.ceiling(tenant, event.message, event.action)
        plan = _Plan(tenant, persona, ceiling, profile)
        if tenant.budget_for(persona) > 0:
            usage = await self.budgets.usage(tenant.name, persona)
        else:  # no budget, no counters: the unlimited hot path does no counter I/O
            usage = BudgetUsage(0, 0, 86400 - int(time.time()) % 86400)
        decision = await self._decide(event, principal, plan, usage)
        if not decision.allow:
            raise deny(decision.reason, decision.message, decision.retry_after)
        return plan

    async def _check_rate(self, event: TurnRequested, principal: str, tenant: Tenant) -> None:
        """An automation's turn counts against the tenant's RPM/TPM like a client's."""
        asked = asked_text(event.message, event.messages)
        estimate = turn_estimate(asked, tenant.max_output_tokens)
        try:
            decision = await self.rate_limits.admit(principal, tenant, estimate)
        except DependencyUnavailable as exc:
            if tenant.fail_open:
                return
            raise deny(
                "rate_limiter_unavailable",
                "the rate limiter cannot be reached and this tenant fails closed",
                5.0,
            ) from exc
        if not decision.allowed:
            raise deny(
                "rate_limited",
                f"{decision.limit} of tenant {tenant.name!r} is {decision.limit_value} a minute",
                decision.retry_after_s or 60.0,
            )

    async def _profile(self, event: TurnRequested, tenant: Tenant) -> StoredProfile:
        """The profile the context stage will pick for the turn: its role's first one the
        tenant allows (or the role's own, which the policy then refuses by its model)."""
        primary, fallbacks = await self.profiles.resolve(
            event.metadata.get("model_role", DEFAULT_ROLE)
        )
        usable = (p for p in (primary, *fallbacks) if tenant.model_allowed(p.model))
        return next(usable, primary)

    async def _reserve(self, event: TurnRequested, principal: str, plan: _Plan) -> int:
        """Tokens held for the turn, atomically against the persona's daily budget: all
        it may spend (`TurnCosts.ceiling`), which the LLM stage keeps it within."""
        tenant, persona, estimate = plan.tenant, plan.persona, plan.estimate
        budget = tenant.budget_for(persona)
        if budget <= 0:
            return 0
        held = await self.budgets.reserve(event.event_id, tenant.name, persona, estimate, budget)
        if held.granted:
            return held.amount
        # Concurrent turns took the budget between the snapshot and the reservation: ask
        # the policy again with the counters the atomic reservation saw, for its reason.
        again = await self._decide(event, principal, plan, held.usage)
        if again.allow:
            again = Decision(
                False,
                "budget_exhausted",
                "the daily token budget is spent",
                held.usage.seconds_to_reset,
            )
        raise deny(again.reason, again.message, again.retry_after)

    async def _decide(
        self, event: TurnRequested, principal: str, plan: _Plan, usage: BudgetUsage
    ) -> Decision:
        tenant = plan.tenant
        try:
            return await self.engine.decide(policy_input(event, plan, principal, usage))
        except PolicyUnavailable as exc:
            if tenant.fail_open:
                log.warning("policy engine unavailable; tenant %s fails open", tenant.name)
                return Decision(True, "fail_open", "")
            raise deny(
                "policy_unavailable",
                f"the budget and quota policy cannot be evaluated now ({exc}), and tenant "
                f"{tenant.name!r} fails closed. Send the turn again in a few seconds.",
                5.0,
            ) from exc


async def _nothing() -> None:
    return None


def policy_input(
    event: TurnRequested, plan: _Plan, principal: str, usage: BudgetUsage
) -> dict[str, Any]:
    """The OPA input document (see deploy/opa/gateway.rego). `model` is the model the turn
    will run on, resolved from its profile, never a name the client wrote."""
    tenant, persona, estimate = plan.tenant, plan.persona, plan.estimate
    return {
        "tenant": {"name": tenant.name, "fail_open": tenant.fail_open},
        "principal": principal,
        "persona": persona,
        "model": plan.profile.model,
        "usage": {
            "tokens_used": usage.used,
            "tokens_reserved": usage.reserved,
            "seconds_to_reset": usage.seconds_to_reset,
        },
        "limits": {
            "tokens_per_day": tenant.budget_for(persona),
            "models_allow": tenant.models_allow,
            "models_deny": tenant.models_deny,
            "max_output_tokens": tenant.max_output_tokens,
            "max_context_tokens": tenant.max_context_tokens,
        },
        "request": {
            "kind": "action" if event.action else "message",
            "action": event.action,
            # All the turn may spend: model_calls x (prompt_tokens + max_output_tokens).
            "estimated_tokens": estimate,
            "model_calls": plan.ceiling.calls,
            "prompt_tokens": plan.ceiling.prompt_tokens,
        },
    }
