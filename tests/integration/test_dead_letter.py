"""A poison event lands in the dead-letter topic with provenance; the partition moves on."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.codec import Codec, header
from schemas.events import TurnRequested
from schemas.topics import Topics
from testbed.mesh import Mesh
from tests.sse import read_events
from tests.turns import ends_turn


async def test_malformed_event_is_dead_lettered_and_the_next_one_is_processed(
    mesh: Mesh, client: httpx.AsyncClient
) -> None:
    topics = Topics.for_namespace(mesh.env["KAFKA_NAMESPACE"])
    kafka = mesh.kafka.client_kwargs()
    session_id = f"s-{uuid.uuid4().hex}"
    key = session_id.encode()  # same key, so the same partition, right behind the poison
    good = TurnRequested(
        event_id=uuid.uuid4().hex,
        session_id=session_id,
        message="after the poison",
        created_at_ms=int(time.time() * 1000),
    )
    encoded = Codec().encode(good)
    poison_headers = [
        ("schema", b"soma.events.TurnRequested"),
        ("schema-version", b"2"),
        ("event-id", b"poison-1"),
    ]

    dlq = AIOKafkaConsumer(
        topics.dead_letter.name,
        **kafka,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
    )
    await dlq.start()
    producer = AIOKafkaProducer(**kafka)
    await producer.start()
    try:
        sent = await producer.send_and_wait(
            topics.requested.name, b"\x00\xffnot avro", key=key, headers=poison_headers
        )
        good_sent = await producer.send_and_wait(
            topics.requested.name, encoded.value, key=key, headers=encoded.headers
        )
        assert sent.partition == good_sent.partition

        async with asyncio.timeout(30):
            events = await read_events(
                client, f"/v1/session/{session_id}/events", ends_turn(good.event_id)
            )
        assert [e.type for e in events][-1] == "assistant.final"
        assert any(e.type == "error" and e.turn_id == "poison-1" for e in events)

        async with asyncio.timeout(30):
            while True:
                record = await dlq.getone()
                if record.key == key:
                    break
    finally:
        await producer.stop()
        await dlq.stop()
    h = record.headers
    assert record.value == b"\x00\xffnot avro"
    assert header(h, "dlq-source-topic") == topics.requested.name
    assert header(h, "dlq-source-partition") == str(sent.partition)
    assert header(h, "dlq-source-offset") == str(sent.offset)
    assert header(h, "dlq-stage") == "policy"
    assert header(h, "dlq-error-type") == "DecodeError"
    assert "cannot read" in (header(h, "dlq-error-message") or "")
    assert header(h, "dlq-attempts") == "1"
    assert (header(h, "dlq-first-failure-at") or "").endswith("Z")
    assert (header(h, "dlq-last-failure-at") or "").endswith("Z")
    assert header(h, "event-id") == "poison-1"
