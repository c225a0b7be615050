"""`python -m bench.sse_fanout`: what an idle SSE client costs the ingress, and whether fan-out
still delivers every event with thousands of them connected.

The ingress streams a session's events from ONE Redis pattern subscription per process
(ingress/hub.py), so the cost of a client is what the process keeps for it: the request's
tasks, its hub follower, the generator frames, uvicorn's protocol object, the socket. This
bench measures exactly that, per level of N idle clients spread over M sessions:

* ingress memory with 0 clients (after a small warm-up, so lazy imports, pool connections
  and caches are not charged to the clients), at N/2 and at N: VmRSS, and PSS/USS from
  smaps_rollup; bytes per client = (RSS_N - RSS_0) / N, and the marginal slope between
  N/2 and N (free of any one-off cost);
* that the Redis side did not grow: PUBSUB NUMPAT and the pattern-subscribed connections
  are the same with N clients as with none;
* the ingress CPU while the N clients sit idle (keep-alive comments every SSE_KEEPALIVE_S);
* correctness under load: one turn posted to a few sessions, every client of those sessions
  must receive `assistant.final` (and no other client anything), with the publish-to-
  receipt latency (the event's `ts` is the worker's publish time) and the receipt spread
  across the clients of a session.

The clients are asyncio protocols (no task, no StreamReader per connection), so 20k of them
cost the bench little; each level uses source addresses of its own (127.0.0.2, ...), so
the TIME_WAIT sockets of a previous level never exhaust a source's ~28k ephemeral ports.
The ingress is restarted before each level, so every level starts from a fresh heap.

    python -m bench.sse_fanout                      # 1k, 10k, 20k clients (capped by fds)
    python -m bench.sse_fanout --clients 10000 --sessions 100
    python -m bench.sse_fanout --profile 2000       # tracemalloc: where a client's bytes go
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import ipaddress
import itertools
import json
import logging
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
from redis.asyncio import Redis

from bench.load import Client, pct_dict
from bench.run import machine_info, run_bench, tear_down
from gateway_runtime.settings import CommonSettings
from testbed.mesh import ROOT, Mesh, mesh_env, provision, start_fake_upstream, start_mesh
from testbed.sandbox import Sandbox

log = logging.getLogger("bench.sse_fanout")

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
REPORTS = ROOT / "bench" / "reports"
WANT_NOFILE = 65536
FD_MARGIN = 1000  # descriptors the ingress and the bench need besides the SSE sockets
PER_SOURCE = 10_000  # clients per source address, well under its ~28k ephemeral ports
WARMUP_CLIENTS = 100
FINAL = b"assistant.final"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux


# ---- limits ---------------------------------------------------------------------------


def raise_nofile(want: int = WANT_NOFILE) -> tuple[int, int]:
    """Raise this process's open-files limit as far as allowed; children inherit it.

    Raising the hard limit needs CAP_SYS_RESOURCE, which a container may not grant: then
    the soft limit goes up to the hard one, and that caps how many clients a level can have.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
        return resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ---- /proc readers --------------------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int]:
    """RSS (status), and PSS / USS (private pages) from smaps_rollup, in bytes.

    RSS counts shared library pages too; USS is what the process alone holds and would free
    on exit, the fairest measure of what the clients cost.
    """
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name.lower()] = int(value.split()[0]) * 1024
    with contextlib.suppress(OSError):
        rollup: dict[str, int] = {}
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    rollup[parts[0].rstrip(":")] = int(parts[1]) * 1024
        out["pss"] = rollup.get("Pss", 0)
        out["uss"] = rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
    return out


