"""`python -m bench.profile`: where each turn's CPU and latency go, process by process.

Starts the bench's sandbox mesh (as bench/run.py does; by default with a Kafka broker and
a Postgres of its own, so their CPU is the mesh's alone) with every gateway process run
under a light tracer (this module's `--child` mode: wall time of the calls on a turn's
path, e.g. the key lookup, the session claim, OpenFGA, OPA, each Postgres statement and
Redis command, and each Kafka hop from a record's CreateTime to its stage picking it up).
Then:

0. quiet (--quiet-s): CPU of every process with no turns at all (polls, heartbeats);
1. idle (--idle-rate, default 3 turns/s), anonymous and with a `turns` API key: the
   client's view plus the tracer's per-hop times;
2. load (--rate), anonymous and keyed: CPU per turn of every process (the backing
   services too, from /proc) in a window without py-spy, then `py-spy record --native`
   on the busy Python processes in a second window, aggregated by function (self time)
   and by area (JSON, Avro, aiokafka, redis-py, ...), waiting stacks left out.

A keyed client posts first and then opens the stream (a key may read only a session it
claimed). The tracer's own cost shows in the profile (frames of bench/profile.py).
Everything goes to --out: report.md, profile.json, trace-*.tsv, pyspy-*.txt.

    python -m bench.profile --out /tmp/profile
    python -m bench.profile --rate 30 --load-s 20 --idle-s 30 --modes key
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import contextvars
import functools
import importlib
import inspect
import json
import logging
import os
import re
import runpy
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.profile")

# ---- the tracer (runs inside each mesh process) -------------------------------------

# What is timed, per process kind: "module:Qualified.name". Coroutine functions are timed
# call to return, async generators to their first item ("<name> first") and to the end.
COMMON_TARGETS = (
    "asyncpg.pool:Pool.fetchval",
    "asyncpg.pool:Pool.fetchrow",
    "asyncpg.pool:Pool.fetch",
    "asyncpg.pool:Pool.execute",
    "redis.asyncio.client:Redis.execute_command",
    "adapters.openfga:FgaAuthorizer.check",
    "adapters.openfga:FgaAuthorizer.write",
    "adapters.opa:OpaClient.decide",
    "gateway_runtime.fanout:FanoutPublisher.publish",
    "gateway_runtime.kafka:KafkaPublisher.publish",
    "gateway_runtime.kafka:KafkaPublisher.start_send",
    "gateway_runtime.transactions:KafkaTransactions.commit",  # a stage's outputs + offsets
    # ... and its steps: the records acknowledged, the offsets, EndTxn
    "gateway_runtime.transactions:KafkaTransactions._send",
    "aiokafka.producer.producer:AIOKafkaProducer.send_offsets_to_transaction",
    "aiokafka.producer.producer:AIOKafkaProducer.commit_transaction",
    "aiohttp.client:ClientSession._request",  # OpenFGA's HTTP round trip, SDK excluded
    "httpx:AsyncClient.send",  # OPA's and the upstream's (to the response head)
)
TARGETS: dict[str, tuple[str, ...]] = {
    "ingress": (
        "ingress.auth.services:AuthServices.authenticate",
        "ingress.auth.keys:KeyStore._lookup",
        "ingress.auth.keys:KeyStore._touch",
        "ingress.auth.admission:Admission.admit",
        "adapters.ratelimit:RateLimiter.admit",
        "adapters.session_claims:SessionClaims.claim",
        "adapters.session_claims:SessionClaims.can_read",
        "ingress.auth.anonymous:AnonymousSessions.may_use",
        "ingress.outbox:TurnOutbox.publish",
        "ingress.turns:start_turn",
    ),
    "policy_worker": (
        "policy_worker.handler:PolicyHandler.handle",
        "policy_worker.handler:PolicyHandler._first_record",
        "policy_worker.handler:PolicyHandler._check_write",
        "policy_worker.handler:PolicyHandler._policy",
        "policy_worker.handler:PolicyHandler._check_rate",
        "policy_worker.handler:PolicyHandler._profile",
        "policy_worker.handler:PolicyHandler._reserve",
        "policy_worker.identity:TurnIdentity.check_member",
    ),
    "context_worker": (
        "context_worker.handler:ContextHandler.handle",
        "context_worker.handler:ContextHandler._usable_profiles",
        "context_worker.handler:ContextHandler._read",
    ),
    "llm_worker": (
        "llm_worker.handler:LLMHandler.handle",
        "llm_worker.router:ModelRouter.stream",
        "llm_worker.openai_http:OpenAIHttpModel.stream",
        "llm_worker.guarded_http:GuardedResolver.resolve",
    ),
    "persistence_worker": (),
    "tool_dispatcher": (),
    "deadletter_index": (),
}
_t0: contextvars.ContextVar[float] = contextvars.ContextVar("profile_t0", default=0.0)
_records: list[tuple[float, str, float]] = []  # (wall s, name, ms)


def _note(name: str, ms: float) -> None:
    _records.append((time.time(), name, ms))


def _label(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A statement's or command's first words, so `pg.fetchval` splits by query."""
    if name.startswith("asyncpg.pool:Pool."):
        sql = str(args[1] if len(args) > 1 else kwargs.get("query", ""))
        return f"pg {' '.join(sql.split()[:3])[:40]}"
    if name.endswith("Redis.execute_command"):
        return f"redis {str(args[1]).upper() if len(args) > 1 else '?'}"
    if name.endswith("FanoutPublisher.publish"):
        kind = args[3] if len(args) > 3 else kwargs.get("event_type", "?")
        return f"fanout.publish {kind}"
    return name.split(":", 1)[1]


