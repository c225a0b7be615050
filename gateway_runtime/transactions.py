"""The stage loop's transactional port: outputs and consumed offsets, all or nothing.

`Transactions.commit` sends records and the consumer group's next offsets (with the
metadata gateway_runtime/offsets.py writes) in one Kafka transaction: a read_committed
consumer downstream sees the records exactly when the stage's position moves past the
records that made them, never one without the other.

`KafkaTransactions` is the adapter over aiokafka's transactional producer. aiokafka allows
one transaction at a time per producer; the stage loop calls `commit` from one place at a
time. Its errors, in the mesh's terms:
- `RecordRefused(index)`: the broker will never take that record (too large, not
  authorized); the transaction is aborted, the caller replaces the record and tries again;
- `TransactionFenced`: another process started with the same transactional.id (this one
  is the zombie of a restarted instance) or the id is not ours: stop, produce nothing more;
- `DependencyUnavailable`: aborted (nothing of it is visible); try again later. When the
  producer cannot even abort (the commit timed out: its outcome is unknown, or the broker
  bumped its epoch after a timeout), it is started anew under the same id: the broker
  first completes or aborts whatever the old producer left, so the group's committed
  offsets then tell whether the transaction landed (they are exactly what it sent: it
  did, and `commit` returns) or not (`DependencyUnavailable`, tried again). While the
  broker is away (a restart takes tens of seconds) that is asked again, with backoff, for
  up to `outcome_wait_s`; if it still cannot be read, `TransactionOutcomeUnknown`: the
  process must stop (its successor reads the truth when it is assigned the partitions),
  since trying again could write twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from gateway_runtime.errors import DependencyUnavailable, PublishRefused
from gateway_runtime.kafka import REFUSED_FOR_GOOD
from schemas.codec import EncodedEvent

log = logging.getLogger(__name__)
# Another producer holds the id, or it is not ours. (InvalidProducerEpoch, the broker's
# abort of a transaction that outlived its timeout, is not: the producer is renewed.)
_FENCED = (ProducerFenced, TransactionalIdAuthorizationFailed)
Send = tuple[str, EncodedEvent]  # a record for a topic
# How long a transaction of unknown outcome waits for the broker to tell it: longer than
# a broker restart (the chaos suite's took 17 s), so a restart does not stop the stage.
OUTCOME_WAIT_S = 120.0


class RecordRefused(PublishRefused):
    """The broker will never take the `index`-th record of the transaction."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class TransactionFenced(Exception):
    """This producer's transactional.id belongs to another process now (or was never
    granted): nothing this process would still produce may count."""


class TransactionOutcomeUnknown(TransactionFenced):
    """A commit whose outcome could not be learned: going on could write twice."""


Committed = Callable[[Iterable[Any]], Awaitable[Mapping[Any, tuple[int, str]]]]


class Transactions(Protocol):
    async def commit(self, records: Sequence[Send], offsets: Mapping[Any, tuple[int, str]]) -> None:
        """`records` and the group's `offsets` (partition → next offset, metadata) in one
        transaction; raises RecordRefused, TransactionFenced or RetryableError."""
        ...


