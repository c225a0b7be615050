"""The stage loop every worker runs: consume → decode → handle → produce → commit.

Guarantees, in order of importance:
- an offset is committed only after the outputs of its record are acknowledged by the
  broker, or after the record is safely in the dead-letter topic (at-least-once; every
  side effect downstream is keyed by event_id, so redelivery never duplicates);
- records of one key (session_id) are handled one after another, in offset order;
  different keys run concurrently, up to `max_in_flight`;
- a poison record never stops its partition: it is dead-lettered with provenance
  headers and the partition moves on;
- `RetryableError`, and a dependency's timeout or dropped connection (`TRANSIENT`), is
  retried with exponential backoff, `attempts` times in all, then dead-lettered; any
  other exception is dead-lettered at once;
- a dead letter the broker will not take is retried until it lands (a record it refuses
  for good is sent as its provenance headers without the value, which stays readable at
  its source offset); meanwhile that partition's commits wait at the record, never past
  it, and every failed try is logged and counted (`soma_dead_letter_failures_total`);
- telling the client that its turn was dead-lettered is best effort: its failure never
  holds a record back;
- on a revoke or a stop, in-flight records get `shutdown_grace_s` to finish; the finished
  prefix is committed and the rest is redelivered to whoever owns the partition next.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Collection, Sequence
from typing import Any

from gateway_runtime.delivery import Delivery, set_delivery
from gateway_runtime.errors import TRANSIENT, PublishRefused, RetryableError
from gateway_runtime.logs import log_context
from gateway_runtime.metrics import (
    DEAD_LETTER_FAILURES,
    DEAD_LETTERS,
    STAGE_EVENTS,
    STAGE_RETRIES,
    STAGE_SECONDS,
)
from gateway_runtime.offsets import OffsetTracker, Pending
from gateway_runtime.ports import (
    ConsumedRecord,
    FailureNotifier,
    Output,
    Publisher,
    RecordConsumer,
    StageHandler,
)
from gateway_runtime.settings import StageSettings
from schemas.codec import Codec, EncodedEvent, header
from schemas.events import ErrorInfo

log = logging.getLogger(__name__)


class StageLoop:
    def __init__(
        self,
        *,
        handler: StageHandler,
        consumer: RecordConsumer,
        publisher: Publisher,
        codec: Codec,
        settings: StageSettings,
        dead_letter_topic: str,
        notify_failure: FailureNotifier | None = None,
    ) -> None:
        self._handler = handler
        self._consumer = consumer
        self._publisher = publisher
        self._codec = codec
        self._settings = settings
        self._dead_letter_topic = dead_letter_topic
        self._notify_failure = notify_failure
        self._stage = handler.stage
        self._offsets: OffsetTracker[Any] = OffsetTracker()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._key_tails: dict[bytes | None, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._uncommitted: dict[Any, int] = {}  # offsets whose commit failed, tried again

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and dispatch until `stop` is set, then finish or abandon in-flight work.

        Offsets are committed by a side task on a short timer, so a commit round trip
        (several ms on the broker) never delays the next poll.
        """
        committer = asyncio.create_task(self._commit_periodically(stop))
        try:
            while not stop.is_set():
                batches = await self._consumer.getmany(timeout_ms=100)
                for tp, records in batches.items():
                    for record in records:
                        await self._slots.acquire()
                        self._dispatch(tp, record)
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
            await self._drain(self._settings.shutdown_grace_s)
            await self._commit()

    async def _commit_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self._settings.commit_interval_s)
            await self._commit()

    async def drain_and_commit(self, revoked: Collection[Any]) -> None:
        """Partitions are being taken away: finish (or abandon) their work, commit it."""
        await self._drain(self._settings.shutdown_grace_s)
        await self._commit()
        self._offsets.forget(set(revoked))
        # A later commit of a revoked partition could move its new owner's offset back.
        for tp in revoked:
            self._uncommitted.pop(tp, None)

    def _dispatch(self, tp: Any, record: ConsumedRecord) -> None:
        entry = self._offsets.start(tp, record.offset)
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
        await self._process(record)  # returns only once the record is safe to commit
        entry.done = True

    async def _process(self, record: ConsumedRecord) -> None:
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
                await self._handle(record, headers)
                STAGE_EVENTS.labels(self._stage, "ok").inc()
                break
            except TRANSIENT as exc:
                first_failure = first_failure or time.time()
                if attempt >= self._settings.retry_attempts:
                    await self._dead_letter(record, exc, attempt, first_failure)
                    break
                STAGE_RETRIES.labels(self._stage).inc()
                log.warning("retrying after %r", exc, extra={"fields": {"attempt": attempt}})
                await asyncio.sleep(self._backoff(attempt))
            except Exception as exc:  # the one catch-all: poison never blocks a partition
                await self._dead_letter(record, exc, attempt, first_failure or time.time())
                break
        STAGE_SECONDS.labels(self._stage).observe(time.perf_counter() - started)

    async def _handle(self, record: ConsumedRecord, headers: list[tuple[str, bytes]]) -> None:
        event = self._codec.decode(record.value or b"", headers)
        outputs: Sequence[Output] = await self._handler.handle(event)
        trace_id = header(headers, "trace-id")
        for output in outputs:
            encoded = self._codec.encode(output.event, trace_id=trace_id)
            await self._publisher.publish(output.topic, encoded)

    def _backoff(self, attempt: int) -> float:
        delay = self._settings.retry_backoff_s * 2.0 ** (attempt - 1)
        return min(delay, self._settings.retry_backoff_max_s)

    async def _dead_letter(
        self, record: ConsumedRecord, exc: BaseException, attempts: int, first_failure: float
    ) -> None:
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
        await self._publish_dead_letter(dead)
        DEAD_LETTERS.labels(self._stage, error_type).inc()
        STAGE_EVENTS.labels(self._stage, "dead_letter").inc()
        log.error("dead-lettered: %s: %s", error_type, message)
        await self._tell_client(record, error_type, message)

    async def _publish_dead_letter(self, dead: EncodedEvent) -> None:
        """Until the dead letter is in its topic: its offset may not be committed before."""
        delay = self._settings.retry_backoff_s
        while True:
            failure: Exception
            try:
                await self._publisher.publish(self._dead_letter_topic, dead)
                return
            except PublishRefused as exc:
                if dead.value:
                    log.error("dead letter refused (%r); sending its provenance alone", exc)
                    why = f"{len(dead.value)} bytes: {exc}"[:200]
                    omitted = ("dlq-value-omitted", why.encode())
                    dead = EncodedEvent(dead.key, b"", [*dead.headers, omitted])
                    continue
                failure = exc
            except Exception as exc:  # retryable, or a bug: either way the record must land
                failure = exc
            DEAD_LETTER_FAILURES.labels(self._stage).inc()
            log.error("dead-letter publish failed (%r); retrying in %.1fs", failure, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.retry_backoff_max_s)

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

    async def _commit(self) -> None:
        offsets = {**self._uncommitted, **self._offsets.committable()}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except RetryableError as exc:
            # Tried again at the next commit; a crash meanwhile only redelivers records
            # whose effects are keyed by event_id.
            self._uncommitted = offsets
            log.warning("offset commit failed (tried again): %r", exc)
            return
        self._uncommitted = {}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
