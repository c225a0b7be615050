"""Kafka wiring: the producer and consumer every service uses, and topic provisioning.

The producer is idempotent with acks=all, so a retried send never duplicates a record in
the log. Consumers never auto-commit: the stage loop commits only what it has finished.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from gateway_runtime.errors import DependencyUnavailable
from schemas.codec import EncodedEvent
from schemas.topics import Topic

log = logging.getLogger(__name__)


def make_producer(bootstrap_servers: str, *, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,  # send at once: under load, batches form while a request is in flight
        request_timeout_ms=15000,
    )


def make_consumer(bootstrap_servers: str, *, group_id: str, client_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=500,
        fetch_max_wait_ms=50,
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=300000,
    )


async def publish(producer: AIOKafkaProducer, topic: str, record: EncodedEvent) -> None:
    """Send one record and wait for the broker's acknowledgement."""
    try:
        await producer.send_and_wait(
            topic, value=record.value, key=record.key, headers=record.headers
        )
    except KafkaError as exc:
        raise DependencyUnavailable(f"kafka publish to {topic} failed: {exc!r}") from exc


async def ensure_topics(bootstrap_servers: str, topics: Iterable[Topic]) -> list[str]:
    """Create the mesh's topics with their partition counts; existing ones are kept."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="soma-provision")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(t.name, num_partitions=t.partitions, replication_factor=1)
                        for t in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass  # another process provisioned concurrently
        for topic in missing:
            log.info("created topic", extra={"fields": {"topic": topic.name}})
        return [t.name for t in missing]
    finally:
        await admin.close()