def _wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any) -> Any:
            label, began, first = _label(name, args, kwargs), time.perf_counter(), True
            async for item in fn(*args, **kwargs):
                if first:
                    first = False
                    _note(f"{label} first", (time.perf_counter() - began) * 1000)
                yield item
            _note(f"{label} all", (time.perf_counter() - began) * 1000)

        return agen

    @functools.wraps(fn)
    async def coro(*args: Any, **kwargs: Any) -> Any:
        label, began = _label(name, args, kwargs), time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            ended = time.perf_counter()
            _note(label, (ended - began) * 1000)
            if label.startswith("fanout.publish assistant.delta") and _t0.get():
                data = args[4] if len(args) > 4 else kwargs.get("data", {})
                if isinstance(data, dict) and data.get("seq") == 1:
                    _note(
                        "llm: record picked up -> first delta published", (ended - _t0.get()) * 1000
                    )
            if name.endswith("start_send") and _t0.get():
                _note("ingress: request in -> produce started", (began - _t0.get()) * 1000)

    return coro


def _patch_stage_loop() -> None:
    """Each record: its Kafka hop (CreateTime -> picked up) and its whole processing."""
    from gateway_runtime import stage

    original = stage.StageLoop._process

    @functools.wraps(original)
    async def process(self: Any, record: Any, entry: Any) -> None:
        began = time.perf_counter()
        _t0.set(began)
        hop = time.time() * 1000 - record.timestamp
        _note(f"kafka hop -> {self._stage}", hop)
        try:
            await original(self, record, entry)
        finally:
            _note(f"stage {self._stage} process", (time.perf_counter() - began) * 1000)

    stage.StageLoop._process = process  # type: ignore[method-assign]


def _patch_asgi() -> None:
    """Each HTTP request: time until its response starts (an SSE stream: its headers)."""
    import fastapi

    original = fastapi.FastAPI.__call__

    async def call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            return await original(self, scope, receive, send)
        began = time.perf_counter()
        _t0.set(began)
        path = scope.get("path", "")
        kind = f"{scope.get('method')} {'/events' if path.endswith('/events') else path}"

        async def timed_send(message: Any) -> None:
            if message.get("type") == "http.response.start":
                _note(f"http {kind} -> response start", (time.perf_counter() - began) * 1000)
            await send(message)

        return await original(self, scope, receive, timed_send)

    fastapi.FastAPI.__call__ = call  # type: ignore[method-assign]


