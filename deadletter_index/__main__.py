"""`python -m deadletter_index`: the dead-letter topic -> the `dead_letters` table.

A plain consume loop (aiokafka's own example shape): take a batch, index every record,
then commit. A record is indexed before its offset is committed, and indexing is
idempotent, so a crash anywhere only indexes some records again. While Postgres is down
the loop retries the same record with backoff: nothing is skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re

from aiokafka.errors import KafkaError

from adapters.automations import AutomationRegistry
from adapters.dead_letters import DeadLetterStore, NewDeadLetter
from deadletter_index.records import dead_letter_of
from gateway_runtime.errors import TRANSIENT, InvalidEvent
from gateway_runtime.kafka import make_consumer
from gateway_runtime.ports import ConsumedRecord
from gateway_runtime.postgres import create_pool
from gateway_runtime.settings import DeadLetterIndexSettings
from gateway_runtime.worker import run_worker
from schemas.topics import Topics

log = logging.getLogger(__name__)
STAGE = "deadletter_index"  # also its consumer group's suffix


@dataclasses.dataclass(frozen=True)
class Owners:
    """Whose dead letter it is. A record of an automation's inbound topic belongs to the
    automation's tenant (none if no automation owns the topic: operators only), whatever
    its `tenant` header says; the other topics only the mesh may write."""

    registry: AutomationRegistry
    turn_sources: re.Pattern[str]

    async def of(self, letter: NewDeadLetter) -> NewDeadLetter:
        source = letter.source_topic
        if not self.turn_sources.match(source) or source.endswith(".turn.requested"):
            return letter
        automation = await self.registry.by_topic(source)
        return dataclasses.replace(letter, tenant=automation.tenant if automation else None)


async def _index(
    store: DeadLetterStore,
    owners: Owners,
    record: ConsumedRecord,
    settings: DeadLetterIndexSettings,
    stop: asyncio.Event,
) -> bool:
    """Index one record, retrying while Postgres fails; False if stopped before it landed."""
    letter = dead_letter_of(record)
    delay = settings.retry_backoff_s
    while not stop.is_set():
        try:
            if await store.index(await owners.of(letter)):
                log.info(
                    "indexed a dead letter",
                    extra={"fields": {"stage": letter.stage, "event_id": letter.event_id}},
                )
            return True
        except InvalidEvent as exc:  # still readable in the topic; the partition goes on
            log.error("dead letter skipped: %s", exc, extra={"fields": {"offset": record.offset}})
            return True
        except TRANSIENT as exc:
            log.warning("indexing failed (%r); retrying in %.1fs", exc, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, settings.retry_backoff_max_s)
    return False


async def main(settings: DeadLetterIndexSettings, stop: asyncio.Event) -> None:
    pool = await create_pool(settings, max_size=2)
    store = DeadLetterStore(pool)
    topics = Topics.for_namespace(settings.kafka_namespace)
    owners = Owners(AutomationRegistry(pool), re.compile(topics.turn_sources()))
    consumer = make_consumer(
        settings,
        group_id=f"{settings.kafka_namespace}.{STAGE}",
        client_id=f"{STAGE}-{os.getpid()}",
        fetch_max_wait_ms=500,  # dead letters are rare and need no millisecond latency
    )
    consumer.subscribe([topics.dead_letter.name])
    await consumer.start()
    try:
        log.info("dead-letter index started")
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if not await _index(store, owners, record, settings, stop):
                        return  # stopping: the rest is redelivered to the next member
                try:
                    await consumer.commit({tp: records[-1].offset + 1})
                except KafkaError as exc:  # a rebalance: indexed again by the next owner
                    log.warning("offset commit failed: %r", exc)
    finally:
        await consumer.stop()
        await pool.close()


if __name__ == "__main__":
    settings = DeadLetterIndexSettings()
    run_worker(settings, lambda stop: main(settings, stop))
