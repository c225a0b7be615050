"""Who a session belongs to: the claim of a new session by its first turn.

A session is claimed by its first turn: its row in Postgres (`sessions`, the arbiter: the
first INSERT wins) names its tenant and owner, for good. The ingress claims the sessions
of its clients' turns; the policy stage claims those of automations, whose turns reach
Kafka without the ingress.

Who may read or write a session is decided by the OpenFGA model (`can_write: owner or
writer or admin from tenant`, `can_read: can_write or reader or member from tenant`),
with the session's tenant and owner passed to OpenFGA as contextual tuples from the row
instead of being written to it: a claim costs one Postgres statement and no OpenFGA
write. The owner's own decisions follow from the row and the model without asking
OpenFGA, but only while OpenFGA answers (`FgaAuthorizer.answering`): when it stops, they
stand in for OPENFGA_CACHE_TTL_S like cached decisions, then fail closed.
"""

from __future__ import annotations

from collections import OrderedDict

import asyncpg

from adapters import openfga
from adapters.openfga import FgaAuthorizer
from gateway_runtime.errors import AuthzUnavailable, DependencyUnavailable
from gateway_runtime.postgres import PG_ERRORS


class SessionOfAnotherTenant(Exception):
    """The session exists but belongs to a different tenant."""


def session_relations(session_id: str, tenant: str, owner: str | None) -> list[openfga.Relation]:
    obj = openfga.session(session_id)
    relations = [(openfga.tenant(tenant), "tenant", obj)]
    if owner:
        relations.append((openfga.user(owner), "owner", obj))
    return relations


class SessionClaims:
    def __init__(
        self, pool: asyncpg.Pool, authorizer: FgaAuthorizer, *, max_cached: int = 50_000
    ) -> None:
        self._pool = pool
        self._authorizer = authorizer
        # Sessions seen, with their tenant and owner: a claim never changes, so this saves
        # a Postgres round trip on every later turn or read of the session.
        self._claimed: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._max_cached = max_cached

    async def claim(
        self, subject: str, tenant_name: str, session_id: str, persona_id: str | None
    ) -> str | None:
        """Make sure the session exists and is `tenant_name`'s; claim it for `subject` if
        new. Returns the session's owner (`subject` for a new claim).

        AuthzUnavailable while OpenFGA does not answer: nobody could use the session."""
        claimed = self._claimed.get(session_id)
        if claimed is None:
            if not await self._authorizer.answering():
                raise AuthzUnavailable("the authorization service does not answer")
            try:
                row = await self._pool.fetchrow(
                    "WITH new AS (INSERT INTO sessions (session_id, tenant, persona_id, owner)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (session_id) DO NOTHING"
                    " RETURNING tenant, owner)"
                    " SELECT tenant, owner FROM new UNION ALL"
                    " SELECT tenant, owner FROM sessions WHERE session_id = $1",
                    session_id,
                    tenant_name,
                    persona_id,
                    subject,
                )
            except PG_ERRORS as exc:
                raise DependencyUnavailable(f"session store unavailable: {exc!r}"[:300]) from exc
            if row is None:  # a concurrent first claim committed after our snapshot
                claimed = await self._session(session_id)
                assert claimed is not None  # inserted, or there already
            else:
                claimed = self._remember(session_id, row["tenant"], row["owner"])
        if claimed[0] != tenant_name:
            raise SessionOfAnotherTenant(session_id)
        return claimed[1]

    async def can_read(self, subject: str, session_id: str) -> bool:
        return await self._may(subject, "can_read", session_id)

    async def can_write(self, subject: str, session_id: str) -> bool:
        return await self._may(subject, "can_write", session_id)

    async def _may(self, subject: str, relation: str, session_id: str) -> bool:
        claimed = await self._session(session_id)
        if claimed is None:
            return False
        tenant, owner = claimed
        if owner == subject:  # the model gives its owner both relations
            if await self._authorizer.answering():
                return True
            raise AuthzUnavailable("the authorization service does not answer")
        return await self._authorizer.check(
            openfga.user(subject),
            relation,
            openfga.session(session_id),
            contextual=session_relations(session_id, tenant, owner),
        )

    async def _session(self, session_id: str) -> tuple[str, str | None] | None:
        """The session's tenant and owner; None when nobody claimed it."""
        claimed = self._claimed.get(session_id)
        if claimed is not None:
            return claimed
        try:
            row = await self._pool.fetchrow(
                "SELECT tenant, owner FROM sessions WHERE session_id = $1", session_id
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"session store unavailable: {exc!r}"[:300]) from exc
        return None if row is None else self._remember(session_id, row["tenant"], row["owner"])

    def _remember(self, session_id: str, tenant: str, owner: str | None) -> tuple[str, str | None]:
        claimed = self._claimed[session_id] = (tenant, owner)
        if len(self._claimed) > self._max_cached:
            self._claimed.popitem(last=False)
        return claimed
