"""The chaos run's stack and timeline: sandbox, mesh, keys, load, faults, audit.

The mesh runs with the settings' defaults (retries, backoff, breaker, deadlines), not
with the short values the tests' meshes use (testbed.mesh.mesh_env): the run measures
what an operator would get. Auth is on; the load uses API keys of the default tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import httpx

from bench.chaos import audit
from bench.chaos.faults import Injected, Injector
from bench.chaos.machine import MachineCpu
from bench.chaos.plan import FAULTS, REPLICAS, Fault, Plan
from bench.chaos.traffic import Traffic
from bench.chaos.verdict import baseline, outcomes, recoveries
from bench.chaos.watchdog import Watchdog
from gateway_runtime.settings import CommonSettings
from testbed.mesh import Mesh, mesh_env, provision, start_fake_upstream, start_mesh
from testbed.sandbox import Sandbox

log = logging.getLogger("bench.chaos")

KEYS = 8  # API keys the load spreads over (streams are capped per principal and ingress)
# What testbed.mesh.mesh_env shortens for the tests; a chaos mesh keeps the defaults.
TEST_TUNING = (
    "RETRY_BACKOFF_S",
    "LLM_RETRY_BACKOFF_S",
    "BREAKER_FAILURE_THRESHOLD",
    "BREAKER_COOLDOWN_S",
    "PROFILE_CACHE_TTL_S",
)


def chaos_env(sandbox: Sandbox, fake_url: str) -> dict[str, str]:
    env = mesh_env(sandbox, fake_url + "/v1", GATEWAY_REQUIRE_AUTH="true")
    for name in TEST_TUNING:
        env.pop(name, None)
    return env


async def make_keys(mesh: Mesh, count: int) -> list[str]:
    """`turns` keys of the default tenant, made with the sandbox's bootstrap key."""
    keys = []
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as http:
        for i in range(count):
            r = await http.post(
                "/v1/keys",
                json={"label": f"chaos-{i}", "scopes": ["turns"]},
                headers=mesh.operator_headers,
            )
            r.raise_for_status()
            keys.append(str(r.json()["secret"]))
    return keys


async def run(plan: Plan, faults: tuple[Fault, ...] = FAULTS) -> dict[str, Any]:
    """The whole run; what the report needs (objects, not yet rendered)."""
    sandbox = await Sandbox.open("chaos", CommonSettings(), own=("postgres", "kafka"))
    fake: subprocess.Popen[bytes] | None = None
    mesh: Mesh | None = None
    try:
        fake, fake_url = start_fake_upstream(sandbox.dir)
        mesh = Mesh(env=chaos_env(sandbox, fake_url), log_dir=sandbox.dir)
        log.info("mesh %s: 2 ingresses, 2 replicas a stage (logs %s)", sandbox.name, sandbox.dir)
        mesh.operator_key = await provision(mesh.env)
        await start_mesh(mesh, replicas=REPLICAS, ingresses=REPLICAS)
        keys = await make_keys(mesh, KEYS)
        return await _timeline(plan, faults, sandbox, mesh, fake_url, keys)
    finally:
        if mesh is not None:
            mesh.stop_all()
        if fake is not None:
            fake.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                fake.wait(10)
        log.info("logs kept in %s", sandbox.dir)
        await sandbox.close()


async def _timeline(
    plan: Plan,
    faults: tuple[Fault, ...],
    sandbox: Sandbox,
    mesh: Mesh,
    fake_url: str,
    keys: list[str],
) -> dict[str, Any]:
    urls = [mesh.ingress_url("ingress"), mesh.ingress_url("ingress-2")]
    traffic = Traffic(urls, keys, plan.rate)
    before_redis: Counter[tuple[str, str]] = Counter()

    async def count_redis_outcomes() -> None:
        sessions = [t.session_id for t in traffic.turns]
        before_redis.update(await audit.redis_outcomes(sandbox.redis_url, sandbox.keys, sessions))

    injector = Injector(sandbox, mesh, fake_url, plan, traffic.now, count_redis_outcomes)
    stop, mesh_done = asyncio.Event(), asyncio.Event()
    cpu = MachineCpu()
    load = asyncio.create_task(traffic.run(stop))
    watchdog = Watchdog(mesh, traffic.now)
    watching = asyncio.create_task(watchdog.run(mesh_done))
    done: list[Injected] = []
    try:
        await asyncio.sleep(plan.lead_s)
        for fault in faults:
            log.info("fault: %s", fault.name)
            done.append(await injector.run(fault))
            await asyncio.sleep(plan.gap_s)
        await asyncio.sleep(plan.tail_s)
    finally:
        stop.set()
        await load
        cpu.stop()
    load_s = traffic.now()
    log.info("load stopped after %.0f s, %d arrivals; draining", load_s, len(traffic.turns))
    cut = await traffic.drain(plan.drain_s)
    await traffic.close()
    mesh_done.set()
    await watching
    sessions = [t.session_id for t in traffic.turns]
    expected = {t.turn_id for t in traffic.turns if t.accepted and t.turn_id}
    store = await audit.settled(sandbox.postgres_dsn, sessions, expected, timeout_s=60)
    logged = (
        before_redis
        + await audit.redis_outcomes(sandbox.redis_url, sandbox.keys, sessions)
        + await audit.postgres_outcomes(sandbox.postgres_dsn, sessions)
    )
    started = time.monotonic()
    try:
        topics = await audit.topic_duplicates(mesh.kafka, sandbox.namespace)
    except Exception as exc:  # the table says the topics could not be read, and why
        log.exception("reading the topics")
        topics = {f"(topics not read: {type(exc).__name__}: {exc})"[:200]: audit.TopicCount()}
    log.info("topics read in %.0f s", time.monotonic() - started)
    return {
        "plan": asdict(plan),
        "namespace": sandbox.namespace,
        "logs": str(sandbox.dir),
        "load_s": load_s,
        "followed_when_cut": cut,
        "deaths": watchdog.deaths,
        "outcomes": outcomes(traffic.turns, store, logged),
        "recoveries": recoveries(done, traffic.turns, load_s),
        "baseline": baseline(traffic.turns, done),
        "cpu": cpu.stop(),
        "topics": topics,
        "turns": traffic.turns,
    }
