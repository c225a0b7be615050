"""How every stage worker starts: settings → clients → the stage loop, until a signal.

A worker's `__main__` builds its handler's adapters and calls `run_worker`; everything
else (logging, metrics, signals, Kafka clients, graceful shutdown) lives here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from aiokafka import ConsumerRebalanceListener
from redis.asyncio import Redis

from gateway_runtime import tracing
from gateway_runtime.event_log import PostgresEventLog
from gateway_runtime.fanout import FanoutPublisher
from gateway_runtime.kafka import GroupConsumer, make_consumer, make_transactional_producer
from gateway_runtime.logs import configure_logging
from gateway_runtime.metrics import serve_metrics
from gateway_runtime.ports import Fanout, StageHandler
from gateway_runtime.redis_pool import open_redis
from gateway_runtime.settings import CommonSettings, StageSettings
from gateway_runtime.stage import StageLoop
from gateway_runtime.transactions import KafkaTransactions
from schemas.codec import Codec
from schemas.topics import Topics

log = logging.getLogger(__name__)
# How long newly assigned partitions wait for their committed positions before the stage
# gives up (and its process stops, to be started again).
ASSIGNMENT_WAIT_S = 60.0


class StageRebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Before partitions move to another member, finish and commit their work; when they
    arrive, learn which records the previous owner committed beyond its position, and
    only then let the consumer hand out their records (GroupConsumer's `ready`)."""

    def __init__(self, loop: StageLoop, consumer: GroupConsumer) -> None:
        self._loop = loop
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._consumer.unready(revoked)
        await self._loop.drain_and_commit(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        try:
            committed = await self._committed(assigned)
        except Exception as exc:  # aiokafka would only log it: make the loop stop instead
            self._consumer.fail(exc)
            raise
        await self._loop.assigned(committed)
        self._consumer.ready(assigned)

    async def _committed(self, assigned: Any) -> dict[Any, tuple[int, str]]:
        """The group's committed positions, asked again (the coordinator may be moving)
        for up to ASSIGNMENT_WAIT_S: the partitions are held until then."""
        deadline, delay = time.monotonic() + ASSIGNMENT_WAIT_S, 0.1
        while True:
            try:
                return await self._consumer.committed(assigned)
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("committed offsets not read yet: %r", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def transactional_id(settings: StageSettings, stage: str) -> str:
    """`<namespace>.<stage>.<instance>`: the stage's group name, then this process's
    STAGE_INSTANCE (the host name by default), stable across its restarts."""
    instance = settings.stage_instance or socket.gethostname()
    return f"{settings.kafka_namespace}.{stage}.{instance}"


@contextlib.asynccontextmanager
async def redis_client(settings: CommonSettings) -> AsyncIterator[Redis]:
    client = open_redis(settings)
    try:
        yield client
    finally:
        await client.aclose()


def fanout_publisher(redis: Redis, settings: CommonSettings, pool: asyncpg.Pool) -> FanoutPublisher:
    """A stage's fan-out publisher: while Redis is down, events go to the Postgres log, so
    a client still learns of its turn (accepted, denied, answered, failed)."""
    return FanoutPublisher.from_settings(redis, settings, PostgresEventLog(pool))


async def serve_stage(
    handler: StageHandler,
    settings: StageSettings,
    stop: asyncio.Event,
    *,
    fanout: Fanout | None = None,
    pattern: str | None = None,
) -> None:
    """Run `handler` as a member of the consumer group `<namespace>.<stage>` until `stop`;
    with `fanout`, the client of a dead-lettered turn is told; with `pattern`, it consumes
    every topic the regex matches instead of its input topic alone."""
    client_id = f"{settings.service_name}-{os.getpid()}"
    group_id = f"{settings.kafka_namespace}.{handler.stage}"
    transactions = KafkaTransactions(
        lambda: make_transactional_producer(
            settings,
            client_id=client_id,
            transactional_id=transactional_id(settings, handler.stage),
            transaction_timeout_s=settings.transaction_timeout_s,
        ),
        group_id,
        lambda partitions: group.committed(partitions),
        # Each step gives up well before the broker would abort the transaction itself
        # (which aiokafka reports as ProducerFenced, indistinguishable from a real fence).
        timeout_s=settings.transaction_timeout_s / 2,
    )
    consumer = make_consumer(
        settings,
        group_id=group_id,
        client_id=client_id,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        # a pattern's new topics are seen on a metadata refresh: soon, not in 5 minutes
        metadata_max_age_ms=5000 if pattern else 300000,
    )
    group = GroupConsumer(consumer)
    loop = StageLoop(
        handler=handler,
        consumer=group,
        transactions=transactions,
        codec=Codec(),
        settings=settings,
        dead_letter_topic=Topics.for_namespace(settings.kafka_namespace).dead_letter.name,
        notify_failure=fanout.publish_error if fanout else None,
    )
    if pattern:
        consumer.subscribe(pattern=pattern, listener=StageRebalance(loop, group))
    else:
        consumer.subscribe([handler.input_topic], listener=StageRebalance(loop, group))
    await transactions.start()  # fences a previous process with this id
    try:
        await consumer.start()
        try:
            source = pattern or handler.input_topic
            log.info("stage started", extra={"fields": {"input": source}})
            await loop.run(stop)
        finally:
            await consumer.stop()
    finally:
        await transactions.stop()
    log.info("stage stopped")


def run_worker(settings: StageSettings, main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Configure the process, then run `main(stop)` with SIGTERM/SIGINT setting `stop`."""
    configure_logging(settings.service_name, settings.log_level)
    serve_metrics(settings.metrics_port, settings.metrics_host)
    tracing.configure(settings)  # off unless the OTEL_* settings turn it on

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        try:
            import uvloop

            uvloop.run(_main())
        except ImportError:
            asyncio.run(_main())
    finally:
        tracing.shutdown()  # the last spans are exported before the process ends
