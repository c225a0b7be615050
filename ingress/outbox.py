"""The turn outbox: a turn is accepted when Kafka or, failing that, Postgres has it.

`TurnOutbox.publish` first hands the turn to Kafka and waits up to
KAFKA_PUBLISH_TIMEOUT_S for the broker. If the broker does not answer in time the turn is
written to the `turn_outbox` table, and the caller answers 202 all the same. While
the outbox holds turns, new turns go straight to it, so turns are never reordered.

A relay task hands the outbox's rows to the producer in id order (the producer keeps
that order per partition), and deletes each row once the broker has acknowledged it. A
send that timed out is not cancelled: aiokafka may still deliver it. Its row waits for
that send to end, and is sent again only if it failed. Rows another ingress (or this one
before a restart) sent are sent again only after such a send must have expired. Once
every row this process queued is in the producer's hands and the broker acknowledges
sends again, new turns go straight to Kafka: behind the relayed ones, in order. In the
rare case where a record lands twice, the policy stage admits a turn's event_id once
(adapters/admissions.py). One relay runs at a time across replicas (an advisory lock).

A dead-letter replay is queued here too (`put`, in the caller's transaction), so an
operator's resolve is durable the moment it is answered and never sent twice over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import asyncpg

from gateway_runtime.background import background
from gateway_runtime.errors import DependencyUnavailable, PublishRefused
from gateway_runtime.kafka import KafkaPublisher
from gateway_runtime.postgres import PG_ERRORS
from gateway_runtime.settings import IngressSettings
from schemas.codec import EncodedEvent, headers_from_json, headers_to_json

log = logging.getLogger(__name__)
Outcome = Literal["published", "queued"]
_LOCK_ID = 0x4F_55_54  # the relay's advisory lock
# After this, a send another process started has surely expired (the producer's
# request timeout is 15 s): its row may be sent again.
FOREIGN_SEND_GRACE_S = 45.0
_BATCH = 500


class TurnOutbox:
    def __init__(
        self, pool: asyncpg.Pool, publisher: KafkaPublisher, settings: IngressSettings
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._publish_timeout_s = settings.kafka_publish_timeout_s
        self._interval_s = settings.outbox_relay_interval_s
        self._sends: dict[int, asyncio.Future[Any]] = {}  # row id -> a send that may land
        self._unhanded: set[int] = set()  # rows this process queued, not yet sent
        self._inserting = 0  # queue writes under way (their ids are not known yet)
        self._kafka_ok = True  # the last send that ended was acknowledged
        self._backlog = False  # new turns queue behind rows not yet in the producer
        self._wake = asyncio.Event()

    @property
    def backlog(self) -> bool:
        """Turns wait in the outbox: new turns queue behind them."""
        return self._backlog

    async def publish(self, topic: str, record: EncodedEvent, deadline: float) -> Outcome:
        """Kafka's acknowledgement, or the outbox's commit, before `deadline` (monotonic).

        Raises DependencyUnavailable when neither happened in time.
        """
        send: asyncio.Future[Any] | None = None
        if not self._backlog:
            send = await self._try_kafka(topic, record, deadline)
            if send is not None and send.done() and send.exception() is None:
                return "published"
            self._kafka_ok = False
            if send is not None and send.done():
                send = None  # it failed: nothing will land
        left = deadline - time.monotonic()
        if left <= 0:
            raise DependencyUnavailable("the turn could not be handed to Kafka or the outbox")
        self._inserting += 1
        try:
            async with asyncio.timeout(left):
                row_id = await self._insert(topic, record, send is not None)
            if send is not None:
                self._watch(row_id, send)
            else:
                self._unhanded.add(row_id)
        except PG_ERRORS as exc:  # TimeoutError among them
            raise DependencyUnavailable(f"turn outbox write failed: {exc!r}") from exc
        finally:
            self._inserting -= 1
        self.kick()
        return "queued"

    async def put(
        self, conn: asyncpg.pool.PoolConnectionProxy, topic: str, record: EncodedEvent
    ) -> None:
        """Queue a record in the caller's transaction; `kick()` once it is committed."""
        await conn.execute(
            "INSERT INTO turn_outbox (topic, record_key, record_value, record_headers)"
            " VALUES ($1, $2, $3, $4::jsonb)",
            topic,
            record.key,
            record.value,
            headers_to_json(record.headers),
        )

    def kick(self) -> None:
        """Rows are waiting: relay now, and queue new turns behind them meanwhile."""
        self._backlog = True
        self._wake.set()

    async def _try_kafka(
        self, topic: str, record: EncodedEvent, deadline: float
    ) -> asyncio.Future[Any] | None:
        """The send, done or still going after the publish timeout; None if none started."""
        # Half the time left is kept for the outbox write.
        budget = min(self._publish_timeout_s, (deadline - time.monotonic()) / 2)
        due = time.monotonic() + budget
        try:
            # asyncio.timeout, not wait_for: no task per turn on the hot path.
            async with asyncio.timeout(budget):
                send = await self._publisher.start_send(topic, record)
        except PublishRefused:
            raise
        except (TimeoutError, DependencyUnavailable) as exc:
            log.warning("kafka did not take a turn (%r): to the outbox", exc)
            return None
        with contextlib.suppress(Exception):  # a timeout, or the send failed (it says how)
            async with asyncio.timeout(max(due - time.monotonic(), 0)):
                await asyncio.shield(send)  # a timeout leaves the send going
        if send.done() and send.exception() is not None:
            log.warning("kafka refused a turn (%r): to the outbox", send.exception())
        return send

    async def _insert(self, topic: str, record: EncodedEvent, sent: bool) -> int:
        row_id: int = await self._pool.fetchval(
            "INSERT INTO turn_outbox (topic, record_key, record_value, record_headers, sent_at)"
            " VALUES ($1, $2, $3, $4::jsonb, CASE WHEN $5 THEN now() END) RETURNING id",
            topic,
            record.key,
            record.value,
            headers_to_json(record.headers),
            sent,
        )
        return row_id

    def _watch(self, row_id: int, send: asyncio.Future[Any]) -> None:
        self._sends[row_id] = send
        send.add_done_callback(self._send_ended)

    def _send_ended(self, send: asyncio.Future[Any]) -> None:
        # Retrieved: a failed send is expected, not "exception never retrieved".
        self._kafka_ok = not send.cancelled() and send.exception() is None
        self._wake.set()

    # ---- the relay ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The relay task, for the life of the ingress."""
        async with background(self._relay_forever(), "outbox-relay"):
            yield

    async def _relay_forever(self) -> None:
        self._backlog = True  # turns a previous run left behind go first
        while True:
            if self._backlog or self._sends:
                try:
                    await self.relay_once()
                except Exception as exc:  # Postgres or Kafka down: try again next round
                    log.warning("outbox relay round failed: %r", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)

    async def relay_once(self) -> int:
        """One round: hand what may be sent to the producer, in order; delete what the
        broker acknowledged. Returns how many rows left the outbox."""
        known = set(self._unhanded)
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_ID):
                return 0  # another replica is relaying
            rows = await conn.fetch(
                "SELECT id, topic, record_key, record_value, record_headers,"
                " sent_at < now() - make_interval(secs => $1) AS expired,"
                " sent_at IS NULL AS unsent"
                " FROM turn_outbox ORDER BY id LIMIT $2",
                FOREIGN_SEND_GRACE_S,
                _BATCH,
            )
            delivered, sent, blocked = await self._send_in_order(rows)
            if delivered:
                await conn.execute(
                    "DELETE FROM turn_outbox WHERE id = any($1::bigint[])", delivered
                )
            if sent:  # other replicas leave these alone while the sends may land
                await conn.execute(
                    "UPDATE turn_outbox SET sent_at = now() WHERE id = any($1::bigint[])", sent
                )
        complete = len(rows) < _BATCH
        if complete:  # rows of ours another replica relayed are gone
            self._unhanded -= known - {r["id"] for r in rows}
        if (
            self._backlog
            and complete
            and not blocked
            and self._inserting == 0
            and not self._unhanded
            and self._kafka_ok
        ):
            self._backlog = False
            log.info("outbox relayed: turns go straight to kafka again")
        return len(delivered)

    async def _send_in_order(self, rows: list[asyncpg.Record]) -> tuple[list[int], list[int], bool]:
        """Ids the broker has acknowledged, ids handed to the producer now, and whether a
        row had to wait (it stops every row after it)."""
        delivered: list[int] = []
        sent: list[int] = []
        for row in rows:
            send = self._sends.get(row["id"])
            if send is not None:
                if not send.done():
                    continue  # in the producer's hands: it keeps the order
                del self._sends[row["id"]]
                if not send.cancelled() and send.exception() is None:
                    delivered.append(row["id"])
                    continue
            elif not (row["unsent"] or row["expired"]):
                return delivered, sent, True  # another process's send may still land
            key, value = bytes(row["record_key"]), bytes(row["record_value"])
            record = EncodedEvent(key, value, headers_from_json(row["record_headers"]))
            try:
                async with asyncio.timeout(self._publish_timeout_s):
                    new = await self._publisher.start_send(row["topic"], record)
            except (TimeoutError, DependencyUnavailable, PublishRefused) as exc:
                log.warning("outbox relay: kafka did not take a turn (%r)", exc)
                return delivered, sent, True
            self._watch(row["id"], new)
            self._unhanded.discard(row["id"])
            sent.append(row["id"])
        return delivered, sent, False
