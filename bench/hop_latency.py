"""One Kafka hop, measured: the mesh's aiokafka stage loop with other client settings,
librdkafka (confluent-kafka) driven from asyncio, and a faust-streaming agent.

Why: every stage of the mesh is a consume → produce → commit hop, and a turn crosses
three before the model is called, so the latency and CPU of one hop bound the idle floor
and what the whole pipeline can do. This measures that hop on the real broker for each
client and setting, with the same driver, the same clock and the same durability:
acks=all, an idempotent producer, read_committed consumers and manual commits (a variant
may override one of them only to show what it would buy; the report names it).

The driver (this process) produces timestamped records to a fresh topic A at a steady
open-loop rate and reads topic B; the hop worker runs as a separate subprocess (so its
CPU, librdkafka's threads included, can be read from /proc) and forwards A → B:

- family ``aiokafka``: the consumer and producer of ``gateway_runtime.kafka`` with the
  variant's overrides, run like ``gateway_runtime.stage.StageLoop``: getmany(100 ms),
  one task per record (at most 64 in flight) that publishes with send_and_wait and marks
  its offset done, commits of the finished prefix from a side task every 0.2 s. With
  ``commit=batch`` it is the loop this bench first measured: produce the polled batch,
  await its acks, commit synchronously, poll again.
- family ``stageloop`` (``aiokafka-txn``): ``gateway_runtime.stage.StageLoop`` itself,
  run by a ``serve_stage``-like wiring with a handler that forwards each record as it
  came: its transactional producer (``make_transactional_producer``), outputs and the
  consumed offsets committed in one transaction by the loop's committer, as every stage
  of the mesh now runs (exactly-once). Compare with ``aiokafka``, the at-least-once loop
  the stages ran before: publish with send_and_wait, then commit offsets on a timer.
- family ``confluent``: the same loop over confluent-kafka. The consumer is
  ``confluent_kafka.aio.AIOConsumer`` (consume() in a worker thread); the producer is a
  plain ``Producer`` whose produce() is called on the event loop (it only enqueues) and
  whose delivery reports are served by one thread blocked in poll() and handed to the
  loop as futures. confluent-kafka 2.16's ``AIOProducer`` is not used: it buffers
  records (batch_size 1000, flushed on a 1 s inactivity timer), resolves delivery
  futures only on a later poll, and refuses headers, which every mesh record carries.
- family ``faust``: a faust-streaming app (its bundled aiokafka driver) whose one agent
  on A sends every value to B; memory store, no web server, no tables.

Latency = receive time on B - send time in the payload (one process, one monotonic
clock): it includes the driver's own produce and fetch, the same for every variant. The
driver reads B with read_committed, as the next stage does: a transactional variant's
records count from when their transaction commits.

    python -m bench.hop_latency --runtime aiokafka,confluent --rate 50,500 \\
        --messages 1000,5000 --repeat 2
    python -m bench.hop_latency --variant 'mine=aiokafka,c.fetch_max_wait_ms=20' \\
        --runtime mine
    python -m bench.hop_latency --runtime aiokafka,aiokafka-txn --rate 50,500 \\
        --messages 1000,5000 --partitions 12 --repeat 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic

from gateway_runtime import kafka as mesh_kafka
from gateway_runtime.kafka import (
    GroupConsumer,
    KafkaConnection,
    make_admin,
    make_consumer,
    make_producer,
    make_transactional_producer,
)
from gateway_runtime.kafka_credentials import ADMIN
from gateway_runtime.offsets import OffsetTracker, Pending
from gateway_runtime.ports import Output
from gateway_runtime.settings import StageSettings
from gateway_runtime.stage import StageLoop
from gateway_runtime.transactions import KafkaTransactions
from gateway_runtime.worker import StageRebalance
from schemas.codec import Codec, EncodedEvent

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120.0  # a faust worker's first rebalance can take tens of seconds
DRAIN_GRACE_S = 30.0  # how long after the last send the tail may still take
STOP_GRACE_S = 20.0  # how long a worker gets to leave its group before it is killed
PROBE_EVERY_S = 0.5
STATS_MARK = "HOPSTATS "  # a worker's own counters, one log line, read back by the driver
MAX_IN_FLIGHT = StageSettings.model_fields["max_in_flight"].default
COMMIT_INTERVAL_S = StageSettings.model_fields["commit_interval_s"].default
POLL_TIMEOUT_MS = 100  # what StageLoop.run passes to getmany
KEY_HEADER = "hop-key"  # family stageloop: a record's key, carried past the codec

# What a confluent-kafka stage would set to keep the mesh's durability and group timing
# (gateway_runtime.kafka's make_producer / make_consumer) plus its latency knobs.
CONFLUENT_PRODUCER = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 0,
    "request.timeout.ms": 15000,
    "socket.nagle.disable": True,
}
CONFLUENT_CONSUMER = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "isolation.level": "read_committed",
    "fetch.wait.max.ms": 50,
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 1000,
    "max.poll.interval.ms": 300000,
    "socket.nagle.disable": True,
}


@dataclass(frozen=True)
class Variant:
    """One way to run the hop: a client family, its commit style and setting overrides
    (consumer and producer keyword arguments of aiokafka, or librdkafka properties)."""

    family: str  # aiokafka | stageloop | confluent | faust
    consumer: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    commit: str = "side"  # side: StageLoop's timer task; batch: after each polled batch
    note: str = ""


VARIANTS: dict[str, Variant] = {
    "aiokafka": Variant("aiokafka", note="make_consumer / make_producer as they are"),
    "aiokafka-wait5": Variant("aiokafka", {"fetch_max_wait_ms": 5}),
    "aiokafka-wait50": Variant("aiokafka", {"fetch_max_wait_ms": 50}),
    "aiokafka-wait500": Variant("aiokafka", {"fetch_max_wait_ms": 500}),
    "aiokafka-minbytes": Variant(
        "aiokafka",
        {"fetch_min_bytes": 16384, "max_partition_fetch_bytes": 262144},
        note="fetch_min_bytes=16 KiB, max_partition_fetch_bytes=256 KiB",
    ),
    "aiokafka-uncommitted": Variant("aiokafka", {"isolation_level": "read_uncommitted"}),
    "aiokafka-nocrc": Variant("aiokafka", {"check_crcs": False}),
    "aiokafka-linger5": Variant("aiokafka", producer={"linger_ms": 5}),
    "aiokafka-batch64k": Variant("aiokafka", producer={"linger_ms": 2, "max_batch_size": 65536}),
    "aiokafka-batchcommit": Variant(
        "aiokafka", commit="batch", note="the first bench loop: a synchronous commit per poll"
    ),
    "aiokafka-txn": Variant(
        "stageloop", commit="txn", note="gateway_runtime.stage.StageLoop: transactions"
    ),
    "confluent": Variant("confluent", note="fetch.wait.max.ms=50, linger.ms=0, nagle off"),
    "confluent-wait5": Variant("confluent", {"fetch.wait.max.ms": 5}),
    "confluent-wait500": Variant("confluent", {"fetch.wait.max.ms": 500}),
    "confluent-linger5": Variant("confluent", producer={"linger.ms": 5}),
    "confluent-nagle": Variant(
        "confluent",
        {"socket.nagle.disable": False},
        {"socket.nagle.disable": False},
        note="librdkafka's default: Nagle on",
    ),
    "faust": Variant("faust", note="faust-streaming 0.15 agent, idempotent producer"),
}
DEFAULT_RUNTIMES = "aiokafka,faust"


def parse_variant(spec: str) -> tuple[str, Variant]:
    """NAME=FAMILY[,c.KEY=VALUE][,p.KEY=VALUE][,commit=side|batch]: a variant of one's own."""
    name, _, body = spec.partition("=")
    family, *pairs = body.split(",")
    if not name or family not in ("aiokafka", "stageloop", "confluent"):
        raise argparse.ArgumentTypeError(f"bad --variant {spec!r}")
    consumer: dict[str, Any] = {}
    producer: dict[str, Any] = {}
    commit = "side"
    for pair in pairs:
        key, _, raw = pair.partition("=")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        elif raw.lstrip("-").isdigit():
            value = int(raw)
        if key == "commit":
            commit = raw
        elif key.startswith("c."):
            consumer[key[2:]] = value
        elif key.startswith("p."):
            producer[key[2:]] = value
        else:
            raise argparse.ArgumentTypeError(f"bad --variant setting {pair!r} in {spec!r}")
    return name, Variant(family, consumer, producer, commit, note=body)


