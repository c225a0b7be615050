"""Who a session belongs to: the claim of a new session by its first turn.

A session is claimed by its first turn: its row in Postgres (`sessions`, the arbiter: the
first INSERT wins), then its OpenFGA relations (`session#tenant@tenant`,
`session#owner@user`). The ingress claims the sessions of its clients' turns; the policy
stage claims those of automations, whose turns reach Kafka without the ingress. Within a
tenant, whether a principal may write is OpenFGA's decision, taken by the policy stage.
"""

from __future__ import annotations

from collections import OrderedDict

import asyncpg

from adapters import openfga
from adapters.openfga import FgaAuthorizer
from gateway_runtime.errors import DependencyUnavailable
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
        # Sessions whose claim is complete, with their tenant and owner: a claim never
        # changes, so this saves a Postgres round trip on every later turn of the session.
        self._claimed: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._max_cached = max_cached

    async def claim(
        self, subject: str, tenant_name: str, session_id: str, persona_id: str | None
    ) -> str | None:
        """Make sure the session exists and is `tenant_name`'s; claim it for `subject` if
        new. Returns the session's owner (`subject` for a new claim)."""
        claimed = self._claimed.get(session_id)
        if claimed is not None:
            if claimed[0] != tenant_name:
                raise SessionOfAnotherTenant(session_id)
            return claimed[1]
        try:
            inserted = await self._pool.fetchval(
                "INSERT INTO sessions (session_id, tenant, persona_id, owner)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (session_id) DO NOTHING RETURNING true",
                session_id,
                tenant_name,
                persona_id,
                subject,
            )
            row = None
            if not inserted:
                row = await self._pool.fetchrow(
                    "SELECT tenant, owner, authz_written FROM sessions WHERE session_id = $1",
                    session_id,
                )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"session store unavailable: {exc!r}"[:300]) from exc
        if row is not None and row["tenant"] != tenant_name:
            self._remember(session_id, row["tenant"], row["owner"])
            raise SessionOfAnotherTenant(session_id)
        if row is not None and row["authz_written"]:
            self._remember(session_id, row["tenant"], row["owner"])
            return str(row["owner"]) if row["owner"] is not None else None
        # A new claim, or one whose relations were not written yet (OpenFGA was down, or
        # the row predates authorization): write them, then mark the claim complete.
        owner = subject if row is None else row["owner"]
        await self._authorizer.write(session_relations(session_id, tenant_name, owner))
        try:
            await self._pool.execute(
                "UPDATE sessions SET authz_written = true WHERE session_id = $1", session_id
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"session store unavailable: {exc!r}"[:300]) from exc
        self._remember(session_id, tenant_name, owner)
        return owner

    async def can_read(self, subject: str, session_id: str) -> bool:
        return await self._authorizer.check(
            openfga.user(subject), "can_read", openfga.session(session_id)
        )

    async def can_write(self, subject: str, session_id: str) -> bool:
        return await self._authorizer.check(
            openfga.user(subject), "can_write", openfga.session(session_id)
        )

    def _remember(self, session_id: str, tenant: str, owner: str | None) -> None:
        self._claimed[session_id] = (tenant, owner)
        if len(self._claimed) > self._max_cached:
            self._claimed.popitem(last=False)
