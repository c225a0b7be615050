"""Writes a finished turn to Postgres, once per turn id whatever the redeliveries."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from gateway_runtime.errors import DependencyUnavailable
from schemas.events import TurnCompleted


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class PostgresTurnStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def save(self, turn: TurnCompleted) -> bool:
        """Store the turn; returns False when it was stored before (a redelivery)."""
        req = turn.request
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO sessions (session_id, tenant, persona_id) VALUES ($1, $2, $3)"
                    " ON CONFLICT (session_id) DO UPDATE SET updated_at = now()",
                    req.session_id,
                    req.tenant,
                    req.persona_id,
                )
                inserted = await conn.fetchval(
                    "INSERT INTO turns (turn_id, session_id, tenant, principal, status, model,"
                    " prompt_tokens, completion_tokens, cost_usd, error_code, error_message,"
                    " requested_at, completed_at)"
                    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
                    " ON CONFLICT (turn_id) DO NOTHING RETURNING turn_id",
                    req.event_id,
                    req.session_id,
                    req.tenant,
                    turn.principal,
                    turn.status,
                    turn.model,
                    turn.usage.prompt_tokens,
                    turn.usage.completion_tokens,
                    turn.usage.cost_usd,
                    turn.error.code if turn.error else None,
                    turn.error.message if turn.error else None,
                    _ts(req.created_at_ms),
                    _ts(turn.completed_at_ms),
                )
                if inserted is None:
                    return False
                if turn.status == "completed":
                    user_text = req.message if req.action is None else f"[action] {req.action}"
                    await conn.executemany(
                        "INSERT INTO messages (session_id, turn_id, role, content)"
                        " VALUES ($1, $2, $3, $4) ON CONFLICT (turn_id, role) DO NOTHING",
                        [
                            (req.session_id, req.event_id, "user", user_text),
                            (req.session_id, req.event_id, "assistant", turn.answer),
                        ],
                    )
                return True
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise DependencyUnavailable(f"postgres write failed: {exc!r}") from exc