# ---- shared helpers ------------------------------------------------------------------


def default_bootstrap() -> str:
    """The broker of the local stack: env var first, then deploy/stack.env (as services do)."""
    from gateway_runtime.settings import CommonSettings

    return CommonSettings().kafka_bootstrap_servers


def kafka(bootstrap: str) -> KafkaConnection:
    """The broker admin's login to `bootstrap` (the local stack's credentials, found as the
    services find theirs): the runs create and delete topics of their own."""
    from gateway_runtime.settings import CommonSettings

    settings = CommonSettings(kafka_bootstrap_servers=bootstrap)
    return KafkaConnection.from_settings(settings, principal=ADMIN)


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads) from /proc, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # comm may contain spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, for context next to its CPU."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolation."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def start_watchdog(max_seconds: float, on_expire: Callable[[], None]) -> None:
    """Stop a worker whose driver died or that outlived its budget, so none is left behind."""
    parent = os.getppid()
    deadline = time.monotonic() + max_seconds

    def watch() -> None:
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(1.0)
        on_expire()
        time.sleep(STOP_GRACE_S)
        os._exit(3)  # a graceful stop did not finish: leave anyway

    threading.Thread(target=watch, name="hop-watchdog", daemon=True).start()


# ---- hop workers (run in the subprocess) ---------------------------------------------


def mesh_kwargs(factory: Callable[..., Any], client: str, *args: Any, **kw: Any) -> dict[str, Any]:
    """The keyword arguments gateway_runtime.kafka's `factory` gives the aiokafka `client`
    class, so every aiokafka variant is the mesh's configuration plus its overrides."""
    captured: dict[str, Any] = {}

    class Capture:
        def __init__(self, **kwargs: Any) -> None:
            captured.update(kwargs)

    shipped = getattr(mesh_kafka, client)
    setattr(mesh_kafka, client, Capture)
    try:
        factory(*args, **kw)
    finally:
        setattr(mesh_kafka, client, shipped)
    return captured


