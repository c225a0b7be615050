"""The automations registry: which inbound topic belongs to which automation and tenant.

`soma-gateway automation add` registers an automation here after the broker has a SCRAM
principal for it that may write only its inbound topic. The policy stage reads it to
derive a turn's tenant and principal from the topic the broker let the record into.
"""

from __future__ import annotations

import asyncpg

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.ports import Automation
from gateway_runtime.postgres import PG_ERRORS

__all__ = ["Automation", "AutomationExists", "AutomationRegistry"]

_COLUMNS = "name, tenant, topic, created_at, revoked_at"


class AutomationExists(Exception):
    """`add` of a name that is registered (revoked or not): names are never reused."""


class AutomationRegistry:
    """The `automations` table."""

    def __init__(self, pool: asyncpg.Pool | asyncpg.pool.PoolConnectionProxy) -> None:
        # a connection: the CLI's `add`, whose row commits with the broker's changes
        self._pool = pool

    async def add(self, name: str, tenant: str, topic: str) -> Automation:
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO automations (name, tenant, topic) VALUES ($1, $2, $3)"
                f" ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
                name,
                tenant,
                topic,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"automation registry: {exc!r}") from exc
        if row is None:
            raise AutomationExists(name)
        return Automation(**row)

    async def get(self, name: str) -> Automation | None:
        return await self._one("name", name)

    async def by_topic(self, topic: str) -> Automation | None:
        return await self._one("topic", topic)

    async def _one(self, column: str, value: str) -> Automation | None:
        try:
            row = await self._pool.fetchrow(
                f"SELECT {_COLUMNS} FROM automations WHERE {column} = $1", value
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"automation registry: {exc!r}") from exc
        return None if row is None else Automation(**row)

    async def list(self) -> list[Automation]:
        try:
            rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM automations ORDER BY name")
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"automation registry: {exc!r}") from exc
        return [Automation(**row) for row in rows]

    async def revoke(self, name: str) -> bool:
        """True when `name` was active and is revoked now."""
        try:
            row = await self._pool.fetchrow(
                "UPDATE automations SET revoked_at = now()"
                " WHERE name = $1 AND revoked_at IS NULL RETURNING 1",
                name,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"automation registry: {exc!r}") from exc
        return row is not None
