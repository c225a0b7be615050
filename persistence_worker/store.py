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
        """Store the turn; returns False when it was stored before (a redelivery).

        One statement, so one round trip and its own transaction: the session row, the
        turn and (for a completed turn) its two messages, the user's first."""
        req = turn.request
        completed = turn.status == "completed"
        user_text = req.message if req.action is None else f"[action] {req.action}"
        try:
            inserted = await self._pool.fetchval(
                _SAVE,
                req.session_id,
                req.tenant,
                req.persona_id,
                req.event_id,
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
                completed,
                user_text,
                turn.answer,
            )
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise DependencyUnavailable(f"postgres write failed: {exc!r}") from exc
        return bool(inserted)


_SAVE = """
WITH session AS (
    INSERT INTO sessions (session_id, tenant, persona_id) VALUES ($1, $2, $3)
    ON CONFLICT (session_id) DO UPDATE SET updated_at = now()
), turn AS (
    INSERT INTO turns (turn_id, session_id, tenant, principal, status, model, prompt_tokens,
                       completion_tokens, cost_usd, error_code, error_message, requested_at,
                       completed_at)
    VALUES ($4, $1, $2, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
    ON CONFLICT (turn_id) DO NOTHING RETURNING turn_id
), message AS (
    INSERT INTO messages (session_id, turn_id, role, content)
    SELECT $1, turn.turn_id, m.role, m.content
    FROM turn, (VALUES (1, 'user', $16::text), (2, 'assistant', $17::text)) AS m(n, role, content)
    WHERE $15::bool
    ORDER BY m.n
    ON CONFLICT (turn_id, role) DO NOTHING
)
SELECT count(*) > 0 FROM turn
"""
