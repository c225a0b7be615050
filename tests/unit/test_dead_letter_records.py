"""What the dead-letter index keeps of a record: the stage loop's provenance, or what it
can make of a foreign record, without a value Postgres would refuse."""

from __future__ import annotations

from dataclasses import dataclass

from deadletter_index.records import dead_letter_of


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int = 1_796_000_000_000


def test_the_provenance_headers_are_read_and_dropped_from_the_replayed_headers() -> None:
    headers = [
        ("event-id", b"e1"),
        ("tenant", b"acme"),
        ("dlq-source-topic", b"soma.turn.authorized"),
        ("dlq-source-partition", b"3"),
        ("dlq-source-offset", b"42"),
        ("dlq-stage", b"context"),
        ("dlq-error-type", b"DependencyUnavailable"),
        ("dlq-attempts", b"3"),
        ("dlq-first-failure-at", b"2026-11-30T06:00:00.000Z"),
        ("dlq-last-failure-at", b"2026-11-30T06:00:01.500Z"),
        ("replay-of", b"7"),
    ]
    letter = dead_letter_of(Record("soma.deadletter", 0, 9, b"s1", b"v", headers))
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "soma.turn.authorized",
        3,
        42,
    )
    assert (letter.stage, letter.attempts, letter.tenant, letter.event_id) == (
        "context",
        3,
        "acme",
        "e1",
    )
    assert (letter.last_failed_at - letter.first_failed_at).total_seconds() == 1.5
    assert letter.replay_of == 7 and letter.session_id == "s1"
    assert [k for k, _ in letter.headers] == ["event-id", "tenant", "replay-of"]


def test_a_foreign_record_is_kept_under_its_own_coordinates_and_made_storable() -> None:
    headers = [
        ("dlq-source-partition", b"99999999999"),  # no int4
        ("dlq-error-message", b"bad\x00byte"),  # no NUL in Postgres text
        ("replay-of", b"123456789012345678901234"),  # no bigint
    ]
    letter = dead_letter_of(Record("soma.deadletter", 1, 5, b"k\x00", None, headers))
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "soma.deadletter",
        1,
        5,
    )
    assert letter.stage == "unknown" and letter.error_type == "unknown"
    assert "\x00" not in letter.error_message and "\x00" not in (letter.session_id or "")
    assert letter.replay_of is None and letter.value == b""
