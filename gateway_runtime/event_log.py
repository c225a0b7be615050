"""The Postgres event log the fan-out falls back to while Redis is unavailable.

Events written here get ids `pg-<n>`; the ingress reads them when its Redis subscription
is down, on every connect, and when Postgres notifies it of an append to a session it
streams (`NOTIFY_CHANNEL`), so a turn that ends during a Redis outage still reaches its
client. Ordering against the Redis log uses the events' millisecond timestamps.
"""

from __future__ import annotations

import asyncpg

from gateway_runtime.errors import DependencyUnavailable

PG_ID_PREFIX = "pg-"
# Each append notifies this channel with the session id: an ingress whose Redis
# subscription looks fine (a hung Redis) still learns that a client has events here.
NOTIFY_CHANNEL = "soma_session_events"


class PostgresEventLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append(
        self,
        session_id: str,
        turn_id: str,
        event_type: str,
        payload: str,
        ts_ms: int,
        once_key: str | None,
    ) -> str | None:
        """Append one event; None when `once_key` was used before."""
        try:
            row_id = await self._pool.fetchval(
                "WITH added AS (INSERT INTO session_events"
                " (session_id, turn_id, type, payload, ts_ms, once_key)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (once_key) DO NOTHING RETURNING id)"
                " SELECT id FROM added, pg_notify($7, $1)",
                session_id,
                turn_id,
                event_type,
                payload,
                ts_ms,
                once_key,
                NOTIFY_CHANNEL,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise DependencyUnavailable(f"fallback event log write failed: {exc!r}") from exc
        return None if row_id is None else f"{PG_ID_PREFIX}{row_id}"

    async def recorded(self, once_key: str) -> str | None:
        try:
            payload: str | None = await self._pool.fetchval(
                "SELECT payload FROM session_events WHERE once_key = $1", once_key
            )
            return payload
        except (OSError, asyncpg.PostgresError) as exc:
            raise DependencyUnavailable(f"fallback event log read failed: {exc!r}") from exc

    async def after(
        self, session_id: str, *, after_id: int = 0, after_ts_ms: int = 0
    ) -> list[tuple[str, str, str, int]]:
        """(id, type, payload, ts_ms) of the session's events after both bounds."""
        try:
            rows = await self._pool.fetch(
                "SELECT id, type, payload, ts_ms FROM session_events"
                " WHERE session_id = $1 AND id > $2 AND ts_ms > $3 ORDER BY id",
                session_id,
                after_id,
                after_ts_ms,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise DependencyUnavailable(f"fallback event log read failed: {exc!r}") from exc
        return [(f"{PG_ID_PREFIX}{r['id']}", r["type"], r["payload"], r["ts_ms"]) for r in rows]

    async def ts_of(self, pg_id: int) -> int:
        try:
            ts = await self._pool.fetchval("SELECT ts_ms FROM session_events WHERE id = $1", pg_id)
        except (OSError, asyncpg.PostgresError) as exc:
            raise DependencyUnavailable(f"fallback event log read failed: {exc!r}") from exc
        return int(ts or 0)