def install_tracer(service: str, out: Path) -> None:
    """Wrap the targets of `service`, and write what was timed to `out` every 0.5 s."""
    for target in (*COMMON_TARGETS, *TARGETS.get(service, ())):
        module_name, _, qualname = target.partition(":")
        try:
            owner: Any = importlib.import_module(module_name)
            *path, attr = qualname.split(".")
            for part in path:
                owner = getattr(owner, part)
            setattr(owner, attr, _wrap(target, getattr(owner, attr)))
        except (ImportError, AttributeError) as exc:
            sys.stderr.write(f"bench.profile: cannot trace {target}: {exc!r}\n")
    if service in TARGETS and service != "ingress":
        _patch_stage_loop()
    if service == "ingress":
        _patch_asgi()

    def flush_forever() -> None:
        with open(out, "a") as f:
            while True:
                time.sleep(1.0)
                taken = len(_records)
                for wall, name, ms in _records[:taken]:
                    f.write(f"{wall:.4f}\t{name}\t{ms:.3f}\n")
                del _records[:taken]
                f.flush()

    threading.Thread(target=flush_forever, daemon=True, name="profile-flush").start()


def child_main(service: str, out: Path) -> None:
    install_tracer(service, out)
    sys.argv = [service]
    runpy.run_module(service, run_name="__main__", alter_sys=True)


# ---- py-spy stacks: by function and by area -----------------------------------------

