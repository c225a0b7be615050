"""The stage loop every worker runs: consume → decode → handle → produce + commit, the
last two in one Kafka transaction (exactly-once stage transitions).

Guarantees, in order of importance:
- a record's outputs (or its dead letter) and the group offset past it commit in one
  transaction: a read_committed consumer downstream sees them exactly when this stage's
  position moves past the record, so a crash anywhere (kill -9 between consume and
  produce, mid-transaction, after the commit) never makes an output record twice nor
  loses one; side effects outside Kafka (the fan-out, the database) stay keyed by
  event_id, since a record whose transaction did not commit is handled again;
- records of one key (session_id) are handled one after another, in offset order;
  different keys run concurrently, up to `max_in_flight`;
- a poison record never stops its partition: it is dead-lettered with provenance
  headers and the partition moves on;
- `RetryableError`, and a dependency's timeout or dropped connection (`TRANSIENT`), is
  retried with exponential backoff, `attempts` times in all, then dead-lettered; any
  other exception is dead-lettered at once; an output the broker refuses for good (too
  large, not authorized) dead-letters its record;
- a dead letter the broker will not take is sent as its provenance headers without the
  value (which stays readable at its source offset); while transactions fail, nothing
  commits and every failed try is logged and counted (`soma_dead_letter_failures_total`
  when a dead letter is among them);
- telling the client that its turn was dead-lettered is best effort, after the dead
  letter is committed: its failure never holds a record back;
- on a revoke or a stop, in-flight records get `shutdown_grace_s` to finish; what
  finished is committed and the rest is redelivered to whoever owns the partition next.

How records become transactions. aiokafka runs one transaction at a time per producer,
and the loop runs up to `max_in_flight` records at once, so records do not open
transactions: a record's task handles it and leaves its encoded outputs on its offset
entry (gateway_runtime/offsets.py), and one committer task turns whatever has finished
into the next transaction: every finished record's outputs, then the offsets (the
partition's contiguous finished prefix) via send_offsets_to_transaction, then commit.
The committer starts a transaction as soon as a record finishes and none is running, so
at low load a record's outputs leave one transaction after it finishes (the cost per hop:
docs/benchmarks.md), and under load everything that finished during one commit rides the
next: transactions batch themselves, no timer in the way.

A slow record must not hold back the records behind it in its partition (a model call of
seconds would delay every other session there). A transaction therefore also carries
records finished beyond the prefix: the position stays at the first unfinished record
and the commit's metadata lists the finished offsets past it; the next owner of the
partition reads that list when it is assigned (`assigned`) and skips those records.

Fencing: each worker process has its own transactional.id, `<group>.<instance>`
(STAGE_INSTANCE, by default the host name; replicas on one host need their own), stable
across restarts: a restarted instance fences its zombie and aborts what it left open.
A fenced producer (`TransactionFenced`) ends the loop: this process must produce no more.
Not covered: aiokafka's TxnOffsetCommit carries no group generation (KIP-447), so a member
frozen past its session timeout that wakes and commits before it learns its partitions
moved is not refused by the broker (a restart or a rebalance is covered).

While transactions fail (the broker is away), finished records keep their outputs in
memory and are all tried again; past 4 x `max_in_flight` of them the loop stops polling.
Every record is acknowledged before the offsets are added and the transaction committed
(aiokafka would commit a transaction one of whose records failed; transactions.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from gateway_runtime.delivery import Delivery, set_delivery
from gateway_runtime.errors import TRANSIENT, PublishRefused
from gateway_runtime.logs import log_context
from gateway_runtime.metrics import (
    DEAD_LETTER_FAILURES,
    DEAD_LETTERS,
    STAGE_EVENTS,
    STAGE_RETRIES,
    STAGE_SECONDS,
)
from gateway_runtime.offsets import Batch, OffsetTracker, Pending
from gateway_runtime.ports import (
    ConsumedRecord,
    FailureNotifier,
    RecordConsumer,
    StageHandler,
)
from gateway_runtime.settings import StageSettings
from gateway_runtime.tracing import stage_span
from gateway_runtime.transactions import RecordRefused, Send, TransactionFenced, Transactions
from schemas.codec import Codec, EncodedEvent, header
from schemas.events import ErrorInfo

log = logging.getLogger(__name__)


class StageLoop:
    def __init__(
        self,
        *,
        handler: StageHandler,
        consumer: RecordConsumer,
        transactions: Transactions,
        codec: Codec,
        settings: StageSettings,
        dead_letter_topic: str,
        notify_failure: FailureNotifier | None = None,
    ) -> None:
        self._handler = handler
        self._consumer = consumer
        self._transactions = transactions
        self._codec = codec
        self._settings = settings
        self._dead_letter_topic = dead_letter_topic
        self._notify_failure = notify_failure
        self._stage = handler.stage
        self._offsets: OffsetTracker[Any] = OffsetTracker()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._key_tails: dict[bytes | None, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished_one = asyncio.Event()  # wakes the committer
        self._one_transaction = asyncio.Lock()  # aiokafka: one transaction at a time
        self._notices: set[asyncio.Task[None]] = set()
        # Bumped by every revoke: records polled before it are not this member's to handle
        # any more (the next owner reads them again from the committed position).
        self._generation = 0
        # Finished records waiting for a transaction: past this many (transactions keep
        # failing) the loop stops polling until they are committed.
        self._backlog = 4 * settings.max_in_flight

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and dispatch until `stop` is set, then finish or abandon in-flight work.

        Transactions are committed by a side task (the design above), so a commit round
        trip never delays the next poll. A fenced producer ends the loop with its error.
        """
        committer = asyncio.create_task(self._commit_continuously(stop))
        failed: Exception | None = None
        try:
            while not stop.is_set() and not committer.done():
                if self._offsets.unsent >= self._backlog:  # transactions failing: wait
                    await asyncio.wait([committer], timeout=0.05)
                    continue
                await self._dispatch_batch(await self._consumer.getmany(timeout_ms=100))
        finally:
            if stop.is_set():  # a transaction in flight ends first (never cut mid-commit)
                self._finished_one.set()
            else:
                committer.cancel()
            for result in await asyncio.gather(committer, return_exceptions=True):
                if isinstance(result, Exception):
                    failed = result  # fenced (or a bug): produce nothing more
            if failed is None:
                await self._drain(self._settings.shutdown_grace_s)
                await self._commit_once()
            else:
                await self._drain(0)
            if self._notices:
                await asyncio.wait(set(self._notices), timeout=self._settings.shutdown_grace_s)
        if failed is not None:
            raise failed

    async def _commit_continuously(self, stop: asyncio.Event) -> None:
        """A transaction as soon as something finished and none is running; after a failed
        one, the next try waits (exponential backoff)."""
        delay = self._settings.retry_backoff_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.commit_interval_s):
                    await self._finished_one.wait()
            if self._finished_one.is_set() and self._settings.commit_linger_s > 0:
                with contextlib.suppress(TimeoutError):  # others may finish meanwhile
                    async with asyncio.timeout(self._settings.commit_linger_s):
                        await stop.wait()
            self._finished_one.clear()
            committed = await self._commit_once()
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # cancelled while its commit landed
                raise asyncio.CancelledError
            if committed:
                delay = self._settings.retry_backoff_s
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.retry_backoff_max_s)

    async def drain_and_commit(self, revoked: Collection[Any]) -> None:
        """Partitions are being taken away: finish (or abandon) their work, commit it.
        Records polled before and not yet dispatched are dropped (the generation)."""
        self._generation += 1
        await self._drain(self._settings.shutdown_grace_s)
        async with self._one_transaction:
            await self._commit_locked()
            # Not committed now, not ever by this member: the next owner does the work.
            self._offsets.forget(set(revoked))

    async def assigned(self, committed: Mapping[Any, tuple[int, str | None]]) -> None:
        """Partitions were assigned at these committed positions and metadata: records the
        previous owner committed beyond its position are skipped (offsets.py)."""
        async with self._one_transaction:
            for tp, (position, metadata) in committed.items():
                self._offsets.skip(tp, position, metadata)

    async def _dispatch_batch(self, batches: Mapping[Any, Sequence[ConsumedRecord]]) -> None:
        """Each record as a slot frees up; what is left when a revoke comes is dropped."""
        generation = self._generation
        for tp, records in batches.items():
            for record in records:
                await self._slots.acquire()
                if generation != self._generation:
                    self._slots.release()
                    return
                self._dispatch(tp, record)

    def _dispatch(self, tp: Any, record: ConsumedRecord) -> None:
        entry = self._offsets.start(tp, record.offset)
        if entry.done:  # its outputs are committed already (a previous owner's)
            self._slots.release()
            self._finished_one.set()
            return
        entry.source = record
        previous = self._key_tails.get(record.key)
        task = asyncio.create_task(self._run_after(previous, record, entry))
        self._key_tails[record.key] = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, record.key))

    def _finished(self, key: bytes | None, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if self._key_tails.get(key) is task:
            del self._key_tails[key]

    async def _run_after(
        self, previous: asyncio.Task[None] | None, record: ConsumedRecord, entry: Pending
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # same key: keep offset order
        await self._process(record, entry)  # its outputs (or dead letter) are on `entry`
        self._offsets.finish(entry)
        self._finished_one.set()

    async def _process(self, record: ConsumedRecord, entry: Pending) -> None:
        started = time.perf_counter()
        headers = list(record.headers or ())
        set_delivery(Delivery(record.topic, record.partition, record.offset, headers))
        log_context.set(
            {
                "stage": self._stage,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "event_id": header(headers, "event-id"),
                "session_id": record.key.decode("utf-8", "replace") if record.key else None,
                "trace_id": header(headers, "trace-id"),
            }
        )
        first_failure: float | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                entry.outputs = await self._handle(record, headers)
                STAGE_EVENTS.labels(self._stage, "ok").inc()
                break
            except TRANSIENT as exc:
                first_failure = first_failure or time.time()
                if attempt >= self._settings.retry_attempts:
                    self._dead_letter(entry, exc, attempt, first_failure)
                    break
                STAGE_RETRIES.labels(self._stage).inc()
                log.warning("retrying after %r", exc, extra={"fields": {"attempt": attempt}})
                await asyncio.sleep(self._backoff(attempt))
            except Exception as exc:  # the one catch-all: poison never blocks a partition
                self._dead_letter(entry, exc, attempt, first_failure or time.time())
                break
        STAGE_SECONDS.labels(self._stage).observe(time.perf_counter() - started)

    async def _handle(self, record: ConsumedRecord, headers: list[tuple[str, bytes]]) -> list[Send]:
        """The handler's outputs, encoded: sent by the transaction that commits past it."""
        # One try is one span of the turn's trace; its outputs carry it on (tracing.py).
        with stage_span(self._stage, record, headers) as trace:
            event = self._codec.decode(record.value or b"", headers)
            outputs = await self._handler.handle(event)
        return [
            (output.topic, self._codec.encode(output.event, **trace.headers()))
            for output in outputs
        ]

    def _backoff(self, attempt: int) -> float:
        delay = self._settings.retry_backoff_s * 2.0 ** (attempt - 1)
        return min(delay, self._settings.retry_backoff_max_s)

    def _dead_letter(
        self, entry: Pending, exc: BaseException, attempts: int, first_failure: float
    ) -> None:
        """The record's outputs become its dead letter; the client is told once it is
        committed."""
        record: ConsumedRecord = entry.source
        error_type = type(exc).__name__
        message = str(exc)[:1000]
        provenance = {
            "dlq-source-topic": record.topic,
            "dlq-source-partition": str(record.partition),
            "dlq-source-offset": str(record.offset),
            "dlq-stage": self._stage,
            "dlq-error-type": error_type,
            "dlq-error-message": message,
            "dlq-attempts": str(attempts),
            "dlq-first-failure-at": _iso(first_failure),
            "dlq-last-failure-at": _iso(time.time()),
        }
        headers = [h for h in (record.headers or ()) if not h[0].startswith("dlq-")]
        headers += [(k, v.encode()) for k, v in provenance.items()]
        dead = EncodedEvent(record.key or b"", record.value or b"", headers)
        entry.outputs = [(self._dead_letter_topic, dead)]
        entry.on_commit = functools.partial(self._dead_lettered, record, error_type, message)

    def _dead_lettered(self, record: ConsumedRecord, error_type: str, message: str) -> None:
        DEAD_LETTERS.labels(self._stage, error_type).inc()
        STAGE_EVENTS.labels(self._stage, "dead_letter").inc()
        log.error(
            "dead-lettered: %s: %s",
            error_type,
            message,
            extra={"fields": {"topic": record.topic, "offset": record.offset}},
        )
        task = asyncio.create_task(self._tell_client(record, error_type, message))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _commit_once(self) -> bool:
        async with self._one_transaction:
            return await self._commit_locked()

    async def _commit_locked(self) -> bool:
        """One transaction of everything finished; False if it failed (nothing of it is
        visible, and it is all tried again). A record the broker refuses for good is
        replaced (by its dead letter; a dead letter by its provenance alone) and the
        transaction tried again at once."""
        while True:
            batch: Batch[Any] = self._offsets.take()
            if not batch.offsets:
                return True
            owners = [entry for entry in batch.entries for _ in entry.outputs]
            sends: list[Send] = [send for entry in batch.entries for send in entry.outputs]
            try:
                await self._transactions.commit(sends, batch.offsets)
            except RecordRefused as exc:
                self._replace_refused(owners[exc.index], sends[exc.index], exc)
                continue
            except TransactionFenced as exc:  # or a commit of unknown outcome: stop producing
                log.error("stopping the stage: %s", exc)
                raise
            except Exception as exc:  # retryable, or a bug: tried again, nothing is lost
                if any(topic == self._dead_letter_topic for topic, _ in sends):
                    DEAD_LETTER_FAILURES.labels(self._stage).inc()
                log.error("transaction failed (tried again): %r", exc)
                return False
            self._offsets.settle(batch)
            for entry in batch.entries:
                if entry.on_commit is not None:
                    entry.on_commit()
                    entry.on_commit = None
            return True

    def _replace_refused(self, entry: Pending, send: Send, exc: PublishRefused) -> None:
        topic, refused = send
        if topic != self._dead_letter_topic:
            log.error("output refused (%r): dead-lettering its record", exc)
            self._dead_letter(entry, exc, 1, time.time())
            return
        DEAD_LETTER_FAILURES.labels(self._stage).inc()
        if refused.value:
            log.error("dead letter refused (%r); sending its provenance alone", exc)
            why = f"{len(refused.value)} bytes: {exc}"[:200]
            omitted = ("dlq-value-omitted", why.encode())
            stripped = EncodedEvent(refused.key, b"", [*refused.headers, omitted])
            entry.outputs = [(topic, stripped)]
            return
        # Not even the provenance alone: nothing can be sent for it. Leaving it would
        # stop every commit, so it is committed without a dead letter, loudly.
        log.critical("dead letter refused even without its value (%r): dropped", exc)
        entry.outputs = []

    async def _tell_client(self, record: ConsumedRecord, error_type: str, message: str) -> None:
        # Only the stage's input topic is written by the mesh alone: a record from an
        # automation's inbound topic names a session the broker did not vouch for, and
        # must not put an `error` event into someone else's stream.
        if self._notify_failure is None or not record.key:
            return
        if record.topic != self._handler.input_topic:
            return
        error = ErrorInfo(
            code="stage_failed",
            message=f"the {self._stage} stage could not process this turn "
            f"({error_type}: {message[:200]}); it is in the dead-letter queue for replay",
        )
        turn_id = header(list(record.headers or ()), "event-id") or ""
        try:
            await self._notify_failure(record.key.decode("utf-8", "replace"), turn_id, error)
        except Exception as exc:  # best effort: the dead letter is what must not be lost
            log.warning("could not tell the client about the dead letter: %r", exc)

    async def _drain(self, grace_s: float) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:  # abandoned: not marked done, so redelivered after restart
            task.cancel()
        if pending:
            await asyncio.wait(pending)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
