"""The Responses API's responses in Postgres (table `responses`, migration 022).

A row is what the turn's log does not hold: the owner (tenant, principal), the session
and turn, the response's fixed fields (`head`), its status, and once the turn ended, its
events, so a finished response is read (and streamed again) without the session's log,
for RESPONSES_RETENTION_S. An expired row reads as absent; each insert deletes a few of
them, so the table holds about one retention period of responses.

The first terminal state written wins (`finish`): two replicas that watched the same turn
end write the same events anyway, since they read the same log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.postgres import PG_ERRORS
from ingress.openai.responses import ResponseHead

PURGE_BATCH = 100


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    tenant: str
    principal: str
    session_id: str
    turn_id: str
    head: ResponseHead
    status: str
    events: list[tuple[str, dict[str, Any], str]] | None  # (type, data, log id)


def _row(row: asyncpg.Record) -> StoredResponse:
    events = None
    if row["events"] is not None:
        events = [(e["type"], e["data"], e["id"]) for e in json.loads(row["events"])]
    return StoredResponse(
        id=row["id"],
        tenant=row["tenant"],
        principal=row["principal"],
        session_id=row["session_id"],
        turn_id=row["turn_id"],
        head=ResponseHead.from_json(json.loads(row["head"])),
        status=row["status"],
        events=events,
    )


class ResponseStore:
    def __init__(self, pool: asyncpg.Pool, retention_s: int) -> None:
        self._pool = pool
        self._retention_s = retention_s

    async def insert(
        self, *, tenant: str, principal: str, session_id: str, head: ResponseHead, status: str
    ) -> None:
        """Keep a new response (a retried request's row stays as it was)."""
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO responses (id, tenant, principal, session_id, turn_id, head,"
                    " status, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7,"
                    " now() + make_interval(secs => $8)) ON CONFLICT (id) DO NOTHING",
                    head.id,
                    tenant,
                    principal,
                    session_id,
                    head.turn_id,
                    json.dumps(head.to_json()),
                    status,
                    float(self._retention_s),
                )
                await conn.execute(
                    "DELETE FROM responses WHERE id IN (SELECT id FROM responses"
                    " WHERE expires_at < now() LIMIT $1)",
                    PURGE_BATCH,
                )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"response store unavailable: {exc!r}") from exc

    async def get(self, response_id: str) -> StoredResponse | None:
        try:
            row = await self._pool.fetchrow(
                "SELECT * FROM responses WHERE id = $1 AND expires_at > now()", response_id
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"response store unavailable: {exc!r}") from exc
        return None if row is None else _row(row)

    async def finish(
        self, response_id: str, status: str, events: list[tuple[str, dict[str, Any], str]]
    ) -> None:
        """The turn ended: its status and events (the first writer's stay)."""
        payload = json.dumps([{"type": t, "data": d, "id": i} for t, d, i in events])
        try:
            await self._pool.execute(
                "UPDATE responses SET status = $2, events = $3::jsonb"
                " WHERE id = $1 AND events IS NULL",
                response_id,
                status,
                payload,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"response store unavailable: {exc!r}") from exc

    async def mark_cancelled(self, response_id: str) -> None:
        """The client cancelled it (unless it had ended)."""
        try:
            await self._pool.execute(
                "UPDATE responses SET status = 'cancelled'"
                " WHERE id = $1 AND events IS NULL AND status IN ('queued', 'in_progress')",
                response_id,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"response store unavailable: {exc!r}") from exc

    async def delete(self, response_id: str) -> bool:
        try:
            deleted = await self._pool.fetchval(
                "DELETE FROM responses WHERE id = $1 AND expires_at > now() RETURNING id",
                response_id,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"response store unavailable: {exc!r}") from exc
        return deleted is not None
