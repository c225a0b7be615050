"""Each turn admitted once: the policy stage's record of which Kafka record ran a turn.

A turn (event_id) can reach the requests topic in more than one record: the ingress's
outbox relays a turn whose first send landed after all, an automation publishes twice,
a client's retry with the same Idempotency-Key publishes again. The first record to be
admitted is noted by its coordinates; another record of the same turn is a duplicate and
is dropped, while the same record delivered again (a crash before its offset commit)
runs again, as at-least-once delivery needs. A dead-letter replay (headers `replay-of`,
`replay-source`) is admitted when the turn was never admitted, or when the record it
replays is the one that was: a turn two of whose records were dead-lettered runs once
whichever is replayed.
"""

from __future__ import annotations

import asyncpg

from gateway_runtime.delivery import Delivery
from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.postgres import PG_ERRORS

# Admissions older than this are forgotten (a duplicate arrives within seconds or
# minutes of its turn; a week covers an outbox or a dead letter left that long).
KEEP_DAYS = 7
FORGET_EVERY = 10_000  # admissions between two clean-ups, per process


class PostgresAdmissions:
    """The `Admissions` port, in the `turn_admissions` table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._admitted = 0

    async def admit(self, event_id: str, delivery: Delivery) -> bool:
        """True when this record may run the turn; False for a duplicate record."""
        where = (delivery.topic, delivery.partition, delivery.offset)
        replayed = delivery.replay_source or (None, None, None)
        try:
            row = await self._pool.fetchrow(
                'INSERT INTO turn_admissions (event_id, topic, "partition", "offset", replay_of)'
                " VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (event_id) DO UPDATE SET topic = EXCLUDED.topic,"
                ' "partition" = EXCLUDED."partition", "offset" = EXCLUDED."offset",'
                " replay_of = EXCLUDED.replay_of, admitted_at = now()"
                # a replay of the very record that was admitted (and failed after)
                ' WHERE turn_admissions.topic = $6 AND turn_admissions."partition" = $7'
                ' AND turn_admissions."offset" = $8'
                " RETURNING 1",
                event_id,
                *where,
                delivery.replay_of,
                *replayed,
            )
            if row is not None:
                await self._forget_old()
                return True  # the turn's first record, or a new replay of it
            first = await self._pool.fetchrow(
                'SELECT topic, "partition", "offset" FROM turn_admissions WHERE event_id = $1',
                event_id,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"turn admission failed: {exc!r}") from exc
        return first is not None and tuple(first) == where

    async def _forget_old(self) -> None:
        self._admitted += 1
        if self._admitted % FORGET_EVERY == 1:
            await self._pool.execute(
                "DELETE FROM turn_admissions WHERE admitted_at < now() - make_interval(days => $1)",
                KEEP_DAYS,
            )
