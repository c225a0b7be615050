"""Who a session belongs to, and who may read it.

A session is claimed by its first turn: the ingress inserts its row in Postgres
(`sessions`, the arbiter: the first INSERT wins), then writes its OpenFGA relations
(`session#tenant@tenant`, `session#owner@user`). A session of another tenant is answered
as if it did not exist (404), so its existence does not leak. Within a tenant, whether
the caller may write is OpenFGA's decision, taken by the policy stage for every turn.

Reading (SSE, WebSocket) needs `can_read` from OpenFGA, asked on every connect.
"""

from __future__ import annotations

from collections import OrderedDict

import asyncpg

from adapters import openfga
from adapters.openfga import FgaAuthorizer
from gateway_runtime.errors import DependencyUnavailable
from ingress.auth.principal import Principal

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_PG_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


class SessionOfAnotherTenant(Exception):
    """The session exists but belongs to a different tenant."""


def session_relations(session_id: str, tenant: str, owner: str | None) -> list[openfga.Relation]:
    obj = openfga.session(session_id)
    relations = [(openfga.tenant(tenant), "tenant", obj)]
    if owner:
        relations.append((openfga.user(owner), "owner", obj))
    return relations


class SessionAccess:
    def __init__(
        self, pool: asyncpg.Pool, authorizer: FgaAuthorizer, *, max_cached: int = 50_000
    ) -> None:
        self._pool = pool
        self._authorizer = authorizer
        # Sessions whose claim is complete, with their tenant: a claim never changes, so
        # this saves a Postgres round trip on every later turn of the session.
        self._claimed: OrderedDict[str, str] = OrderedDict()
        self._max_cached = max_cached

    async def claim(self, principal: Principal, session_id: str, persona_id: str | None) -> None:
        """Make sure the session exists and is the caller's tenant's; claim it if new."""
        tenant = self._claimed.get(session_id)
        if tenant is not None:
            if tenant != principal.tenant:
                raise SessionOfAnotherTenant(session_id)
            return
        try:
            inserted = await self._pool.fetchval(
                "INSERT INTO sessions (session_id, tenant, persona_id, owner)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (session_id) DO NOTHING RETURNING true",
                session_id,
                principal.tenant,
                persona_id,
                principal.subject,
            )
            row = None
            if not inserted:
                row = await self._pool.fetchrow(
                    "SELECT tenant, owner, authz_written FROM sessions WHERE session_id = $1",
                    session_id,
                )
        except _PG_ERRORS as exc:
            raise DependencyUnavailable(f"session store unavailable: {exc!r}"[:300]) from exc
        if row is not None and row["tenant"] != principal.tenant:
            self._remember(session_id, row["tenant"])
            raise SessionOfAnotherTenant(session_id)
        if row is not None and row["authz_written"]:
            self._remember(session_id, row["tenant"])
            return
        # A new claim, or one whose relations were not written yet (OpenFGA was down, or
        # the row predates authorization): write them, then mark the claim complete.
        owner = principal.subject if row is None else row["owner"]
        await self._authorizer.write(session_relations(session_id, principal.tenant, owner))
        try:
            await self._pool.execute(
                "UPDATE sessions SET authz_written = true WHERE session_id = $1", session_id
            )
        except _PG_ERRORS as exc:
            raise DependencyUnavailable(f"session store unavailable: {exc!r}"[:300]) from exc
        self._remember(session_id, principal.tenant)

    async def can_read(self, principal: Principal, session_id: str) -> bool:
        return await self._authorizer.check(
            openfga.user(principal.subject), "can_read", openfga.session(session_id)
        )

    def _remember(self, session_id: str, tenant: str) -> None:
        self._claimed[session_id] = tenant
        if len(self._claimed) > self._max_cached:
            self._claimed.popitem(last=False)
