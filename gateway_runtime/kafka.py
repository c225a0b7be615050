"""Kafka wiring: the producer and consumer every service uses, and topic provisioning.

The producer is idempotent with acks=all, so a retried send never duplicates a record in
the log. Consumers never auto-commit: the stage loop commits only what it has finished.
`KafkaPublisher` and `GroupConsumer` are the stage loop's ports over aiokafka; they turn
aiokafka's errors into the mesh's: a record the broker can never take (too large, not
authorized) is `PublishRefused`, anything else `DependencyUnavailable` (retry later).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from gateway_runtime.errors import DependencyUnavailable, PublishRefused
from gateway_runtime.ports import ConsumedRecord
from schemas.codec import EncodedEvent
from schemas.topics import Topic

log = logging.getLogger(__name__)
_REFUSED_FOR_GOOD = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)


def make_producer(bootstrap_servers: str, *, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,  # send at once: under load, batches form while a request is in flight
        request_timeout_ms=15000,
    )


def make_consumer(
    bootstrap_servers: str, *, group_id: str, client_id: str, fetch_max_wait_ms: int = 50
) -> AIOKafkaConsumer:
    """A group member; `fetch_max_wait_ms` is how long an empty fetch waits at the broker
    (short on the turn's path, longer where latency does not matter)."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=500,
        fetch_max_wait_ms=fetch_max_wait_ms,
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=300000,
    )


class KafkaPublisher:
    """The `Publisher` port: one record, acknowledged by the broker when this returns."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def publish(self, topic: str, record: EncodedEvent) -> None:
        try:
            await self.producer.send_and_wait(
                topic, value=record.value, key=record.key, headers=record.headers
            )
        except _REFUSED_FOR_GOOD as exc:
            raise PublishRefused(f"kafka refused a record for {topic}: {exc!r}") from exc
        except KafkaError as exc:
            raise DependencyUnavailable(f"kafka publish to {topic} failed: {exc!r}") from exc

    async def start_send(self, topic: str, record: EncodedEvent) -> asyncio.Future[Any]:
        """Hand the record to the producer; the future resolves when the broker has it.

        For a caller that must not wait for the broker (the ingress's outbox): the send
        goes on after the caller stops waiting, and the future says how it ended.
        """
        try:
            future: asyncio.Future[Any] = await self.producer.send(
                topic, value=record.value, key=record.key, headers=record.headers
            )
        except _REFUSED_FOR_GOOD as exc:
            raise PublishRefused(f"kafka refused a record for {topic}: {exc!r}") from exc
        except KafkaError as exc:
            raise DependencyUnavailable(f"kafka publish to {topic} failed: {exc!r}") from exc
        return future


class GroupConsumer:
    """The `RecordConsumer` port: a member of a stage's consumer group."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer

    async def getmany(self, *, timeout_ms: int) -> Mapping[Any, Sequence[ConsumedRecord]]:
        batches: Mapping[Any, Sequence[ConsumedRecord]] = await self.consumer.getmany(
            timeout_ms=timeout_ms
        )
        return batches

    async def commit(self, offsets: Mapping[Any, int]) -> None:
        try:
            await self.consumer.commit(dict(offsets))
        except KafkaError as exc:  # CommitFailedError (a rebalance) among them
            raise DependencyUnavailable(f"offset commit failed: {exc!r}") from exc


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
