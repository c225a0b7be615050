"""One Kafka hop, measured: a plain aiokafka stage loop against a faust-streaming agent.

Why: every stage of the mesh is a consume → produce → commit hop, so the latency and CPU
of one hop bound what the whole pipeline can do. This measures that hop on the real
broker for the two ways we could write it, with the same driver and the same clock.

The driver (this process) produces timestamped records to a fresh topic A at a steady
open-loop rate and reads topic B; the hop worker runs as a separate subprocess (so its
CPU can be read from /proc) and forwards A → B:

- ``aiokafka``: the producer and consumer of ``gateway_runtime.kafka`` (acks=all,
  idempotent, linger 1 ms, fetch_max_wait 50 ms), produce the polled batch, await the
  acks, then commit — the order the stage loop keeps.
- ``faust``: a faust-streaming app (its bundled aiokafka driver) whose one agent on A
  sends every value to B; memory store, no web server, no tables.

Latency = receive time on B - send time in the payload (one process, one monotonic clock).

    python -m bench.hop_latency --messages 2000 --rate 200 --runtime both
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic

from gateway_runtime.kafka import KafkaConnection, make_admin, make_consumer, make_producer
from gateway_runtime.kafka_credentials import ADMIN

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = ("aiokafka", "faust")
READY_TIMEOUT_S = 120.0  # a faust worker's first rebalance can take tens of seconds
DRAIN_GRACE_S = 30.0  # how long after the last send the tail may still take
STOP_GRACE_S = 20.0  # how long a worker gets to leave its group before it is killed
PROBE_EVERY_S = 0.5
STATS_MARK = "HOPSTATS "  # a worker's own counters, one log line, read back by the driver


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


async def aiokafka_hop(args: argparse.Namespace) -> None:
    """Consume A, produce the batch to B, await its acks, then commit it (at-least-once)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    start_watchdog(args.max_seconds, lambda: loop.call_soon_threadsafe(stop.set))
    login = kafka(args.bootstrap)
    consumer = make_consumer(login, group_id=args.group, client_id=f"{args.group}-c")
    producer = make_producer(login, client_id=f"{args.group}-p")
    commit_ms: list[float] = []  # how long each synchronous commit held the loop
    batch_sizes: list[int] = []
    await producer.start()
    await consumer.start()
    try:
        consumer.subscribe([args.src])
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            if not batches:
                continue
            acks = [
                await producer.send(args.dst, value=record.value, key=record.key)
                for records in batches.values()
                for record in records
            ]
            await asyncio.gather(*acks)
            committing = time.perf_counter()
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
            commit_ms.append((time.perf_counter() - committing) * 1000)
            batch_sizes.append(len(acks))
    finally:
        await consumer.stop()
        await producer.stop()
        commit_ms.sort()
        stats = {
            "batches": len(batch_sizes),
            "mean_batch": round(sum(batch_sizes) / max(len(batch_sizes), 1), 2),
            "commit_p50_ms": round(percentile(commit_ms, 50), 2),
            "commit_p99_ms": round(percentile(commit_ms, 99), 2),
        }
        print(f"{STATS_MARK}{json.dumps(stats)}", flush=True)


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
        shipped = faust_aiokafka.aiokafka.AIOKafkaConsumer

        class ShorterWaitConsumer(shipped):  # type: ignore[misc, valid-type]
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, **{**kw, "fetch_max_wait_ms": wait_ms})

        faust_aiokafka.aiokafka.AIOKafkaConsumer = ShorterWaitConsumer  # type: ignore[misc]

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
    if args.worker == "aiokafka":
        asyncio.run(aiokafka_hop(args))
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
    rss_mib: float
    sender_lag_max_ms: float
    worker_stats: dict[str, Any]


def payload(tag: str, phase: str, seq: int, stamp_ns: int, pad: str) -> bytes:
    return json.dumps({"r": tag, "ph": phase, "i": seq, "t": stamp_ns, "pad": pad}).encode()


async def send_open_loop(
    producer: AIOKafkaProducer, topic: str, tag: str, phase: str, n: int, rate: float, pad: str
) -> SendStats:
    """Send n records on a fixed schedule: a slow hop never slows the offered load."""
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
        acks.append(await producer.send(topic, payload(tag, phase, seq, now, pad)))
    await asyncio.wait_for(asyncio.gather(*acks), DRAIN_GRACE_S)
    return SendStats(n, first, last, lag_max / 1e6)


