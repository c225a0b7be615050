"""The dead-letter index in Postgres: written by deadletter_index, read by /v1/requeue.

A row is keyed by where its record failed (source topic, partition, offset), so the same
dead letter indexed twice (the topic redelivered, or a stage dead-lettered one record
twice around a crash) is one row. A row's status moves once, from `pending` to
`replayed` or `discarded`, in one conditional UPDATE: two operators resolving the same
row at once replay it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from gateway_runtime.errors import DependencyUnavailable, InvalidEvent
from gateway_runtime.postgres import PG_ERRORS
from schemas.codec import Headers, headers_from_json, headers_to_json

Status = Literal["pending", "replayed", "discarded"]

_COLUMNS = (
    "id, source_topic, source_partition, source_offset, stage, error_type, error_message,"
    " attempts, first_failed_at, last_failed_at, session_id, event_id, tenant, replay_of,"
    " value_omitted, status, replays, replayed_at, replayed_by, discarded_at, discarded_by,"
    " indexed_at"
)


@dataclass(frozen=True, slots=True)
class Failure:
    """Where and how a record failed, as its dead letter's provenance says."""

    source_topic: str
    source_partition: int
    source_offset: int
    stage: str
    error_type: str
    error_message: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    session_id: str | None
    event_id: str | None
    tenant: str | None
    replay_of: int | None
    value_omitted: str | None


@dataclass(frozen=True, slots=True)
class NewDeadLetter(Failure):
    """What the index keeps of one record of the dead-letter topic."""

    key: bytes
    value: bytes
    headers: Headers  # the original record's, without the provenance headers


@dataclass(frozen=True, slots=True)
class DeadLetter(Failure):
    """An indexed dead letter, as the requeue API shows it."""

    id: int
    status: Status
    replays: int
    replayed_at: datetime | None
    replayed_by: str | None
    discarded_at: datetime | None
    discarded_by: str | None
    indexed_at: datetime


@dataclass(frozen=True, slots=True)
class Filters:
    stage: str | None = None
    error_type: str | None = None
    tenant: str | None = None
    session_id: str | None = None
    status: Status | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """The original record of a dead letter, as a replay sends it back."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers


def _row(record: asyncpg.Record) -> DeadLetter:
    return DeadLetter(**dict(record))


class DeadLetterStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def index(self, letter: NewDeadLetter) -> bool:
        """Keep one dead letter; False when it was indexed before."""
        try:
            row_id = await self._pool.fetchval(
                "INSERT INTO dead_letters (source_topic, source_partition, source_offset, stage,"
                " error_type, error_message, attempts, first_failed_at, last_failed_at,"
                " session_id, event_id, tenant, replay_of, record_key, record_value,"
                " record_headers, value_omitted)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
                " (SELECT id FROM dead_letters WHERE id = $13), $14, $15, $16::jsonb, $17)"
                " ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING"
                " RETURNING id",
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.stage,
                letter.error_type,
                letter.error_message,
                letter.attempts,
                letter.first_failed_at,
                letter.last_failed_at,
                letter.session_id,
                letter.event_id,
                letter.tenant,
                letter.replay_of,
                letter.key,
                letter.value,
                headers_to_json(letter.headers),
                letter.value_omitted,
            )
        except asyncpg.DataError as exc:  # this record, not Postgres: retrying cannot help
            raise InvalidEvent(f"dead letter not indexable: {exc!r}") from exc
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"dead-letter index write failed: {exc!r}") from exc
        return row_id is not None

    async def list(
        self, filters: Filters, *, after_id: int = 0, limit: int = 50
    ) -> list[DeadLetter]:
        """Oldest first, from `after_id` on (the cursor is the last id of the page before)."""
        clauses: list[str] = ["id > $1"]
        args: list[object] = [after_id]
        for column, value, op in (
            ("stage", filters.stage, "="),
            ("error_type", filters.error_type, "="),
            ("tenant", filters.tenant, "="),
            ("session_id", filters.session_id, "="),
            ("status", filters.status, "="),
            ("last_failed_at", filters.since, ">="),
            ("last_failed_at", filters.until, "<"),
        ):
            if value is not None:
                args.append(value)
                clauses.append(f"{column} {op} ${len(args)}")
        args.append(limit)
        query = (
            f"SELECT {_COLUMNS} FROM dead_letters WHERE {' AND '.join(clauses)}"
            f" ORDER BY id LIMIT ${len(args)}"
        )
        try:
            rows = await self._pool.fetch(query, *args)
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"dead-letter index read failed: {exc!r}") from exc
        return [_row(r) for r in rows]

    async def get(self, letter_id: int) -> DeadLetter | None:
        try:
            row = await self._pool.fetchrow(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE id = $1", letter_id
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"dead-letter index read failed: {exc!r}") from exc
        return None if row is None else _row(row)

    async def record(self, letter_id: int) -> StoredRecord:
        try:
            row = await self._pool.fetchrow(
                "SELECT source_topic, record_key, record_value, record_headers"
                " FROM dead_letters WHERE id = $1",
                letter_id,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"dead-letter index read failed: {exc!r}") from exc
        if row is None:
            raise LookupError(letter_id)
        return StoredRecord(
            row["source_topic"],
            bytes(row["record_key"]),
            bytes(row["record_value"]),
            headers_from_json(row["record_headers"]),
        )

    async def mark(
        self,
        letter_id: int,
        status: Status,
        who: str,
        *,
        conn: asyncpg.pool.PoolConnectionProxy | None = None,
    ) -> DeadLetter | None:
        """Move a pending row to `status`; None when it is not pending (any more). With
        `conn`, inside the caller's transaction (a replay queues its record in the same)."""
        if status == "replayed":
            assignment = "replays = replays + 1, replayed_at = now(), replayed_by = $2"
        else:
            assignment = "discarded_at = now(), discarded_by = $2"
        try:
            row = await (conn or self._pool).fetchrow(
                f"UPDATE dead_letters SET status = $3, {assignment}"
                f" WHERE id = $1 AND status = 'pending' RETURNING {_COLUMNS}",
                letter_id,
                who,
                status,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"dead-letter index write failed: {exc!r}") from exc
        return None if row is None else _row(row)