class StageLikeHop:
    """StageLoop's shape without decoding or a handler: dispatch each polled record to a
    task (at most MAX_IN_FLIGHT), publish and await the ack there, mark the offset done,
    and commit the finished prefix from a side task."""

    def __init__(
        self,
        poll: Callable[[], Any],
        publish: Callable[[Any], Any],
        commit: Callable[[dict[Any, int]], Any],
    ) -> None:
        self._poll, self._publish, self._commit_offsets = poll, publish, commit
        self._offsets: OffsetTracker[Any] = OffsetTracker()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self.commit_ms: list[float] = []
        self.batch_sizes: list[int] = []

    async def run(self, stop: asyncio.Event) -> None:
        committer = asyncio.create_task(self._commit_periodically(stop))
        try:
            while not stop.is_set():
                batch: list[tuple[Any, Any]] = await self._poll()
                if batch:
                    self.batch_sizes.append(len(batch))
                for tp, record in batch:
                    await self._slots.acquire()
                    entry = self._offsets.start(tp, record_offset(record))
                    task = asyncio.create_task(self._forward(record, entry))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S / 2)
            await self._commit()

    async def _forward(self, record: Any, entry: Pending) -> None:
        try:
            await self._publish(record)
            entry.done = True
        finally:
            self._slots.release()

    async def _commit_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await self._commit()

    async def _commit(self) -> None:
        offsets = self._offsets.committable()
        if offsets:
            started = time.perf_counter()
            await self._commit_offsets(offsets)
            self.commit_ms.append((time.perf_counter() - started) * 1000)

    def stats(self) -> dict[str, Any]:
        self.commit_ms.sort()
        return {
            "batches": len(self.batch_sizes),
            "mean_batch": round(sum(self.batch_sizes) / max(len(self.batch_sizes), 1), 2),
            "commits": len(self.commit_ms),
            "commit_p50_ms": round(percentile(self.commit_ms, 50), 2),
            "commit_p99_ms": round(percentile(self.commit_ms, 99), 2),
        }


def record_offset(record: Any) -> int:
    offset = record.offset
    return int(offset() if callable(offset) else offset)  # confluent's Message.offset()


def stop_event(args: argparse.Namespace) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def expire() -> None:
        loop.call_soon_threadsafe(stop.set)

    start_watchdog(args.max_seconds, expire)
    return stop


def worker_consumer(
    args: argparse.Namespace, login: KafkaConnection, variant: Variant
) -> AIOKafkaConsumer:
    """A stage's consumer as gateway_runtime.kafka makes it, with the variant's overrides."""
    return AIOKafkaConsumer(
        **{
            **mesh_kwargs(
                make_consumer,
                "AIOKafkaConsumer",
                login,
                group_id=args.group,
                client_id=f"{args.group}-c",
            ),
            **variant.consumer,
        }
    )


async def aiokafka_hop(args: argparse.Namespace, variant: Variant) -> None:
    """The mesh's aiokafka clients, with the variant's overrides, in a stage-like loop."""
    stop = stop_event(args)
    login = kafka(args.bootstrap)
    consumer = worker_consumer(args, login, variant)
    producer = AIOKafkaProducer(
        **{
            **mesh_kwargs(make_producer, "AIOKafkaProducer", login, client_id=f"{args.group}-p"),
            **variant.producer,
        }
    )
    await producer.start()
    await consumer.start()
    stats: dict[str, Any] = {}
    try:
        consumer.subscribe([args.src])
        if variant.commit == "batch":
            stats = await batch_commit_loop(consumer, producer, args.dst, stop)
        else:

            async def poll() -> list[tuple[Any, Any]]:
                batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
                return [(tp, r) for tp, records in batches.items() for r in records]

            async def publish(record: Any) -> None:
                await producer.send_and_wait(
                    args.dst, value=record.value, key=record.key, headers=list(record.headers)
                )

            hop = StageLikeHop(poll, publish, consumer.commit)
            try:
                await hop.run(stop)
            finally:
                stats = hop.stats()
    finally:
        await consumer.stop()
        await producer.stop()
        print(f"{STATS_MARK}{json.dumps(stats)}", flush=True)


class ForwardAsItCame:
    """StageLoop's handler and codec for the bench: a record's bytes go to B as they came
    (key and headers too), so the hop costs what the loop costs, not a schema's."""

    stage = "hop"

    def __init__(self, src: str, dst: str) -> None:
        self.input_topic, self._dst = src, dst

    def decode(self, value: bytes, headers: list[tuple[str, bytes]]) -> Any:
        return EncodedEvent(dict(headers).get(KEY_HEADER, b""), value, headers)

    def encode(self, event: Any, *, trace_id: str | None = None) -> EncodedEvent:
        record: EncodedEvent = event
        headers = [h for h in record.headers if h[0] != KEY_HEADER]
        return EncodedEvent(record.key, record.value, headers)

    async def handle(self, event: Any) -> list[Output]:
        return [Output(self._dst, event)]


