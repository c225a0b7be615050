"""What the back end holds after a chaos run: stored turns, logged answers, topic records.

- Postgres: the turns and messages stored per session (each chaos session has one turn
  of the client's, so a second turn row in a session is a turn run twice under another
  id), the dead letters, and the fallback event log's turn-ending events.
- Redis: the turn-ending events (`assistant.final`, `error`) in each session's stream (the
  log SSE replays). A Redis restart empties it, so the runner counts them just before.
- Kafka: every topic of the sandbox's namespace (schemas/topics.py) read from the start
  with read_committed, counting the records per `event-id` header: an id with more than
  one record in a topic is a duplicate (a stage's output produced twice, a turn relayed
  twice). The load has no tool rounds, so each topic holds one record of a turn.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from gateway_runtime.kafka import KafkaConnection
from gateway_runtime.redis_keys import RedisKeys
from schemas.topics import Topics


@dataclass
class Stored:
    """Per session: (turn_id, status, error_code, messages) of every stored turn."""

    turns: dict[str, list[tuple[str, str, str | None, int]]] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)  # event_id -> dead letters

    def turn_ids(self) -> set[str]:
        return {t[0] for rows in self.turns.values() for t in rows}


async def stored(dsn: str, sessions: list[str]) -> Stored:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT t.session_id, t.turn_id, t.status, t.error_code,"
            " (SELECT count(*) FROM messages m WHERE m.turn_id = t.turn_id) AS messages"
            " FROM turns t WHERE t.session_id = any($1::text[])",
            sessions,
        )
        dead = await conn.fetch(
            "SELECT event_id, count(*) AS n FROM dead_letters"
            " WHERE session_id = any($1::text[]) GROUP BY event_id",
            sessions,
        )
    finally:
        await conn.close()
    found = Stored()
    for r in rows:
        found.turns.setdefault(r["session_id"], []).append(
            (r["turn_id"], r["status"], r["error_code"], int(r["messages"]))
        )
    found.dead_lettered = {r["event_id"]: int(r["n"]) for r in dead if r["event_id"]}
    return found


async def settled(dsn: str, sessions: list[str], expected: set[str], timeout_s: float) -> Stored:
    """The store once every `expected` turn is in it, nothing changed for 15 s, or
    `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while True:
        found = await stored(dsn, sessions)
        count = len(found.turn_ids()) + sum(found.dead_lettered.values())
        if count != last:
            last, since = count, time.monotonic()
        now = time.monotonic()
        if expected <= found.turn_ids() or now > deadline or now - since > 15:
            return found
        await asyncio.sleep(1)


ENDS = ("assistant.final", "error")  # the event types that end a turn for its client


async def redis_outcomes(
    redis_url: str, keys: RedisKeys, sessions: list[str]
) -> Counter[tuple[str, str]]:
    """(event type, turn id) -> how many of the turn-ending events the sessions' Redis
    streams hold."""
    found: Counter[tuple[str, str]] = Counter()
    redis = Redis.from_url(redis_url, socket_timeout=10)
    try:
        for i in range(0, len(sessions), 200):
            pipe = redis.pipeline(transaction=False)
            for session in sessions[i : i + 200]:
                pipe.xrange(keys.stream(session))
            for entries in await pipe.execute():
                for _, fields in entries:
                    raw = fields.get(b"e", b"")
                    if b"assistant.final" in raw or b'"error"' in raw:
                        event = json.loads(raw)
                        if event.get("type") in ENDS:
                            found[(event["type"], str(event.get("turn_id")))] += 1
    finally:
        await redis.aclose()
    return found


async def postgres_outcomes(dsn: str, sessions: list[str]) -> Counter[tuple[str, str]]:
    """The same of the Postgres fallback event log."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT type, turn_id, count(*) AS n FROM session_events"
            " WHERE type = any($2::text[]) AND session_id = any($1::text[]) GROUP BY 1, 2",
            sessions,
            list(ENDS),
        )
    finally:
        await conn.close()
    return Counter({(r["type"], r["turn_id"]): int(r["n"]) for r in rows})


@dataclass
class TopicCount:
    records: int = 0
    event_ids: int = 0  # distinct
    duplicated_ids: int = 0  # ids with more than one record
    extra_records: int = 0  # records beyond the first of each id
    without_id: int = 0
    complete: bool = True  # read up to the end offsets within the time allowed


async def topic_duplicates(
    kafka: KafkaConnection, namespace: str, timeout_s: float = 120
) -> dict[str, TopicCount]:
    """Every topic of the namespace, read_committed from the start to its end offsets."""
    topics = {t.name: t.partitions for t in Topics.for_namespace(namespace).all()}
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        client_id="chaos-audit",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    counts: dict[str, Counter[str]] = {t: Counter() for t in topics}
    result = {t: TopicCount() for t in topics}
    try:
        partitions = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        open_parts = {tp for tp in partitions if end[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while open_parts and time.monotonic() < deadline:
            batches = await consumer.getmany(*open_parts, timeout_ms=1000, max_records=5000)
            for tp, records in batches.items():
                for record in records:
                    headers = dict(record.headers or ())
                    event_id = headers.get("event-id")
                    result[tp.topic].records += 1
                    if event_id is None:
                        result[tp.topic].without_id += 1
                    else:
                        counts[tp.topic][event_id.decode()] += 1
            for tp in list(open_parts):
                if await consumer.position(tp) >= end[tp]:
                    open_parts.discard(tp)
        for tp in open_parts:
            result[tp.topic].complete = False
    finally:
        await consumer.stop()
    for topic, ids in counts.items():
        c = result[topic]
        c.event_ids = len(ids)
        c.duplicated_ids = sum(1 for n in ids.values() if n > 1)
        c.extra_records = sum(n - 1 for n in ids.values() if n > 1)
    return result
