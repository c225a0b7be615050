"""A record of the dead-letter topic, read as the index keeps it.

The stage loop (gateway_runtime/stage.py) writes the failed record's key, value and
headers plus `dlq-*` provenance headers. A record someone else put there without them
is still indexed, under its own coordinates and stage `unknown`, so nothing in the
topic goes unseen.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from adapters.dead_letters import NewDeadLetter
from gateway_runtime.delivery import REPLAY_OF
from gateway_runtime.ports import ConsumedRecord
from schemas.codec import header

PROVENANCE = "dlq-"


def _time(value: str | None, default: datetime) -> datetime:
    try:
        return datetime.fromisoformat(value) if value else default
    except ValueError:
        return default


def _int(value: str | None, default: int, bits: int = 63) -> int:
    """A header's number, if it is one that fits the column (int or bigint)."""
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return number if 0 <= number < 2**bits else default


def _text(value: str | None) -> str | None:
    """Postgres text holds no NUL character; a foreign record's header may."""
    return value.replace("\x00", "\ufffd") if value is not None else None


def dead_letter_of(record: ConsumedRecord) -> NewDeadLetter:
    headers = list(record.headers or ())
    h = {k: _text(v) for k, v in ((k, header(headers, k)) for k, _ in headers)}
    ts = getattr(record, "timestamp", None)
    written = datetime.fromtimestamp((ts / 1000) if ts else time.time(), UTC)
    failed_last = _time(h.get("dlq-last-failure-at"), written)
    key = record.key or b""
    return NewDeadLetter(
        source_topic=h.get("dlq-source-topic") or record.topic,
        source_partition=_int(h.get("dlq-source-partition"), record.partition, bits=31),
        source_offset=_int(h.get("dlq-source-offset"), record.offset),
        stage=h.get("dlq-stage") or "unknown",
        error_type=h.get("dlq-error-type") or "unknown",
        error_message=h.get("dlq-error-message") or "",
        attempts=_int(h.get("dlq-attempts"), 0, bits=31),
        first_failed_at=_time(h.get("dlq-first-failure-at"), failed_last),
        last_failed_at=failed_last,
        session_id=_text(key.decode("utf-8", "replace")) or None,
        event_id=h.get("event-id"),
        tenant=h.get("tenant"),
        replay_of=_int(h.get(REPLAY_OF), 0) or None,
        key=key,
        value=record.value or b"",
        headers=[(k, v or b"") for k, v in headers if not k.startswith(PROVENANCE)],
        value_omitted=h.get("dlq-value-omitted"),
    )