class KeyInHeaders:
    """The consumer port, with each record's key also in a header: the handler above
    sees only value and headers, and must send each record on with its key."""

    def __init__(self, consumer: GroupConsumer) -> None:
        self._consumer = consumer

    async def getmany(self, *, timeout_ms: int) -> dict[Any, list[Any]]:
        batches: dict[Any, list[Any]] = dict(await self._consumer.getmany(timeout_ms=timeout_ms))
        for records in batches.values():
            records[:] = [
                dataclasses.replace(r, headers=[*r.headers, (KEY_HEADER, r.key or b"")])
                for r in records
            ]
        return batches

    async def commit(self, offsets: Any) -> None:
        await self._consumer.commit(offsets)


class TransactionsTimed:
    """The loop's `Transactions`, timing each commit and counting what it carried."""

    def __init__(self, inner: KafkaTransactions) -> None:
        self.inner = inner
        self.commit_ms: list[float] = []
        self.records: list[int] = []

    async def commit(self, records: Any, offsets: Any) -> None:
        started = time.perf_counter()
        await self.inner.commit(records, offsets)
        self.commit_ms.append((time.perf_counter() - started) * 1000)
        self.records.append(len(records))

    def stats(self) -> dict[str, Any]:
        self.commit_ms.sort()
        return {
            "transactions": len(self.commit_ms),
            "mean_batch": round(sum(self.records) / max(len(self.records), 1), 2),
            "commit_p50_ms": round(percentile(self.commit_ms, 50), 2),
            "commit_p99_ms": round(percentile(self.commit_ms, 99), 2),
        }


async def stage_loop_hop(args: argparse.Namespace, variant: Variant) -> None:
    """gateway_runtime.stage.StageLoop as serve_stage wires it, forwarding A → B."""
    stop = stop_event(args)
    login = kafka(args.bootstrap)
    settings = StageSettings()
    consumer = worker_consumer(args, login, variant)

    def producer() -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **{
                **mesh_kwargs(
                    make_transactional_producer,
                    "AIOKafkaProducer",
                    login,
                    client_id=f"{args.group}-p",
                    transactional_id=f"{args.group}.0",
                    transaction_timeout_s=settings.transaction_timeout_s,
                ),
                **variant.producer,
            }
        )

    group = GroupConsumer(consumer)
    transactions = TransactionsTimed(
        KafkaTransactions(
            producer, args.group, group.committed, timeout_s=settings.transaction_timeout_s / 2
        )
    )
    forward = ForwardAsItCame(args.src, args.dst)
    loop = StageLoop(
        handler=forward,
        consumer=KeyInHeaders(group),
        transactions=transactions,
        codec=cast(Codec, forward),
        settings=settings,
        dead_letter_topic=args.dst,
    )
    await transactions.inner.start()
    await consumer.start()
    try:
        consumer.subscribe([args.src], listener=StageRebalance(loop, group))
        await loop.run(stop)
    finally:
        await consumer.stop()
        await transactions.inner.stop()
        print(f"{STATS_MARK}{json.dumps(transactions.stats())}", flush=True)


async def batch_commit_loop(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, dst: str, stop: asyncio.Event
) -> dict[str, Any]:
    """Consume, produce the batch, await its acks, commit it, and only then poll again."""
    commit_ms: list[float] = []
    batch_sizes: list[int] = []
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
        if not batches:
            continue
        acks = [
            await producer.send(dst, value=record.value, key=record.key)
            for records in batches.values()
            for record in records
        ]
        await asyncio.gather(*acks)
        committing = time.perf_counter()
        await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
        commit_ms.append((time.perf_counter() - committing) * 1000)
        batch_sizes.append(len(acks))
    commit_ms.sort()
    return {
        "batches": len(batch_sizes),
        "mean_batch": round(sum(batch_sizes) / max(len(batch_sizes), 1), 2),
        "commit_p50_ms": round(percentile(commit_ms, 50), 2),
        "commit_p99_ms": round(percentile(commit_ms, 99), 2),
    }


class PolledProducer:
    """confluent_kafka.Producer for asyncio: produce() only enqueues, so it is called on
    the loop; one thread blocks in poll() to serve delivery reports and resolves each
    send's future on the loop as the broker acknowledges it."""

    def __init__(self, config: dict[str, Any]) -> None:
        from confluent_kafka import Producer

        self._loop = asyncio.get_running_loop()
        self._producer = Producer(config)
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._serve, name="producer-poll", daemon=True)
        self._poller.start()

    def _serve(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.1)  # returns as soon as a delivery report is ready

    def _delivered(self, future: asyncio.Future[Any], err: Any, msg: Any) -> None:
        self._loop.call_soon_threadsafe(_settle, future, err, msg)

    async def send_and_wait(self, topic: str, value: Any, key: Any, headers: Any) -> Any:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._producer.produce(
            topic,
            value=value,
            key=key,
            headers=headers,
            on_delivery=functools.partial(self._delivered, future),
        )
        return await future

    async def close(self) -> None:
        await asyncio.to_thread(self._producer.flush, 10.0)
        self._closing.set()
        await asyncio.to_thread(self._poller.join, 1.0)


