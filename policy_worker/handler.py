"""The policy stage's logic: TurnRequested in, TurnAuthorized out (or a denial).

For each turn, in order:
0. a second Kafka record of a turn already admitted is dropped (adapters/admissions.py);
1. a principal: with auth required a turn without one is denied (automations publishing
   straight to Kafka must carry one, see docs/events.md); with auth off a turn without an
   authenticated principal (`key:…`, `jwt:…`) runs as its principal or `anonymous` and
   skips step 2;
2. OpenFGA: the principal must have `can_write` on the session (cached decisions stand
   in for a short while when OpenFGA is unreachable, then the turn is refused);
3. OPA: the tenant's policy decides on budgets and models from the current usage;
   unreachable, it refuses unless the tenant is `fail_open`;
4. the turn's estimated tokens are reserved atomically against the persona's daily
   budget (the persistence stage settles them when the turn ends).
A denial is the turn's first (and only) event on the session stream: an `error` event
with a machine-readable `code`, a `message` for a person and, when waiting helps,
`retry_after_s`. Nothing is published to the next topic, so nothing is spent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapters import openfga
from gateway_runtime.delivery import current_delivery
from gateway_runtime.errors import AuthzUnavailable, InvalidEvent, PolicyUnavailable
from gateway_runtime.ports import (
    DEFAULT_PERSONA,
    Admissions,
    Authorizer,
    Budgets,
    BudgetUsage,
    Decision,
    Fanout,
    Output,
    PolicyEngine,
    Tenant,
    Tenants,
)
from gateway_runtime.tokens import turn_estimate
from policy_worker.metrics import DECISIONS
from schemas.events import ErrorInfo, Event, TurnAuthorized, TurnRequested
from schemas.topics import Topics

log = logging.getLogger(__name__)
ANONYMOUS = "anonymous"


class _Denied(Exception):
    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.code)
        self.error = error


@dataclass(frozen=True, slots=True)
class _Plan:
    tenant: Tenant
    persona: str
    estimate: int


def _deny(code: str, message: str, retry_after_s: float | None = None) -> _Denied:
    retryable = retry_after_s is not None and retry_after_s > 0
    return _Denied(ErrorInfo(code, message, retryable, retry_after_s if retryable else None))


@dataclass
class PolicyHandler:
    topics: Topics
    fanout: Fanout
    require_auth: bool
    authorizer: Authorizer
    engine: PolicyEngine
    budgets: Budgets
    tenants: Tenants
    admissions: Admissions
    stage: str = "policy"

    @property
    def input_topic(self) -> str:
        return self.topics.requested.name

    async def handle(self, event: Event) -> Sequence[Output]:
        if not isinstance(event, TurnRequested):
            raise InvalidEvent(f"policy stage expects TurnRequested, got {type(event).__name__}")
        if not await self._first_record(event):
            return []
        try:
            principal = self._principal(event)
            # OpenFGA and OPA answer independent questions: ask both at once. When both
            # refuse, the authorization answer is the one the client gets.
            write, plan = await asyncio.gather(
                self._check_write(event, principal),
                self._policy(event, principal),
                return_exceptions=True,
            )
            for outcome in (write, plan):
                if isinstance(outcome, BaseException):
                    raise outcome
            assert isinstance(plan, _Plan)
            reserved = await self._reserve(event, principal, plan)
        except _Denied as denied:
            DECISIONS.labels(denied.error.code).inc()
            log.info("turn denied: %s", denied.error.code)
            await self.fanout.publish_error(event.session_id, event.event_id, denied.error)
            return []
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
        )
        return [Output(self.topics.authorized.name, authorized)]

    async def _first_record(self, event: TurnRequested) -> bool:
        """False for a second record of a turn already admitted (dropped, not run twice)."""
        delivery = current_delivery()
        if delivery is None or await self.admissions.admit(event.event_id, delivery):
            return True
        DECISIONS.labels("duplicate").inc()
        log.warning("dropped a second record of an admitted turn")
        return False

    def _principal(self, event: TurnRequested) -> str:
        if not self.require_auth and not _authenticated(event.principal):
            return event.principal or ANONYMOUS
        if not event.principal:
            raise _deny("unauthenticated", "the turn carries no principal")
        return event.principal

    async def _check_write(self, event: TurnRequested, principal: str) -> None:
        if not self.require_auth and not _authenticated(principal):
            return
        try:
            allowed = await self.authorizer.check(
                openfga.user(principal), "can_write", openfga.session(event.session_id)
            )
        except AuthzUnavailable as exc:
            raise _deny(
                "authz_unavailable",
                f"authorization cannot be decided now, so the turn was refused ({exc}). "
                "Send it again in a few seconds.",
                5.0,
            ) from exc
        if not allowed:
            raise _deny("forbidden", f"{principal} may not post to session {event.session_id}")

    async def _policy(self, event: TurnRequested, principal: str) -> _Plan:
        """OPA's decision on the turn from the current usage; a refusal raises."""
        tenant = self.tenants.get(event.tenant)
        persona = event.persona_id or DEFAULT_PERSONA
        plan = _Plan(tenant, persona, turn_estimate(event.message, tenant.max_output_tokens))
        if tenant.budget_for(persona) > 0:
            usage = await self.budgets.usage(tenant.name, persona)
        else:  # no budget, no counters: the unlimited hot path does no counter I/O
            usage = BudgetUsage(0, 0, 86400 - int(time.time()) % 86400)
        decision = await self._decide(event, principal, plan, usage)
        if not decision.allow:
            raise _deny(decision.reason, decision.message, decision.retry_after)
        return plan

    async def _reserve(self, event: TurnRequested, principal: str, plan: _Plan) -> int:
        """Tokens held for the turn, atomically against the persona's daily budget."""
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
        raise _deny(again.reason, again.message, again.retry_after)

    async def _decide(
        self, event: TurnRequested, principal: str, plan: _Plan, usage: BudgetUsage
    ) -> Decision:
        tenant = plan.tenant
        try:
            return await self.engine.decide(
                policy_input(event, tenant, principal, plan.persona, plan.estimate, usage)
            )
        except PolicyUnavailable as exc:
            if tenant.fail_open:
                log.warning("policy engine unavailable; tenant %s fails open", tenant.name)
                return Decision(True, "fail_open", "")
            raise _deny(
                "policy_unavailable",
                f"the budget and quota policy cannot be evaluated now ({exc}), and tenant "
                f"{tenant.name!r} fails closed. Send the turn again in a few seconds.",
                5.0,
            ) from exc


def _authenticated(principal: str | None) -> bool:
    """A principal the ingress authenticated (an API key or a JWT): held to its grants
    even with auth off, where other principals (anonymous, automations) are trusted."""
    return principal is not None and principal.startswith(("key:", "jwt:"))


def policy_input(
    event: TurnRequested,
    tenant: Tenant,
    principal: str,
    persona: str,
    estimate: int,
    usage: BudgetUsage,
) -> dict[str, Any]:
    """The OPA input document (see deploy/opa/gateway.rego)."""
    return {
        "tenant": {"name": tenant.name, "fail_open": tenant.fail_open},
        "principal": principal,
        "persona": persona,
        "model": event.metadata.get("model", ""),
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
        },
        "request": {
            "kind": "action" if event.action else "message",
            "action": event.action,
            "estimated_tokens": estimate,
        },
    }