def proc_cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        rest = f.read().rsplit(b")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # utime + stime


def ephemeral_ports() -> list[int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        return [int(x) for x in f.read().split()]


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_sockstat() -> dict[str, int]:
    """Kernel-wide TCP sockets in use and their buffer memory: socket memory is the kernel's,
    not in any process's RSS, but the clients cost it all the same."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()[1:]
                stats = dict(zip(fields[::2], (int(v) for v in fields[1::2]), strict=False))
                return {"inuse": stats.get("inuse", 0), "mem_bytes": stats.get("mem", 0) * PAGE}
    return {}


# ---- the clients ----------------------------------------------------------------------


class SseClient(asyncio.Protocol):
    """One idle SSE connection: no task and no StreamReader, just counters.

    The body is split on the blank line that ends every SSE block; the chunked framing
    lines ride along in the blocks and are ignored (each server write is one chunk that
    holds whole blocks: one event, several, or a keep-alive; and JSON data never holds a
    raw blank line).
    """

    __slots__ = (
        "_buf",
        "_head",
        "_request",
        "error",
        "events",
        "final_at",
        "final_mono",
        "final_ts_ms",
        "keepalives",
        "opened",
        "session",
        "transport",
    )

    def __init__(self, request: bytes, session: int, opened: asyncio.Future[None]) -> None:
        self._request = request
        self._head: bytes | None = b""
        self._buf = b""
        self.session = session
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.keepalives = 0
        self.events = 0
        self.error: str | None = None
        self.final_at: float | None = None  # time.time() of receipt
        self.final_mono: float | None = None
        self.final_ts_ms: int | None = None  # the publisher's timestamp

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"closed:{type(exc).__name__ if exc else 'eof'}")
        self.transport = None

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(error))

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > 16384:
                    self._fail("head_too_long")
                return
            head, data = self._head[:end].lower(), self._head[end + 4 :]
            self._head = None
            status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"?"
            if status != b"200":
                self._fail(f"http_{status.decode(errors='replace')}")
                return
            if b"content-type: text/event-stream" not in head:
                self._fail("not_event_stream")
                return
        self._buf += data
        while (cut := self._buf.find(b"\n\n")) >= 0:
            block, self._buf = self._buf[:cut], self._buf[cut + 2 :]
            self._block(block)

    def _block(self, block: bytes) -> None:
        if b"retry:" in block:
            if not self.opened.done():
                self.opened.set_result(None)
            return
        if b": keep-alive" in block:
            self.keepalives += 1
            return
        start = block.find(b"\nevent: ")
        if start < 0:
            return
        self.events += 1
        kind = block[start + 8 : block.find(b"\n", start + 8)]
        if kind == FINAL and self.final_at is None:
            self.final_at = time.time()
            self.final_mono = time.perf_counter()
            ts = block.find(b'"ts":')
            if ts >= 0:
                digits = bytes(itertools.takewhile(lambda c: 48 <= c <= 57, block[ts + 5 :]))
                self.final_ts_ms = int(digits) if digits else None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def client_socket(source: str) -> socket.socket:
    """A non-blocking TCP socket bound to `source` that costs the machine no port of its own.

    Everything runs on loopback, so the bench's sockets share the ephemeral port range with
    the ingress's own connections (Redis, Postgres, Kafka). A plain bind(port 0) reserves a
    port for every destination, and TIME_WAIT keeps it for 60 s: 20k clients then starve the
    ingress's reconnects (EADDRNOTAVAIL). IP_BIND_ADDRESS_NO_PORT picks the port at connect
    time, unique per 4-tuple only; SO_LINGER 0 closes with a reset, leaving no TIME_WAIT.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.bind((source, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class SourceAddresses:
    """Fresh loopback source addresses (127.0.0.2, ...), never reused within a run."""

    def __init__(self) -> None:
        self._next = ipaddress.IPv4Address("127.0.0.2")

    def take(self, count: int) -> list[str]:
        out = []
        for _ in range(count):
            out.append(str(self._next))
            self._next += 1
        return out


@dataclass
class ClientSet:
    """The open clients of a level, by session index."""

    clients: list[SseClient] = field(default_factory=list)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    connect_s: float = 0.0

    def close(self) -> None:
        for c in self.clients:
            c.close()


async def open_clients(
    into: ClientSet,
    count: int,
    *,
    host: str,
    port: int,
    session_ids: list[str],
    sources: list[str],
    first: int,
    concurrency: int,
    timeout_s: float,
) -> None:
    """Open `count` clients (numbered from `first`), `concurrency` connecting at once, each
    until its `retry:` preamble; failures are counted, not raised, and the whole is bounded.
    """
    loop = asyncio.get_running_loop()
    numbers = iter(range(first, first + count))
    began = time.perf_counter()
    deadline = began + timeout_s

    async def one(i: int) -> None:
        session = i % len(session_ids)
        request = (
            f"GET /v1/session/{session_ids[session]}/events HTTP/1.1\r\n"
            f"host: {host}:{port}\r\naccept: text/event-stream\r\n\r\n"
        ).encode()
        opened: asyncio.Future[None] = loop.create_future()
        client = SseClient(request, session, opened)
        sock = client_socket(sources[i // PER_SOURCE])
        try:
            async with asyncio.timeout(10):
                await loop.sock_connect(sock, (host, port))
                await loop.create_connection(lambda: client, sock=sock)
                await opened
        except (OSError, TimeoutError) as exc:
            into.failures[client.error or type(exc).__name__] += 1
            client.close()
            sock.close()
            return
        into.clients.append(client)

    async def worker() -> None:
        for i in numbers:
            if time.perf_counter() > deadline:
                into.failures["bench_deadline"] += 1
                continue
            await one(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    into.connect_s += time.perf_counter() - began


# ---- the ingress ----------------------------------------------------------------------


def start_ingress(mesh: Mesh, trace_dir: Path | None) -> subprocess.Popen[bytes]:
    """(Re)start the ingress with the mesh's env: plain, or under tracemalloc (profile)."""
    if "ingress" in mesh.processes:
        mesh.stop("ingress")
    if trace_dir is None:
        return mesh.start("ingress")
    log_file = open(mesh.log_dir / "ingress.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.sse_fanout", "--traced-ingress", str(trace_dir)],
        cwd=ROOT,
        env=mesh.env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    mesh.processes["ingress"] = proc
    return proc


def traced_ingress(out: Path) -> None:
    """The ingress under tracemalloc; SIGUSR1 dumps a snapshot and a gc type census.

    Runs in the ingress process (`--traced-ingress`), so the bench can diff what the
    process holds before and after N clients, without changing the ingress's code.
    """
    tracemalloc.start(16)
    seq = itertools.count()

    def dump(signum: int, frame: object) -> None:
        gc.collect()
        n = next(seq)
        tracemalloc.take_snapshot().dump(str(out / f"snap{n}.pickle"))
        census = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        (out / f"types{n}.json").write_text(json.dumps(dict(census)))
        (out / f"done{n}").touch()

    signal.signal(signal.SIGUSR1, dump)
    from ingress.__main__ import main as ingress_main

    ingress_main()


async def traced_dump(pid: int, out: Path, n: int, timeout_s: float = 120) -> None:
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while not (out / f"done{n}").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the traced ingress wrote no snapshot")
        await asyncio.sleep(0.2)


def profile_diff(out: Path, clients: int, top: int = 25) -> dict[str, Any]:
    """Per-client bytes and objects by allocation site and by type, snapshot 1 vs 0."""
    before = tracemalloc.Snapshot.load(str(out / "snap0.pickle"))
    after = tracemalloc.Snapshot.load(str(out / "snap1.pickle"))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<*")]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    sites = []
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        sites.append(
            {
                "where": f"{_short(frame.filename)}:{frame.lineno}",
                "bytes_per_client": round(stat.size_diff / clients, 1),
                "blocks_per_client": round(stat.count_diff / clients, 2),
            }
        )
    files = [
        {
            "file": _short(stat.traceback[0].filename),
            "bytes_per_client": round(stat.size_diff / clients, 1),
        }
        for stat in after.compare_to(before, "filename")[:15]
    ]
    t0 = json.loads((out / "types0.json").read_text())
    t1 = json.loads((out / "types1.json").read_text())
    types = sorted(((k, v - t0.get(k, 0)) for k, v in t1.items()), key=lambda kv: -kv[1])
    return {
        "clients": clients,
        "traced_bytes_per_client": round(total / clients, 1),
        "top_sites": sites,
        "top_files": files,
        "gc_objects_per_client": {k: round(d / clients, 2) for k, d in types[:25] if d > 0},
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/lib/python3" in path:  # the standard library: "asyncio/locks.py"
        return path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return path


async def health(http: httpx.AsyncClient, base_url: str) -> dict[str, Any]:
    r = await http.get(base_url + "/v1/health", timeout=30)
    return r.json()  # type: ignore[no-any-return]


async def wait_fanout_clients(
    http: httpx.AsyncClient, base_url: str, want: int, timeout_s: float = 60
) -> tuple[int, float]:
    """Poll the ingress's own count (components.fanout.clients) until it equals `want`."""
    began = time.monotonic()
    seen = -1
    while time.monotonic() - began < timeout_s:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            seen = int((await health(http, base_url))["components"]["fanout"]["clients"])
            if seen == want:
                break
        await asyncio.sleep(0.5)
    return seen, time.monotonic() - began


async def redis_subscriptions(redis: Redis) -> dict[str, int]:
    """Pattern subscriptions Redis-wide: unique patterns, and connections holding any."""
    numpat = int(await redis.execute_command("PUBSUB", "NUMPAT"))
    clients = await redis.client_list()
    return {
        "numpat": numpat,
        "psub_connections": sum(1 for c in clients if int(c.get("psub", 0)) > 0),
        "connections": len(clients),
    }


# ---- one level ------------------------------------------------------------------------


@dataclass
class Run:
    """What every level shares: the mesh, its clients and the options."""

    mesh: Mesh
    http: httpx.AsyncClient
    redis: Redis
    poster: Client
    sources: SourceAddresses
    prefix: str
    args: argparse.Namespace
    turn_ids: list[str] = field(default_factory=list)
    open_sets: list[ClientSet] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.mesh.env["GATEWAY_PORT"])

    async def connect(
        self, into: ClientSet, count: int, session_ids: list[str], sources: list[str], first: int
    ) -> None:
        await open_clients(
            into,
            count,
            host="127.0.0.1",
            port=self.port,
            session_ids=session_ids,
            sources=sources,
            first=first,
            concurrency=self.args.concurrency,
            timeout_s=max(60.0, count / 50),
        )

    async def post_turn(self, session_id: str) -> tuple[int, float]:
        body = json.dumps({"session_id": session_id, "message": "hello fan-out"}).encode()
        t0 = time.time()
        status, data = await self.poster.request("POST", "/v1/session/message", body)
        if status // 100 == 2:
            self.turn_ids.append(str(json.loads(data)["event_id"]))
        return status, t0


class OwnPauses:
    """The bench's own garbage-collection pauses while it measures: a pause delays the
    receipt of whatever arrived meanwhile, which would read as fan-out latency."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.count = 0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.ms += (time.perf_counter() - self._started) * 1000

    def __enter__(self) -> OwnPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


async def settle_memory(pid: int, seconds: float) -> dict[str, int]:
    gc.collect()  # the bench's own garbage; the ingress is left to itself
    await asyncio.sleep(seconds)
    return proc_memory(pid)


async def run_level(run: Run, n: int, level: int, trace_dir: Path | None) -> dict[str, Any]:
    args = run.args
    mesh = run.mesh
    out: dict[str, Any] = {"clients": n, "sessions": args.sessions}
    proc = start_ingress(mesh, trace_dir)
    await mesh.wait_healthy(timeout=300 if trace_dir else 60)  # tracemalloc: slow imports
    pid = proc.pid
    session_ids = [f"{run.prefix}-l{level}-s{i}" for i in range(args.sessions)]
    sources = run.sources.take(-(-n // PER_SOURCE) + 1)
    warm_sources, sources = sources[:1], sources[1:]

    # Warm-up: the first requests import lazily, fill caches and open pool connections.
    warm = ClientSet()
    run.open_sets.append(warm)
    await run.connect(warm, WARMUP_CLIENTS, [f"{run.prefix}-l{level}-warm"], warm_sources, 0)
    warm.close()
    await wait_fanout_clients(run.http, mesh.base_url, 0)
    await health(run.http, mesh.base_url)

    mem0 = await settle_memory(pid, args.settle_s)
    sock0 = tcp_sockstat()
    fds0 = proc_fds(pid)
    redis0 = await redis_subscriptions(run.redis)
    if trace_dir is not None:
        await traced_dump(pid, trace_dir, 0)

    clients = ClientSet()
    run.open_sets.append(clients)
    half = n // 2
    await run.connect(clients, half, session_ids, sources, 0)
    seen_half, _ = await wait_fanout_clients(run.http, mesh.base_url, len(clients.clients))
    mem_half = await settle_memory(pid, args.settle_s)
    await run.connect(clients, n - half, session_ids, sources, half)
    opened = len(clients.clients)
    seen, wait_s = await wait_fanout_clients(run.http, mesh.base_url, opened)
    mem1 = await settle_memory(pid, args.settle_s)
    # The clients live as long as the level: the bench's own collections skip them from
    # now on (at 19k clients a full one walked them for tens of ms, a receipt delayed).
    gc.freeze()
    sock1 = tcp_sockstat()
    fds1 = proc_fds(pid)
    redis1 = await redis_subscriptions(run.redis)
    if trace_dir is not None:
        await traced_dump(pid, trace_dir, 1)
        out["profile"] = profile_diff(trace_dir, opened)
    log.info(
        "%d clients open (%d failed) in %.1fs; ingress reports %d; RSS %.0f -> %.0f MiB",
        opened,
        sum(clients.failures.values()),
        clients.connect_s,
        seen,
        mem0["vmrss"] / 2**20,
        mem1["vmrss"] / 2**20,
    )
    out.update(
        opened=opened,
        failures=dict(clients.failures),
        connect_s=round(clients.connect_s, 2),
        connects_per_s=round(opened / clients.connect_s, 1) if clients.connect_s else None,
        ingress_reported=seen,
        ingress_reported_half=seen_half,
        ingress_count_wait_s=round(wait_s, 2),
        memory={"0": mem0, "half": mem_half, "n": mem1},
        bytes_per_client={
            k: round((mem1[k] - mem0[k]) / opened) for k in mem1 if k in mem0 and opened
        },
        marginal_bytes_per_client={
            k: round((mem1[k] - mem_half[k]) / (opened - half))
            for k in mem1
            if k in mem_half and opened > half
        },
        kernel_tcp={"before": sock0, "after": sock1},
        kernel_tcp_bytes_per_client=round((sock1["mem_bytes"] - sock0["mem_bytes"]) / opened)
        if opened and sock0
        else None,
        ingress_fds={"before": fds0, "after": fds1},
        redis={"before": redis0, "after": redis1},
        one_subscription=redis0["numpat"] == redis1["numpat"]
        and redis0["psub_connections"] == redis1["psub_connections"],
    )

    # Idle: nothing but keep-alive comments for idle_s.
    if args.idle_s > 0:
        ka0 = sum(c.keepalives for c in clients.clients)
        t0, ticks0, own0 = time.monotonic(), proc_cpu_ticks(pid), os.times()
        await asyncio.sleep(args.idle_s)
        wall = time.monotonic() - t0
        ticks1, own1 = proc_cpu_ticks(pid), os.times()
        keepalives = sum(c.keepalives for c in clients.clients) - ka0
        ingress_ms = (ticks1 - ticks0) * 1000 / CLK_TCK
        out["idle"] = {
            "seconds": round(wall, 1),
            "ingress_cpu_pct": round(ingress_ms / 10 / wall, 2),
            "ingress_cpu_ms": ingress_ms,
            "bench_cpu_pct": round(
                (own1.user + own1.system - own0.user - own0.system) * 100 / wall, 2
            ),
            "keepalives": keepalives,
            "keepalives_per_client": round(keepalives / opened, 2) if opened else 0,
            "ingress_us_per_keepalive": round(ingress_ms * 1000 / keepalives, 1)
            if keepalives
            else None,
        }
        log.info("idle %.0fs: ingress CPU %.2f%%", wall, out["idle"]["ingress_cpu_pct"])

    out["fanout"] = await fanout_check(run, clients, session_ids)
    log.info("fan-out: %s", {k: v for k, v in out["fanout"].items() if k != "per_session"})

    clients.close()
    gc.unfreeze()
    left, close_wait = await wait_fanout_clients(run.http, mesh.base_url, 0)
    out["after_close"] = {
        "ingress_reported": left,
        "wait_s": round(close_wait, 2),
        "memory": await settle_memory(pid, args.settle_s),
        "fds": proc_fds(pid),
    }
    return out


async def fanout_check(run: Run, clients: ClientSet, session_ids: list[str]) -> dict[str, Any]:
    """One turn to each of the first few sessions; every client of those sessions must see
    its `assistant.final`, and the clients of every other session nothing at all."""
    k = min(run.args.turn_sessions, len(session_ids))
    targets = set(range(k))
    events0 = {id(c): c.events for c in clients.clients}
    expect = [c for c in clients.clients if c.session in targets]
    with OwnPauses() as pauses:
        posted = await asyncio.gather(*(run.post_turn(session_ids[s]) for s in sorted(targets)))
        for _ in range(int(run.args.turn_timeout_s * 10)):
            if all(c.final_at is not None for c in expect):
                break
            await asyncio.sleep(0.1)
    statuses = [status for status, _ in posted]
    await asyncio.sleep(0.5)  # anything stray for the other sessions
    got = [c for c in expect if c.final_at is not None]
    latencies = [
        (c.final_at - c.final_ts_ms / 1000) * 1000
        for c in got
        if c.final_at is not None and c.final_ts_ms is not None
    ]
    per_session = []
    for s in sorted(targets):
        mine = [c for c in expect if c.session == s]
        times = [c.final_mono for c in mine if c.final_mono is not None]
        events = [c.events - events0[id(c)] for c in mine]
        per_session.append(
            {
                "session": session_ids[s],
                "clients": len(mine),
                "received_final": len(times),
                "spread_ms": round((max(times) - min(times)) * 1000, 2) if times else None,
                "events_min": min(events, default=0),
                "events_max": max(events, default=0),
            }
        )
    strays = sum(
        1 for c in clients.clients if c.session not in targets and c.events != events0[id(c)]
    )
    spreads = [p["spread_ms"] for p in per_session if p["spread_ms"] is not None]
    return {
        "turns": k,
        "post_statuses": statuses,
        "expected": len(expect),
        "received_final": len(got),
        "all_received": bool(expect)
        and len(got) == len(expect)
        and all(s == 202 for s in statuses),
        "events_consistent": all(p["events_min"] == p["events_max"] for p in per_session),
        "stray_clients": strays,
        "closed_clients": sum(1 for c in clients.clients if c.error),
        "publish_to_receipt_ms": pct_dict(latencies),
        "receipt_spread_ms_max": max(spreads, default=None),
        "bench_gc_pauses": {"count": pauses.count, "ms": round(pauses.ms, 1)},
        "per_session": per_session,
    }


# ---- report ---------------------------------------------------------------------------


def _mib(value: int | float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def render(report: dict[str, Any]) -> str:
    lines = [
        f"SSE fan-out bench  {report['machine']['date']}  commit "
        f"{report['machine']['git_commit'][:10]}  nproc {report['machine']['nproc']}",
        f"open-files limit {report['limits']['nofile']}  max clients/level "
        f"{report['limits']['max_clients']}  keep-alive {report['keepalive_s']} s",
        "",
        f"{'clients':>8} {'open':>6} {'fail':>5} {'conn/s':>7} {'RSS0':>7} {'RSSn':>7} "
        f"{'B/cl':>7} {'marg':>7} {'USS/cl':>7} {'krnl/cl':>7} {'idleCPU%':>8} "
        f"{'numpat':>7} {'final':>11} {'lat50':>6} {'lat99':>6} {'sprd':>6}",
    ]
    for r in report["levels"]:
        if "error" in r:
            lines.append(f"{r['clients']:>8}  FAILED: {r['error']}")
            continue
        f = r["fanout"]
        lat = f["publish_to_receipt_ms"]
        lines.append(
            f"{r['clients']:>8} {r['opened']:>6} {sum(r['failures'].values()):>5} "
            f"{r['connects_per_s'] or 0:>7.0f} {_mib(r['memory']['0']['vmrss']):>7} "
            f"{_mib(r['memory']['n']['vmrss']):>7} {r['bytes_per_client'].get('vmrss', 0):>7} "
            f"{r['marginal_bytes_per_client'].get('vmrss', 0):>7} "
            f"{r['bytes_per_client'].get('uss', 0):>7} {r['kernel_tcp_bytes_per_client'] or 0:>7} "
            f"{r.get('idle', {}).get('ingress_cpu_pct', float('nan')):>8.2f} "
            f"{r['redis']['before']['numpat']}->{r['redis']['after']['numpat']:<3} "
            f"{f['received_final']:>5}/{f['expected']:<5} "
            f"{lat.get('p50', float('nan')):>6.1f} {lat.get('p99', float('nan')):>6.1f} "
            f"{f['receipt_spread_ms_max'] or float('nan'):>6.1f}"
        )
    lines += [
        "",
        "B/cl = (RSS_N - RSS_0)/N; marg = the same between N/2 and N; USS/cl = private pages;"
        " krnl/cl = kernel TCP buffer memory (not in RSS); idleCPU% = ingress, one core = 100;"
        " numpat = Redis PUBSUB NUMPAT before->after; final = clients that got assistant.final"
        " / expected; lat = event publish -> client receipt ms; sprd = max receipt spread"
        " within a session ms",
    ]
    for r in report["levels"]:
        if "profile" in r:
            p = r["profile"]
            lines.append("")
            lines.append(
                f"tracemalloc, {p['clients']} clients: {p['traced_bytes_per_client']} "
                "traced bytes/client; top sites (bytes/client):"
            )
            for s in p["top_sites"][:15]:
                lines.append(
                    f"  {s['bytes_per_client']:>8} B {s['blocks_per_client']:>6}  {s['where']}"
                )
            lines.append(
                "  gc objects/client: "
                + ", ".join(f"{k} {v}" for k, v in list(p["gc_objects_per_client"].items())[:15])
            )
    lines.append(f"wall time {report['wall_s']:.0f} s")
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------


async def bench_main(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    nofile = raise_nofile()
    max_clients = nofile[0] - FD_MARGIN
    levels = [int(x) for x in args.clients.split(",")] if not args.profile else [args.profile]
    sandbox = await Sandbox.open("ssefan", CommonSettings())
    namespace = sandbox.namespace
    log_dir = sandbox.dir
    report: dict[str, Any] = {
        "machine": machine_info(),
        "namespace": namespace,
        "logs": str(log_dir),
        "limits": {
            "nofile": list(nofile),
            "max_clients": max_clients,
            "ephemeral_ports": ephemeral_ports(),
            "clients_per_source_address": PER_SOURCE,
        },
        "keepalive_s": args.keepalive_s,
        "options": {k: v for k, v in vars(args).items() if k != "traced_ingress"},
        "levels": [],
    }
    fake, fake_url = start_fake_upstream(log_dir)
    env = mesh_env(
        sandbox,
        fake_url + "/v1",
        LOG_LEVEL=args.log_level,
        SSE_KEEPALIVE_S=str(args.keepalive_s),
    )
    mesh = Mesh(env=env, log_dir=log_dir)
    trace_root = Path(tempfile.mkdtemp(prefix="soma-sse-trace-")) if args.profile else None
    http = httpx.AsyncClient()
    redis = Redis.from_url(sandbox.redis_url)
    run = Run(
        mesh=mesh,
        http=http,
        redis=redis,
        poster=Client("127.0.0.1", int(env["GATEWAY_PORT"])),
        sources=SourceAddresses(),
        prefix=f"{namespace}-s",
        args=args,
    )
    try:
        log.info("starting mesh %s (logs %s), open-files limit %s", namespace, log_dir, nofile)
        mesh.operator_key = await provision(env)
        http.headers.update(mesh.operator_headers)  # /v1/health's details: operators only
        await start_mesh(mesh)
        for i, n in enumerate(levels):
            if n > max_clients:
                log.warning("%d clients exceed the fd limit: running %d", n, max_clients)
                report["limits"].setdefault("capped", []).append([n, max_clients])
                n = max_clients
            log.info("level %d: %d clients over %d sessions", i, n, args.sessions)
            trace_dir = trace_root / f"level{i}" if trace_root else None
            if trace_dir:
                trace_dir.mkdir()
            try:
                report["levels"].append(await run_level(run, n, i, trace_dir))
            except (RuntimeError, TimeoutError, OSError) as exc:
                log.exception("level %d failed", i)
                report["levels"].append({"clients": n, "error": repr(exc)[:500]})
            finally:
                for s in run.open_sets:
                    s.close()
                run.open_sets.clear()
    finally:
        for s in run.open_sets:
            s.close()
        await run.poster.close()
        await http.aclose()
        await redis.aclose()
        await tear_down(sandbox, mesh, fake)
    report["wall_s"] = time.monotonic() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1000,10000,20000", help="levels, comma-separated")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle CPU window")
    parser.add_argument("--keepalive-s", type=float, default=15.0, help="SSE_KEEPALIVE_S")
    parser.add_argument("--turn-sessions", type=int, default=5)
    parser.add_argument("--turn-timeout-s", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=100, help="connects in flight")
    parser.add_argument("--settle-s", type=float, default=2.0)
    parser.add_argument("--profile", type=int, help="one level of N clients under tracemalloc")
    parser.add_argument("--log-level", default="WARNING", help="the mesh's LOG_LEVEL")
    parser.add_argument("--report", type=Path, default=REPORTS / "sse_fanout.json")
    parser.add_argument("--traced-ingress", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.traced_ingress:
        traced_ingress(args.traced_ingress)
        return
    report = run_bench(bench_main(args))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    saved = report
    if args.profile and args.report.exists():
        # A profile run is a footnote to the measured levels: kept beside them.
        with contextlib.suppress(ValueError):
            saved = {**json.loads(args.report.read_text()), "profile_run": report}
    args.report.write_text(json.dumps(saved, indent=2, default=str) + "\n")
    sys.stdout.write(render(report) + f"\nreport: {args.report}\n")


if __name__ == "__main__":
    main()