def _settle(future: asyncio.Future[Any], err: Any, msg: Any) -> None:
    if future.done():
        return
    if err is not None:
        future.set_exception(RuntimeError(f"delivery failed: {err}"))
    else:
        future.set_result(msg)


async def confluent_hop(args: argparse.Namespace, variant: Variant) -> None:
    """The same stage-like loop over librdkafka: AIOConsumer and a polled Producer."""
    from confluent_kafka import TopicPartition as RdTopicPartition
    from confluent_kafka.aio import AIOConsumer

    stop = stop_event(args)
    login = kafka(args.bootstrap).librdkafka_config()
    consumer = AIOConsumer(
        {
            **login,
            **CONFLUENT_CONSUMER,
            "group.id": args.group,
            "client.id": f"{args.group}-c",
            **variant.consumer,
        },
        max_workers=4,  # consume() and a commit may run at once; nothing more
    )
    producer = PolledProducer(
        {**login, **CONFLUENT_PRODUCER, "client.id": f"{args.group}-p", **variant.producer}
    )
    hop: StageLikeHop | None = None
    try:
        await consumer.subscribe([args.src])

        async def poll() -> list[tuple[Any, Any]]:
            # consume(n, timeout) waits out its timeout unless n records came: wait for
            # the first with poll(), then take whatever else is already fetched.
            first = await consumer.poll(POLL_TIMEOUT_MS / 1000)
            if first is None:
                return []
            messages = [first, *await consumer.consume(num_messages=499, timeout=0)]
            batch = []
            for m in messages:
                if m.error():
                    print(f"consume error: {m.error()}", file=sys.stderr, flush=True)
                    continue
                batch.append(((m.topic(), m.partition()), m))
            return batch

        async def publish(m: Any) -> None:
            await producer.send_and_wait(args.dst, m.value(), m.key(), m.headers())

        async def commit(offsets: dict[Any, int]) -> None:
            tps = [RdTopicPartition(t, p, o) for (t, p), o in offsets.items()]
            await consumer.commit(offsets=tps, asynchronous=False)

        hop = StageLikeHop(poll, publish, commit)
        await hop.run(stop)
    finally:
        await consumer.close()
        await producer.close()
        print(f"{STATS_MARK}{json.dumps(hop.stats() if hop else {})}", flush=True)


def faust_hop(args: argparse.Namespace) -> None:
    """A faust agent on A forwarding every value to B, with latency-minded settings."""
    import faust
    from faust.transport.drivers import aiokafka as faust_aiokafka

    if args.faust_idempotent:
        # faust only turns idempotence on for exactly_once; match gateway_runtime's producer.
        extra = faust_aiokafka.Producer._settings_extra

        def settings_extra(self: Any) -> dict[str, Any]:
            return {**extra(self), "acks": "all", "enable_idempotence": True}

        faust_aiokafka.Producer._settings_extra = settings_extra  # type: ignore[method-assign]

    if args.faust_fetch_max_wait_ms is not None:
        # The driver hardcodes fetch_max_wait_ms=1500 for worker consumers; no setting exists.
        wait_ms = args.faust_fetch_max_wait_ms
        shipped = faust_aiokafka.aiokafka.AIOKafkaConsumer  # type: ignore[attr-defined]

        class ShorterWaitConsumer(shipped):  # type: ignore[misc, valid-type]
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, **{**kw, "fetch_max_wait_ms": wait_ms})

        faust_aiokafka.aiokafka.AIOKafkaConsumer = ShorterWaitConsumer  # type: ignore[attr-defined]

    datadir_ctx = tempfile.TemporaryDirectory(prefix="hopbench-faust-")
    datadir = datadir_ctx.name
    login = kafka(args.bootstrap)
    credentials = None
    if login.sasl:
        credentials = faust.SASLCredentials(
            username=login.username, password=login.password, mechanism=login.sasl_mechanism
        )
    app = faust.App(
        args.group,
        broker=";".join(f"kafka://{hp}" for hp in args.bootstrap.split(",")),
        broker_credentials=credentials,
        store="memory://",
        datadir=datadir,
        web_enabled=False,
        topic_disable_leader=True,  # no extra assignor-leader topic to create and delete
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.001,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        broker_max_poll_records=500,
        stream_buffer_maxsize=1024,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
    )
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "partitions": args.partitions,
    }
    src = app.topic(args.src, **raw)
    dst = app.topic(args.dst, **raw)

    @app.agent(src)
    async def hop(stream: Any) -> None:
        async for event in stream.events():
            await dst.send(key=event.key, value=event.value)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    start_watchdog(args.max_seconds, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with datadir_ctx:
        worker.execute_from_commandline()


def run_worker(args: argparse.Namespace) -> None:
    variant = Variant(**json.loads(args.worker_spec))
    if variant.family == "aiokafka":
        asyncio.run(aiokafka_hop(args, variant))
    elif variant.family == "stageloop":
        asyncio.run(stage_loop_hop(args, variant))
    elif variant.family == "confluent":
        asyncio.run(confluent_hop(args, variant))
    else:
        faust_hop(args)


# ---- driver --------------------------------------------------------------------------


@dataclass
class Receiver:
    """Reads B and keeps, per phase, when each sequence number first arrived."""

    consumer: AIOKafkaConsumer
    tag: str
    arrivals: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            now = time.monotonic_ns()
            for records in batches.values():
                for record in records:
                    msg = json.loads(record.value)
                    if msg["r"] != self.tag:
                        continue
                    seen = self.arrivals.setdefault(msg["ph"], {})
                    if msg["i"] in seen:
                        self.duplicates[msg["ph"]] = self.duplicates.get(msg["ph"], 0) + 1
                    else:
                        seen[msg["i"]] = (msg["t"], now)
            if batches:
                self.changed.set()

    def count(self, phase: str) -> int:
        return len(self.arrivals.get(phase, {}))

    async def wait_for(self, phase: str, n: int, timeout: float) -> bool:
        """True once n distinct records of the phase arrived; False at the timeout."""
        deadline = time.monotonic() + timeout
        while self.count(phase) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))
        return True


