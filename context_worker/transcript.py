"""The session transcript as the persistence stage stored it in Postgres."""

from __future__ import annotations

import asyncpg

from gateway_runtime.errors import DependencyUnavailable
from schemas.events import ChatMessage


class PostgresTranscript:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def recent(self, session_id: str, limit: int) -> list[ChatMessage]:
        """The last `limit` messages of the session, oldest first."""
        try:
            rows = await self._pool.fetch(
                "SELECT role, content FROM messages WHERE session_id = $1"
                " ORDER BY id DESC LIMIT $2",
                session_id,
                limit,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise DependencyUnavailable(f"transcript read failed: {exc!r}") from exc
        return [ChatMessage(r["role"], r["content"]) for r in reversed(rows)]

    async def holds(self, turn_id: str) -> bool:
        try:
            found = await self._pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE turn_id = $1)", turn_id
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise DependencyUnavailable(f"transcript read failed: {exc!r}") from exc
        return bool(found)