async def spawn_worker(
    runtime: str, opts: argparse.Namespace, src: str, dst: str, group: str, log_path: Path
) -> asyncio.subprocess.Process:
    budget = READY_TIMEOUT_S + (opts.warmup + opts.messages) / opts.rate + 4 * DRAIN_GRACE_S
    cmd = [
        sys.executable, "-m", "bench.hop_latency", "--worker", runtime,
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
    """The counters a worker printed on its way out (the aiokafka worker's commit times)."""
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


async def bench_runtime(runtime: str, opts: argparse.Namespace) -> HopResult:
    """Fresh topics, a fresh worker, probe → warm-up → measured run, then clean up."""
    tag = f"hopbench-{runtime}-{uuid.uuid4().hex[:8]}"
    src, dst, group = f"{tag}-a", f"{tag}-b", f"{tag}-g"
    log_path = Path(tempfile.gettempdir()) / f"{tag}.log"
    pad = "x" * opts.payload_bytes
    await create_topics(opts.bootstrap, [src, dst], opts.partitions)
    producer = make_producer(kafka(opts.bootstrap), client_id=f"{tag}-driver")
    consumer = AIOKafkaConsumer(
        **kafka(opts.bootstrap).client_kwargs(),
        client_id=f"{tag}-reader",
        enable_auto_commit=False,
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
        proc = await spawn_worker(runtime, opts, src, dst, group, log_path)
        ready_s = await wait_ready(proc, producer, receiver, src, log_path)
        print(f"[{runtime}] worker ready after {ready_s:.1f}s; log {log_path}", file=sys.stderr)

        await send_open_loop(producer, src, tag, "w", opts.warmup, opts.rate, pad)
        if not await receiver.wait_for("w", opts.warmup, DRAIN_GRACE_S):
            raise TimeoutError(f"warm-up: {receiver.count('w')}/{opts.warmup} came back")
        await asyncio.sleep(0.5)  # let the warm-up's commits settle before the CPU baseline

        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        sent = await send_open_loop(producer, src, tag, "m", opts.messages, opts.rate, pad)
        complete = await receiver.wait_for("m", opts.messages, DRAIN_GRACE_S)
        cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
        rss = rss_mib(proc.pid)
        if not complete:
            print(
                f"[{runtime}] only {receiver.count('m')}/{opts.messages} arrived", file=sys.stderr
            )
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
        print(f"[{runtime}] deleted topics {deleted}", file=sys.stderr)

    arrivals = receiver.arrivals.get("m", {})
    lat = sorted((recv - sent_ns) / 1e6 for sent_ns, recv in arrivals.values())
    last_recv = max((recv for _, recv in arrivals.values()), default=sent.first_ns)
    n = len(lat)
    return HopResult(
        runtime=runtime,
        messages=opts.messages,
        received=n,
        duplicates=receiver.duplicates.get("m", 0),
        p50_ms=percentile(lat, 50),
        p90_ms=percentile(lat, 90),
        p99_ms=percentile(lat, 99),
        max_ms=lat[-1] if lat else float("nan"),
        mean_ms=sum(lat) / n if n else float("nan"),
        send_rate=(sent.sent - 1) / max((sent.last_ns - sent.first_ns) / 1e9, 1e-9),
        recv_rate=n / max((last_recv - sent.first_ns) / 1e9, 1e-9),
        cpu_s_per_1k=(cpu1 - cpu0) / opts.messages * 1000,
        cpu_pct=100 * (cpu1 - cpu0) / (wall1 - wall0),
        rss_mib=rss,
        sender_lag_max_ms=sent.lag_max_ms,
        worker_stats=worker_stats(log_path),
    )


def print_table(results: list[HopResult]) -> None:
    head = (
        f"{'runtime':<9} {'recv':>11} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'send/s':>7} {'recv/s':>7} {'cpu s/1k':>8} {'cpu %':>6} {'rss MiB':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.runtime:<9} {f'{r.received}/{r.messages}':>11} {r.p50_ms:>7.2f} {r.p90_ms:>7.2f} "
            f"{r.p99_ms:>7.2f} {r.max_ms:>7.2f} {r.send_rate:>7.1f} {r.recv_rate:>7.1f} "
            f"{r.cpu_s_per_1k:>8.3f} {r.cpu_pct:>6.1f} {r.rss_mib:>7.1f}"
        )


async def drive(opts: argparse.Namespace) -> int:
    runtimes = RUNTIMES if opts.runtime == "both" else (opts.runtime,)
    results = [await bench_runtime(runtime, opts) for runtime in runtimes]
    print_table(results)
    summary = {
        "bench": "hop_latency",
        "bootstrap": opts.bootstrap,
        "messages": opts.messages,
        "rate": opts.rate,
        "warmup": opts.warmup,
        "partitions": opts.partitions,
        "payload_bytes": opts.payload_bytes,
        "results": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(r).items()}
            for r in results
        ],
    }
    print(json.dumps(summary))
    return 0 if all(r.received == r.messages for r in results) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000, help="measured records per runtime")
    p.add_argument("--rate", type=float, default=200.0, help="offered records per second")
    p.add_argument("--runtime", choices=[*RUNTIMES, "both"], default="both")
    p.add_argument("--warmup", type=int, default=200, help="uncounted records sent first")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--payload-bytes", type=int, default=200, help="padding in each record")
    p.add_argument("--bootstrap", default=None, help="default: KAFKA_BOOTSTRAP_SERVERS")
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
    p.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--dst", help=argparse.SUPPRESS)
    p.add_argument("--group", help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.messages < 1 or opts.rate <= 0 or opts.warmup < 1 or opts.partitions < 1:
        p.error("--messages, --warmup and --partitions must be >= 1 and --rate > 0")
    opts.bootstrap = opts.bootstrap or default_bootstrap()
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.worker:
        run_worker(opts)
        return 0
    return asyncio.run(drive(opts))


if __name__ == "__main__":
    sys.exit(main())