class KafkaTransactions:
    """The `Transactions` port over one transactional aiokafka producer."""

    def __init__(
        self,
        make: Callable[[], AIOKafkaProducer],
        group_id: str,
        committed: Committed,
        *,
        timeout_s: float,
        outcome_wait_s: float = OUTCOME_WAIT_S,
    ) -> None:
        self._make = make
        self._group_id = group_id
        self._committed = committed  # the group's committed offsets and metadata
        self._timeout_s = timeout_s
        self._outcome_wait_s = outcome_wait_s
        self.producer = make()
        self._started = False

    async def start(self) -> None:
        """Registers the transactional.id: a previous producer with it is fenced and what
        it left open is aborted, so the partitions it wrote do not stay blocked."""
        try:
            await self.producer.start()
        except TransactionalIdAuthorizationFailed as exc:
            raise TransactionFenced(f"transactional.id not granted: {exc!r}") from exc
        self._started = True

    async def stop(self) -> None:
        await self.producer.stop()

    async def commit(self, records: Sequence[Send], offsets: Mapping[Any, tuple[int, str]]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                if not self._started:
                    await self.start()
                await self.producer.begin_transaction()  # waits for the producer id
        except (KafkaError, TimeoutError) as exc:
            raise DependencyUnavailable(f"kafka: cannot begin a transaction: {exc!r}") from exc
        except Exception as exc:  # a producer in a state it cannot leave (aiokafka: FATAL)
            await self._renew()
            raise DependencyUnavailable(f"kafka: producer renewed: {exc!r}") from exc
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._send(records, offsets)
                await self.producer.commit_transaction()
        except _FENCED as exc:
            raise TransactionFenced(f"transaction fenced: {exc!r}") from exc
        except BaseException as exc:
            if not await self._abort(exc) and await self._landed(offsets):
                return  # the commit went through after all
            if isinstance(exc, RecordRefused | asyncio.CancelledError):
                raise
            raise DependencyUnavailable(f"kafka transaction failed: {exc!r}") from exc

    async def _send(self, records: Sequence[Send], offsets: Mapping[Any, tuple[int, str]]) -> None:
        """The records, then (once every one is acknowledged) the offsets. Every record
        must be acknowledged before the commit: aiokafka would commit a transaction one of
        whose records failed (a failed produce does not fail it). The offsets wait for the
        acknowledgements too: sent alongside, their AddOffsetsToTxn changes the
        transaction's state while the records are verified by the broker (KIP-890), which
        answers NOT_ENOUGH_REPLICAS to aiokafka's produce version, and the retries stalled
        a replica's transactions in tests/e2e/test_exactly_once.py."""
        futures: list[asyncio.Future[Any]] = []
        for index, (topic, record) in enumerate(records):
            try:
                futures.append(
                    await self.producer.send(
                        topic, value=record.value, key=record.key, headers=record.headers
                    )
                )
            except REFUSED_FOR_GOOD as exc:
                await asyncio.gather(*futures, return_exceptions=True)
                raise RecordRefused(index, f"kafka refused a record for {topic}: {exc!r}") from exc
        results = await asyncio.gather(*futures, return_exceptions=True)
        for index, result in enumerate(results):
            if isinstance(result, REFUSED_FOR_GOOD):
                topic = records[index][0]
                raise RecordRefused(index, f"kafka refused a record for {topic}: {result!r}")
            if isinstance(result, BaseException):
                raise result
        await self._send_offsets(offsets)

    async def _send_offsets(self, offsets: Mapping[Any, tuple[int, str]]) -> None:
        if offsets:
            await self.producer.send_offsets_to_transaction(
                {
                    TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, metadata)
                    for tp, (offset, metadata) in offsets.items()
                },
                self._group_id,
            )

    async def _abort(self, cause: BaseException) -> bool:
        """True if aborted; False if the producer was started anew instead."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await asyncio.shield(self.producer.abort_transaction())
            return True
        except _FENCED as exc:
            raise TransactionFenced(f"transaction fenced: {exc!r}") from exc
        except BaseException as exc:  # stuck mid-commit, or a state it cannot abort from
            log.warning(
                "transaction not aborted (%r after %r): starting the producer anew", exc, cause
            )
            await self._renew()
            return False

    async def _landed(self, offsets: Mapping[Any, tuple[int, str]]) -> bool:
        """Whether a transaction of unknown outcome committed: once the new producer is
        registered the old one's transaction is settled, and the group's offsets are
        then exactly what it sent, or not. Asked again while the broker is away."""
        deadline = time.monotonic() + self._outcome_wait_s
        delay = 0.2
        while True:
            try:
                async with asyncio.timeout(self._timeout_s):
                    if not self._started:
                        await self.start()
                    await self.producer.begin_transaction()  # waits until it is registered
                    await self.producer.abort_transaction()  # nothing in it
                    found = await self._committed(list(offsets))
                break
            except (TransactionFenced, *_FENCED) as exc:
                raise TransactionFenced(f"transaction fenced: {exc!r}") from exc
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise TransactionOutcomeUnknown(
                        f"a transaction's outcome is unknown and cannot be learned: {exc!r}"
                    ) from exc
                log.warning("a transaction's outcome cannot be learned yet: %r", exc)
                await self._renew()  # a producer that failed to start is not started again
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        landed = all(found.get(tp) == sent for tp, sent in offsets.items())
        log.warning("transaction of unknown outcome: %s", "committed" if landed else "aborted")
        return landed

    async def _renew(self) -> None:
        """A new producer under the same id: its registration bumps the epoch, so the
        broker aborts the old one's open transaction (or completes one already being
        committed) and fences it."""
        old, self.producer, self._started = self.producer, self._make(), False
        try:
            await asyncio.wait_for(old.stop(), self._timeout_s)
        except Exception as exc:
            log.warning("old transactional producer did not stop cleanly: %r", exc)
        # started by the next commit (the broker may be away right now)
