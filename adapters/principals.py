"""Which tenant a principal belongs to, as the policy stage checks for every turn.

A turn's `principal` and `tenant` are two fields of a record; the policy stage believes
them only together with this answer from the records that define them: an API key's
tenant (`api_keys`, unless revoked), an automation's (`automations`, unless revoked), a
JWT subject's (its tenant is part of the subject the ingress built from a verified
token). Anything else belongs to no tenant.
"""

from __future__ import annotations

import asyncpg

from adapters.automations import AutomationRegistry
from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.ports import Automation
from gateway_runtime.postgres import PG_ERRORS

KEY, AUTOMATION, JWT = "key:", "automation:", "jwt:"


class PrincipalDirectory:
    """The `Principals` port, over Postgres."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._automations = AutomationRegistry(pool)

    async def tenant_of(self, principal: str) -> str | None:
        """The tenant `principal` acts in now; None when it is unknown or revoked."""
        if principal.startswith(KEY):
            try:
                tenant: str | None = await self._pool.fetchval(
                    "SELECT tenant FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL",
                    principal.removeprefix(KEY),
                )
            except PG_ERRORS as exc:
                raise DependencyUnavailable(f"api key lookup: {exc!r}") from exc
            return tenant
        if principal.startswith(AUTOMATION):
            found = await self._automations.get(principal.removeprefix(AUTOMATION))
            return found.tenant if found is not None and found.active else None
        if principal.startswith(JWT):
            tenant, slash, subject = principal.removeprefix(JWT).partition("/")
            return tenant if slash and tenant and subject else None
        return None

    async def automation_of(self, topic: str) -> Automation | None:
        """The automation whose inbound topic this is (revoked or not), if any."""
        return await self._automations.by_topic(topic)
