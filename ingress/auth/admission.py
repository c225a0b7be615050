"""What a turn must pass at the ingress before it is published: rate limits, session claim.

They answer synchronously (429 + Retry-After, 404, 403 for a member of the session's
tenant who may not write it), which is why they live here; budgets are decided in the
policy stage, per turn, and reach the client as the turn's first `error` event, while the
policy stage checks authorization again for every turn (docs/security.md).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from gateway_runtime.errors import AuthzUnavailable, DependencyUnavailable
from gateway_runtime.tokens import turn_estimate
from ingress.auth.errors import Denied, not_found, unavailable
from ingress.auth.principal import ANONYMOUS, Principal
from ingress.auth.services import AuthServices, authz_unavailable
from ingress.auth.sessions import MayNotWrite, SessionOfAnotherTenant

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admission:
    principal: Principal
    services: AuthServices

    async def admit(self, session_id: str | None, persona_id: str | None, message: str) -> str:
        """The session id the turn runs in, once the turn may be published."""
        tenant = self.services.tenants.get(self.principal.tenant)
        estimate = turn_estimate(message, tenant.max_output_tokens)
        try:
            decision = await self.services.limiter.admit(self.principal.subject, tenant, estimate)
        except DependencyUnavailable as exc:
            if not tenant.fail_open:
                raise unavailable(
                    "rate_limiter_unavailable",
                    "the rate limiter cannot reach Redis or Postgres and this tenant fails"
                    " closed; retry soon",
                ) from exc
            log.warning("rate limiter unavailable; tenant %s fails open", tenant.name)
        else:
            if not decision.allowed:
                raise Denied(
                    429,
                    "rate_limited",
                    f"{decision.limit} of tenant {tenant.name!r} is {decision.limit_value} a "
                    + (
                        "minute and this turn alone exceeds it"
                        if decision.retry_after_s is None
                        else "minute; retry after the Retry-After seconds"
                    ),
                    retry_after=decision.retry_after_s if decision.retry_after_s else 60,
                )
        sid = session_id or uuid.uuid4().hex
        if self.principal is ANONYMOUS:  # auth off: only sessions no key or token claimed
            if session_id and not await self.services.anonymous.may_use(sid):
                raise session_not_found(sid)
        else:
            try:
                await self.services.sessions.claim(self.principal, sid, persona_id)
            except SessionOfAnotherTenant as exc:
                raise session_not_found(sid) from exc
            except MayNotWrite as exc:
                raise Denied(
                    403, "forbidden", f"you may read session {sid!r} but not post to it"
                ) from exc
            except AuthzUnavailable as exc:
                raise authz_unavailable(exc) from exc
        return sid


def session_not_found(session_id: str) -> Denied:
    return not_found("session_not_found", f"no session {session_id!r} that you may use")