@dataclass
class SendStats:
    sent: int
    first_ns: int
    last_ns: int
    lag_max_ms: float  # how late the open-loop sender ran behind its schedule


@dataclass
class HopResult:
    runtime: str
    rate: float
    run: int
    messages: int
    received: int
    duplicates: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    send_rate: float
    recv_rate: float
    cpu_s_per_1k: float
    cpu_pct: float
    idle_cpu_ms_per_s: float  # the worker's CPU with nothing to forward (empty fetches)
    rss_mib: float
    sender_lag_max_ms: float
    worker_stats: dict[str, Any]


def payload(tag: str, phase: str, seq: int, stamp_ns: int, pad: str) -> bytes:
    return json.dumps({"r": tag, "ph": phase, "i": seq, "t": stamp_ns, "pad": pad}).encode()


async def send_open_loop(
    producer: AIOKafkaProducer,
    topic: str,
    tag: str,
    phase: str,
    n: int,
    rate: float,
    pad: str,
    keys: int,
) -> SendStats:
    """Send n records on a fixed schedule: a slow hop never slows the offered load.
    Each carries an event-id header, as every mesh record does, and one of `keys` keys."""
    interval_ns = 1e9 / rate
    start = time.monotonic_ns()
    acks: list[asyncio.Future[Any]] = []
    lag_max = 0
    first = last = start
    for seq in range(n):
        due = start + int(seq * interval_ns)
        delay = (due - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic_ns()
        lag_max = max(lag_max, now - due)
        if seq == 0:
            first = now
        last = now
        headers = [("event-id", f"{tag}-{phase}-{seq}".encode())]
        value = payload(tag, phase, seq, now, pad)
        acks.append(
            await producer.send(topic, value, key=f"s{seq % keys}".encode(), headers=headers)
        )
    await asyncio.wait_for(asyncio.gather(*acks), DRAIN_GRACE_S)
    return SendStats(n, first, last, lag_max / 1e6)


async def spawn_worker(
    variant: Variant,
    opts: argparse.Namespace,
    rate: float,
    messages: int,
    topics: tuple[str, str, str],
    log_path: Path,
) -> asyncio.subprocess.Process:
    src, dst, group = topics
    budget = READY_TIMEOUT_S + opts.idle_s + (opts.warmup + messages) / rate + 4 * DRAIN_GRACE_S
    cmd = [
        sys.executable, "-m", "bench.hop_latency", "--worker-spec", json.dumps(asdict(variant)),
        "--bootstrap", opts.bootstrap, "--src", src, "--dst", dst, "--group", group,
        "--partitions", str(opts.partitions), "--max-seconds", f"{budget:.0f}",
    ]  # fmt: skip
    if not opts.faust_idempotent:
        cmd.append("--no-faust-idempotent")
    if opts.faust_fetch_max_wait_ms is not None:
        cmd += ["--faust-fetch-max-wait-ms", str(opts.faust_fetch_max_wait_ms)]
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    with log_path.open("wb") as log:
        return await asyncio.create_subprocess_exec(
            *cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )


async def stop_worker(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (leave the group cleanly), then SIGKILL if it does not exit in time."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def worker_stats(path: Path) -> dict[str, Any]:
    """The counters a worker printed on its way out (batch sizes, commit times)."""
    with contextlib.suppress(OSError, ValueError):
        for line in reversed(path.read_text(errors="replace").splitlines()):
            if line.startswith(STATS_MARK):
                return dict(json.loads(line[len(STATS_MARK) :]))
    return {}


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def wait_ready(
    proc: asyncio.subprocess.Process,
    producer: AIOKafkaProducer,
    receiver: Receiver,
    src: str,
    log_path: Path,
) -> float:
    """Probe A until one probe comes back on B: the worker owns its partitions and runs."""
    started = time.monotonic()
    seq = 0
    while receiver.count("p") == 0:
        if proc.returncode is not None:
            raise RuntimeError(f"worker exited ({proc.returncode}):\n{log_tail(log_path)}")
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise TimeoutError(f"worker not ready in {READY_TIMEOUT_S}s:\n{log_tail(log_path)}")
        await producer.send(src, payload(receiver.tag, "p", seq, time.monotonic_ns(), ""))
        seq += 1
        await receiver.wait_for("p", 1, PROBE_EVERY_S)
    return time.monotonic() - started


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = make_admin(kafka(bootstrap), client_id="hopbench-admin")
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic of this run, including any a runtime created on its own."""
    admin = make_admin(kafka(bootstrap), client_id="hopbench-admin")
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


async def bench_runtime(
    name: str, variant: Variant, opts: argparse.Namespace, rate: float, messages: int, run: int
) -> HopResult:
    """Fresh topics, a fresh worker, probe → idle → warm-up → measured run, then clean up."""
    tag = f"hopbench-{name}-{uuid.uuid4().hex[:8]}"
    src, dst, group = f"{tag}-a", f"{tag}-b", f"{tag}-g"
    log_path = Path(tempfile.gettempdir()) / f"{tag}.log"
    pad = "x" * opts.payload_bytes
    await create_topics(opts.bootstrap, [src, dst], opts.partitions)
    producer = make_producer(kafka(opts.bootstrap), client_id=f"{tag}-driver")
    consumer = AIOKafkaConsumer(
        **kafka(opts.bootstrap).client_kwargs(),
        client_id=f"{tag}-reader",
        enable_auto_commit=False,
        isolation_level="read_committed",  # as the next stage reads
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    proc: asyncio.subprocess.Process | None = None
    reader: asyncio.Task[None] | None = None
    try:
        await producer.start()
        await consumer.start()
        consumer.assign([TopicPartition(dst, p) for p in range(opts.partitions)])
        receiver = Receiver(consumer, tag)
        reader = asyncio.create_task(receiver.run())
        proc = await spawn_worker(variant, opts, rate, messages, (src, dst, group), log_path)
        ready_s = await wait_ready(proc, producer, receiver, src, log_path)
        print(f"[{name} @{rate:g}/s] worker ready after {ready_s:.1f}s; log {log_path}",
              file=sys.stderr)  # fmt: skip

        idle0, idle_wall0 = cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(opts.idle_s)
        idle_cpu = (cpu_seconds(proc.pid) - idle0) / (time.monotonic() - idle_wall0)

        await send_open_loop(producer, src, tag, "w", opts.warmup, rate, pad, opts.keys)
        if not await receiver.wait_for("w", opts.warmup, DRAIN_GRACE_S):
            raise TimeoutError(f"warm-up: {receiver.count('w')}/{opts.warmup} came back")
        await asyncio.sleep(0.5)  # let the warm-up's commits settle before the CPU baseline

        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        sent = await send_open_loop(producer, src, tag, "m", messages, rate, pad, opts.keys)
        complete = await receiver.wait_for("m", messages, DRAIN_GRACE_S)
        cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
        rss = rss_mib(proc.pid)
        if not complete:
            print(f"[{name}] only {receiver.count('m')}/{messages} arrived", file=sys.stderr)
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if proc is not None:
            await stop_worker(proc)
        await consumer.stop()
        await producer.stop()
        deleted = await delete_topics(opts.bootstrap, tag)
        print(f"[{name}] deleted topics {deleted}", file=sys.stderr)

    arrivals = receiver.arrivals.get("m", {})
    lat = sorted((recv - sent_ns) / 1e6 for sent_ns, recv in arrivals.values())
    last_recv = max((recv for _, recv in arrivals.values()), default=sent.first_ns)
    n = len(lat)
    return HopResult(
        runtime=name,
        rate=rate,
        run=run,
        messages=messages,
        received=n,
        duplicates=receiver.duplicates.get("m", 0),
        p50_ms=percentile(lat, 50),
        p90_ms=percentile(lat, 90),
        p99_ms=percentile(lat, 99),
        max_ms=lat[-1] if lat else float("nan"),
        mean_ms=sum(lat) / n if n else float("nan"),
        send_rate=(sent.sent - 1) / max((sent.last_ns - sent.first_ns) / 1e9, 1e-9),
        recv_rate=n / max((last_recv - sent.first_ns) / 1e9, 1e-9),
        cpu_s_per_1k=(cpu1 - cpu0) / messages * 1000,
        cpu_pct=100 * (cpu1 - cpu0) / (wall1 - wall0),
        idle_cpu_ms_per_s=idle_cpu * 1000,
        rss_mib=rss,
        sender_lag_max_ms=sent.lag_max_ms,
        worker_stats=worker_stats(log_path),
    )


def print_table(results: list[HopResult]) -> None:
    head = (
        f"{'runtime':<21} {'rate':>5} {'run':>3} {'recv':>11} {'p50 ms':>7} {'p90 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'recv/s':>7} {'cpu s/1k':>8} {'cpu %':>6} "
        f"{'idle ms/s':>9} {'rss MiB':>7} {'batch':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in sorted(results, key=lambda r: (r.rate, r.runtime, r.run)):
        print(
            f"{r.runtime:<21} {r.rate:>5g} {r.run:>3} {f'{r.received}/{r.messages}':>11} "
            f"{r.p50_ms:>7.2f} {r.p90_ms:>7.2f} {r.p99_ms:>7.2f} {r.max_ms:>7.2f} "
            f"{r.recv_rate:>7.1f} {r.cpu_s_per_1k:>8.3f} {r.cpu_pct:>6.1f} "
            f"{r.idle_cpu_ms_per_s:>9.1f} {r.rss_mib:>7.1f} "
            f"{r.worker_stats.get('mean_batch', float('nan')):>6}"
        )


async def drive(opts: argparse.Namespace) -> int:
    results: list[HopResult] = []
    for run in range(1, opts.repeat + 1):
        for rate, messages in zip(opts.rates, opts.message_counts, strict=True):
            names = opts.runtimes if run % 2 else list(reversed(opts.runtimes))
            for name in names:  # alternate the order between runs: drift hits all alike
                results.append(
                    await bench_runtime(name, opts.variants[name], opts, rate, messages, run)
                )
                if opts.json_out:
                    dump(opts, results)
    print_table(results)
    print(json.dumps(summary(opts, results)))
    return 0 if all(r.received == r.messages for r in results) else 1


def summary(opts: argparse.Namespace, results: list[HopResult]) -> dict[str, Any]:
    return {
        "bench": "hop_latency",
        "bootstrap": opts.bootstrap,
        "rates": opts.rates,
        "messages": opts.message_counts,
        "warmup": opts.warmup,
        "partitions": opts.partitions,
        "payload_bytes": opts.payload_bytes,
        "keys": opts.keys,
        "variants": {n: asdict(opts.variants[n]) for n in opts.runtimes},
        "results": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(r).items()}
            for r in results
        ],
    }


def dump(opts: argparse.Namespace, results: list[HopResult]) -> None:
    """Results so far, after every measurement: a long run that dies keeps what it had."""
    Path(opts.json_out).write_text(json.dumps(summary(opts, results), indent=1))


def numbers(text: str, kind: Callable[[str], Any]) -> list[Any]:
    return [kind(part) for part in text.split(",") if part]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    listing = "\n".join(
        f"  {n:<21} {v.family}: {v.note or {**v.consumer, **v.producer}}"
        for n, v in VARIANTS.items()
    )
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"runtimes:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--runtime",
        default=DEFAULT_RUNTIMES,
        help="comma-separated runtimes (below, or --variant names), or 'all'",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        type=parse_variant,
        metavar="NAME=FAMILY[,c.KEY=V][,p.KEY=V]",
        help="a runtime of one's own: aiokafka kwargs or librdkafka properties "
        "for the consumer (c.) and producer (p.), over the mesh's",
    )
    p.add_argument("--rate", default="200", help="offered records per second, comma-separated")
    p.add_argument(
        "--messages",
        default="2000",
        help="records measured per runtime: one count, or one per rate",
    )
    p.add_argument("--repeat", type=int, default=1, help="measure every pair this many times")
    p.add_argument("--warmup", type=int, default=200, help="uncounted records sent first")
    p.add_argument("--idle-s", type=float, default=3.0, help="idle CPU window before warm-up")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument(
        "--keys",
        type=int,
        default=64,
        help="distinct record keys (sessions); 1 puts every record on one partition",
    )
    p.add_argument("--payload-bytes", type=int, default=200, help="padding in each record")
    p.add_argument("--bootstrap", default=None, help="default: KAFKA_BOOTSTRAP_SERVERS")
    p.add_argument("--json-out", default=None, help="also write the results here, as they come")
    p.add_argument(
        "--no-faust-idempotent",
        dest="faust_idempotent",
        action="store_false",
        help="leave faust's producer as shipped (acks=all, not idempotent)",
    )
    p.add_argument(
        "--faust-fetch-max-wait-ms",
        type=int,
        default=None,
        help="override the 1500 ms faust hardcodes for its consumer (default: as shipped)",
    )
    # Internal: the hop worker subprocess.
    p.add_argument("--worker-spec", help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--dst", help=argparse.SUPPRESS)
    p.add_argument("--group", help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.variants = {**VARIANTS, **dict(opts.variant)}
    opts.runtimes = list(VARIANTS) if opts.runtime == "all" else numbers(opts.runtime, str)
    if opts.runtime == "both":  # the first bench's spelling
        opts.runtimes = DEFAULT_RUNTIMES.split(",")
    unknown = [n for n in opts.runtimes if n not in opts.variants]
    if unknown:
        p.error(f"unknown runtime(s) {unknown}; see the list below --help")
    opts.rates = numbers(opts.rate, float)
    opts.message_counts = numbers(opts.messages, int)
    if len(opts.message_counts) == 1:
        opts.message_counts *= len(opts.rates)
    if len(opts.message_counts) != len(opts.rates):
        p.error("--messages takes one count, or one per --rate")
    if min(opts.message_counts) < 1 or min(opts.rates) <= 0 or opts.warmup < 1:
        p.error("--messages and --warmup must be >= 1 and --rate > 0")
    if opts.partitions < 1 or opts.repeat < 1 or opts.keys < 1:
        p.error("--partitions, --keys and --repeat must be >= 1")
    opts.bootstrap = opts.bootstrap or default_bootstrap()
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.worker_spec:
        run_worker(opts)
        return 0
    return asyncio.run(drive(opts))


if __name__ == "__main__":
    sys.exit(main())