# Area of a frame, by its file; the innermost (leaf-most) frame with a specific area wins,
# generic ones (the event loop, sockets) only when nothing specific is on the stack.
AREAS: tuple[tuple[str, str], ...] = (
    ("bench/profile.py", "profiler's tracer (bench.profile)"),
    ("json/", "JSON encode/decode"),
    ("orjson", "JSON encode/decode"),
    ("fastavro", "Avro encode/decode"),
    ("schemas/codec", "Avro encode/decode"),
    ("schemas/", "event schemas (to/from dicts)"),
    ("aiokafka/", "aiokafka fetch/produce"),
    ("kafka/", "aiokafka fetch/produce"),
    ("redis/", "redis-py"),
    ("asyncpg/", "asyncpg"),
    ("openfga_sdk/", "OpenFGA HTTP calls (openfga_sdk)"),
    ("adapters/opa", "OPA HTTP calls"),
    ("httpx/", "httpx"),
    ("httpcore/", "httpx"),
    ("h11/", "httpx"),
    ("aiohttp/", "aiohttp (model stream, OPA, openfga_sdk)"),
    ("pydantic", "pydantic validation"),
    ("fastapi/", "FastAPI/starlette request handling"),
    ("starlette/", "FastAPI/starlette request handling"),
    ("uvicorn/", "uvicorn HTTP"),
    ("logging/", "logging"),
    ("gateway_runtime/logs", "logging"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("hashlib", "hashing"),
    ("_json.c", "JSON encode/decode"),
    ("_hashopenssl", "hashing"),
    ("ssl.py", "TLS/SASL"),
    ("scram", "TLS/SASL"),
    ("uuid.py", "uuid"),
)
GENERIC: tuple[tuple[str, str], ...] = (
    ("asyncio/", "asyncio overhead"),
    ("uvloop", "asyncio overhead"),
    ("selectors.py", "asyncio overhead"),
    ("socket.py", "asyncio overhead"),
    ("contextlib.py", "asyncio overhead"),
    ("threading.py", "threads"),
)
OWN = (
    "ingress/", "gateway_runtime/", "adapters/", "policy_worker/", "context_worker/",
    "llm_worker/", "persistence_worker/", "tool_dispatcher/", "deadletter_index/",
)  # fmt: skip
_FRAME = re.compile(r"^(.*) \((.*?)(?::(\d+))?\)$")


def _frame(text: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame `func (path/file.py:12)`."""
    match = _FRAME.match(text.strip())
    if not match:
        return text.strip(), ""
    return match.group(1), match.group(2)


LOOP_ROOTS = ("asyncio/runners.py", "uvloop/__init__.py", "asyncio/base_events.py")


def area_of(stack: list[tuple[str, str]]) -> str:
    """The stack's area; a leaf in the loop's runner is time in uvloop's C code (the
    callbacks' dispatch, socket reads and writes; py-spy sees no native frames)."""
    for i in range(len(stack) - 1, -1, -1):
        if any(root in stack[i][1] for root in LOOP_ROOTS):
            stack = stack[i + 1 :]
            break
    if not stack:
        return "event loop (uvloop native)"
    for _, path in reversed(stack):
        for needle, area in AREAS:
            if needle in path:
                return area
        for package in OWN:
            if f"/{package}" in path or path.startswith(package):
                return f"gateway code ({package.rstrip('/')})"
    for _, path in reversed(stack):
        for needle, area in GENERIC:
            if needle in path:
                return area
    if all(_native(path) or func.startswith("0x") for func, path in stack):
        return "event loop (uvloop native)"
    return "other"


# py-spy's idle detection misses threads blocked in C (uvloop's epoll, an executor's
# queue, the tracer's sleep) in blocking mode: stacks ending in these are waiting, not CPU.
IDLE_LEAVES = (
    "epoll_wait", "epoll_pwait", "futex", "sem_clockwait", "sem_timedwait", "sem_wait",
    "pthread_cond", "nanosleep", "clock_nanosleep", "take_gil", "select", "__poll",
    "PyThread_acquire_lock", "do_futex_wait", "time_sleep", "pysleep",
)  # fmt: skip
IDLE_PYTHON = ("_worker (concurrent/futures/thread.py:81)",)


def is_idle(frames: list[tuple[str, str]]) -> bool:
    leaf = frames[-1][0]
    if any(word in func for func, _ in frames[-4:] for word in IDLE_LEAVES):
        return True
    text = [f"{func} ({path}" for func, path in frames]
    if any(t.startswith(marker) for t in text for marker in IDLE_PYTHON):
        return True  # a waiting executor thread or the tracer's flush (its own share: tiny)
    # uvloop polling: the leaf is libc's or the kernel's, under uv__io_poll
    return any(f[0] == "uv__io_poll" for f in frames[-4:]) and leaf.startswith("0x")


def _native(path: str) -> bool:
    return path.endswith((".c", ".h", ".so", ".so.6")) or ".so." in path or path.startswith("0x")


def read_stacks(path: Path) -> Iterable[tuple[list[tuple[str, str]], int]]:
    """py-spy --format raw: `frame;frame;... count` lines, root first."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f[0].startswith("thread ")]
        yield frames, int(count)


def aggregate(path: Path, top: int = 12) -> dict[str, Any]:
    total = idle = 0
    by_function: collections.Counter[str] = collections.Counter()
    by_area: collections.Counter[str] = collections.Counter()
    for frames, count in read_stacks(path):
        if not frames:
            continue
        if is_idle(frames):
            idle += count
            continue
        total += count
        func, file = frames[-1]
        by_function[f"{func} ({_short(file)})"] += count
        by_area[area_of(frames)] += count
    share = (lambda n: round(100 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "idle_samples": idle,
        "functions_pct": [(f, share(n)) for f, n in by_function.most_common(top)],
        "areas_pct": [(a, share(n)) for a, n in by_area.most_common()],
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# ---- the parent: mesh, load, windows ------------------------------------------------


@dataclass
class Traces:
    """The tracer files of every process; windows are read by wall time."""

    files: dict[str, Path] = field(default_factory=dict)

    def window(self, since: float, until: float) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for service, path in self.files.items():
            values: dict[str, list[float]] = collections.defaultdict(list)
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    wall, name, ms = line.split("\t")
                    if since <= float(wall) <= until:
                        values[name].append(float(ms))
            out[service] = {name: _stats(v) for name, v in sorted(values.items())}
        return out


def _stats(values: list[float]) -> dict[str, float]:
    from bench.load import percentile

    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "mean": round(sum(values) / len(values), 2),
    }


def _client_class() -> Any:
    """bench.load's client, also noting when the first delta's Redis entry was written
    (its SSE id is `<redis ms>-<seq>`) and when the client read it."""
    from bench.load import Client

    class TracingClient(Client):
        publish_to_client_ms: list[float] = []

        def first_delta(self, block: bytes) -> None:
            found = re.search(rb"^id: (\d+)-\d+$", block, re.M)
            if found:
                TracingClient.publish_to_client_ms.append(time.time() * 1000 - int(found.group(1)))

    return TracingClient


def pyspy_binary() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is missing: `make install-dev` (pyproject's dev extras)")
    return found


def start_pyspy(pid: int, out: Path, duration_s: float, rate: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            pyspy_binary(), "record", "--pid", str(pid), "--duration", str(int(duration_s)),
            "--rate", str(rate), "--format", "raw", "--native", "--output", str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(out.with_suffix(".log"), "wb"),
    )  # fmt: skip


async def create_key(base_url: str, operator_key: str) -> str:
    import httpx

    async with httpx.AsyncClient() as client:
        r = await client.post(
            base_url + "/v1/keys",
            json={"label": "bench-profile", "scopes": ["turns"]},
            headers={"Authorization": f"Bearer {operator_key}"},
        )
        r.raise_for_status()
        return str(r.json()["secret"])


async def profile_main(args: argparse.Namespace) -> dict[str, Any]:
    from bench.accounting import CpuProbe, infra_pids
    from bench.load import percentile, upstream_ttft
    from gateway_runtime.settings import CommonSettings
    from testbed.mesh import STAGE_OF, WORKERS, Mesh, mesh_env, provision, start_fake_upstream
    from testbed.sandbox import Sandbox

    out: Path = args.out
    # Kafka's and Postgres's CPU is the mesh's alone only on servers of its own.
    own = tuple(x for x in args.own.split(",") if x)
    sandbox = await Sandbox.open("profile", CommonSettings(), own=own)
    fake, fake_url = start_fake_upstream(sandbox.dir)
    env = mesh_env(
        sandbox,
        fake_url + "/v1",
        LLM_TRANSPORT="auto",
        LOG_LEVEL="WARNING",
        GATEWAY_REQUIRE_AUTH="true" if args.require_auth else "false",
    )
    mesh = Mesh(env=env, log_dir=sandbox.dir)
    traces = Traces()
    report: dict[str, Any] = {"namespace": sandbox.namespace, "logs": str(sandbox.dir)}
    client_cls = _client_class()
    clients: list[Any] = []
    try:
        direct = await upstream_ttft("127.0.0.1", int(fake_url.rsplit(":", 1)[1]))
        up = percentile(direct, 50)
        report["upstream_ttft_ms"] = {"p50": up, "p99": percentile(direct, 99)}
        mesh.operator_key = await provision(env)
        for name in ("ingress", *WORKERS):
            path = out / f"trace-{name}.tsv"
            path.unlink(missing_ok=True)
            traces.files[name] = path
            mesh.start(name, "bench.profile", ["--child", name, "--trace-file", str(path)])
        await mesh.wait_healthy()
        for worker in WORKERS:
            if worker in STAGE_OF:
                await mesh.wait_group_members(STAGE_OF[worker])
        key = await create_key(mesh.base_url, mesh.operator_key)
        port = int(env["GATEWAY_PORT"])
        modes = {
            "anon": client_cls("127.0.0.1", port),
            "key": client_cls("127.0.0.1", port, {"authorization": f"Bearer {key}"}),
        }
        clients = list(modes.values())

        def pids() -> dict[str, int]:
            return {
                **{n: p.pid for n, p in mesh.processes.items()},
                "fake_upstream": fake.pid,
                "loadgen": os.getpid(),
                **infra_pids(sandbox),
            }

        log.info("backing services measured: %s", infra_pids(sandbox))
        if args.quiet_s > 0:  # what the mesh burns with no turns at all (polls, heartbeats)
            log.info("no turns for %.0f s (fixed CPU)", args.quiet_s)
            quiet = CpuProbe(pids)
            quiet.start()
            await asyncio.sleep(args.quiet_s)
            cpu = quiet.stop()
            report["quiet_cores"] = {
                k: round(v / 1000 / cpu["wall_s"], 3) for k, v in sorted(cpu["cpu_ms"].items())
            }

        for mode in args.modes.split(","):
            if args.require_auth and mode == "anon":
                continue
            report[mode] = await profile_mode(
                args, mode, modes[mode], mesh, traces, CpuProbe(pids), up, out
            )
    finally:
        for c in clients:
            await c.close()
        mesh.stop_all()
        fake.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            fake.wait(10)
        await sandbox.close()
    return report


async def profile_mode(
    args: argparse.Namespace,
    mode: str,
    client: Any,
    mesh: Any,
    traces: Traces,
    probe: Any,
    upstream_ms: float,
    out: Path,
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    prefix = f"{mode}-{int(time.time())}"

    # 1. idle: per-hop latency
    if args.idle_s > 0:
        result["idle"] = await _idle(args, client, traces, upstream_ms, prefix)
        await asyncio.sleep(2)
    if args.load_s > 0:
        result.update(await _load(args, mode, client, mesh, probe, upstream_ms, prefix, out))
    return result


async def _idle(
    args: argparse.Namespace, client: Any, traces: Traces, upstream_ms: float, prefix: str
) -> dict[str, Any]:
    from bench.load import run_load

    log.info("idle %.0f turns/s for %.0f s", args.idle_rate, args.idle_s)
    client.publish_to_client_ms.clear()
    marks: dict[str, float] = {}
    run = await run_load(
        client, rate=args.idle_rate, warmup_s=3, duration_s=args.idle_s,
        session_prefix=f"{prefix}-idle", seed=1,
        on_window_start=lambda: marks.__setitem__("t", time.time()),
    )  # fmt: skip
    return {
        "client": run.summary(upstream_ms, 2000),
        "publish_to_client_ms": _stats(client.publish_to_client_ms[-len(run.measured) :])
        if client.publish_to_client_ms
        else {},
        "trace": traces.window(marks["t"], time.time()),
    }


async def _load(
    args: argparse.Namespace,
    mode: str,
    client: Any,
    mesh: Any,
    probe: Any,
    upstream_ms: float,
    prefix: str,
    out: Path,
) -> dict[str, Any]:
    from bench.load import run_load

    result: dict[str, Any] = {}
    # 2. load, CPU only (no py-spy attached)
    log.info("[%s] load %.0f turns/s for %.0f s (CPU)", mode, args.rate, args.load_s)
    run = await run_load(
        client, rate=args.rate, warmup_s=3, duration_s=args.load_s,
        session_prefix=f"{prefix}-cpu", seed=2, on_window_start=probe.start,
    )  # fmt: skip
    cpu = probe.stop()
    n = max(1, len(run.measured))
    result["load"] = {
        "client": run.summary(upstream_ms, 2000),
        "cpu_ms_per_turn": {k: round(v / n, 2) for k, v in sorted(cpu["cpu_ms"].items())},
        "cpu_ms_per_turn_total": round(sum(cpu["cpu_ms"].values()) / n, 2),
        "other_cores": round(
            max(0.0, cpu["machine_busy_ms"] - sum(cpu["cpu_ms"].values())) / 1000 / cpu["wall_s"],
            2,
        ),
    }
    await asyncio.sleep(2)

    # 3. load with py-spy on every Python process of the mesh
    log.info("[%s] load %.0f turns/s for %.0f s (py-spy)", mode, args.rate, args.load_s)
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start_spies() -> None:
        for name, proc in mesh.processes.items():
            if name not in args.spy:
                continue
            path = out / f"pyspy-{mode}-{name}.txt"
            spies[name] = (start_pyspy(proc.pid, path, args.load_s, args.spy_rate), path)

    await run_load(
        client, rate=args.rate, warmup_s=3, duration_s=args.load_s,
        session_prefix=f"{prefix}-spy", seed=3, on_window_start=start_spies,
    )  # fmt: skip
    profiles: dict[str, Any] = {}
    for name, (spy, path) in spies.items():
        try:
            spy.wait(args.load_s + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
        if path.exists():
            profiles[name] = aggregate(path)
    result["pyspy"] = profiles
    await asyncio.sleep(2)
    return result


# ---- report ---------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    lines = [f"upstream TTFT direct p50 {report['upstream_ttft_ms']['p50']:.1f} ms"]
    if "quiet_cores" in report:
        lines.append(f"cores busy with no turns: {report['quiet_cores']}")
    for mode in ("anon", "key"):
        r = report.get(mode)
        if not r:
            continue
        if "idle" in r:
            lines += _render_idle(mode, r["idle"])
        if "load" in r:
            lines += _render_load(mode, r)
    return "\n".join(lines) + "\n"


def _render_idle(mode: str, idle: dict[str, Any]) -> list[str]:
    c = idle["client"]
    lines = [
        "",
        f"## {mode}: idle",
        f"turns {c['turns']} errors {c['errors']} {c['error_kinds']}; gateway TTFT p50 "
        f"{c['gateway_ttft_ms'].get('p50', 0):.1f} p90 {c['gateway_ttft_ms'].get('p90', 0):.1f}"
        f" p99 {c['gateway_ttft_ms'].get('p99', 0):.1f}; POST p50 "
        f"{c['post_ms'].get('p50', 0):.1f}; SSE open p50 {c['sse_open_ms'].get('p50', 0):.1f};"
        f" Redis XADD -> client p50 {idle['publish_to_client_ms'].get('p50', 0):.1f}",
    ]
    for service, names in idle["trace"].items():
        for name, s in names.items():
            lines.append(
                f"  {service:16} {name:58} n={s['n']:<5} p50 {s['p50']:7.2f} "
                f"p90 {s['p90']:7.2f} mean {s['mean']:7.2f}"
            )
    return lines


def _render_load(mode: str, r: dict[str, Any]) -> list[str]:
    load = r["load"]
    lc = load["client"]
    lines = [
        "",
        f"## {mode}: load {lc['target_rate']:.0f}/s (offered {lc['offered_rate']:.1f}, done "
        f"{lc['completed_rate']:.1f}, err {lc['errors']}, gw TTFT p50 "
        f"{lc['gateway_ttft_ms'].get('p50', 0):.1f} p99 {lc['gateway_ttft_ms'].get('p99', 0):.1f})",
        f"CPU ms/turn total {load['cpu_ms_per_turn_total']} (other cores busy "
        f"{load['other_cores']}): "
        + ", ".join(
            f"{k} {v}" for k, v in sorted(load["cpu_ms_per_turn"].items(), key=lambda x: -x[1])
        ),
    ]
    for name, p in r["pyspy"].items():
        lines.append(f"### py-spy {mode} {name} ({p['samples']} busy samples)")
        lines.append("  areas: " + "; ".join(f"{a} {s}%" for a, s in p["areas_pct"]))
        lines.append("  functions: " + "; ".join(f"{f} {s}%" for f, s in p["functions_pct"]))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--trace-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench/reports/profile"))
    parser.add_argument("--modes", default="anon,key", help="anon, key or both")
    parser.add_argument("--require-auth", action="store_true", help="GATEWAY_REQUIRE_AUTH=true")
    parser.add_argument(
        "--own",
        default="kafka,postgres",
        help="servers of the sandbox's own (so their CPU is the mesh's); '' = the machine's",
    )
    parser.add_argument("--rate", type=float, default=30.0, help="load turns/s")
    parser.add_argument("--load-s", type=float, default=20.0)
    parser.add_argument("--quiet-s", type=float, default=10.0, help="fixed-CPU window")
    parser.add_argument("--idle-rate", type=float, default=3.0)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--spy-rate", type=int, default=50, help="py-spy samples/s")
    parser.add_argument(
        "--spy",
        default="ingress,policy_worker,context_worker,llm_worker,persistence_worker",
        help="the processes py-spy samples (each one it pauses costs the load's latency)",
    )
    args, _ = parser.parse_known_args()
    if args.child:
        child_main(args.child, args.trace_file)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    import uvloop

    report = uvloop.run(profile_main(args))
    (args.out / "profile.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = render(report)
    (args.out / "report.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
