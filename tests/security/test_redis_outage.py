"""Redis unavailable before a turn, stopped or hung (SIGSTOP): new turns still complete,
their events reach the client through the Postgres fallback log (`pg-` ids), budgets
(a Postgres ledger) still admit exactly what they allow, and a rate limit (Postgres while
Redis is away) still holds across the switch and after Redis returns.

Every outage is of a test mesh's own Redis (its sandbox's: the auth mesh's, or the
auth-off mesh's for the issue as reported), never the machine's, and each test leaves it
running: started again after a stop, SIGCONT after a SIGSTOP.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest
import yaml
from redis.asyncio import Redis

from testbed.sandbox import Sandbox
from tests.security.conftest import AuthMesh
from tests.security.helpers import (
    as_key,
    budget_settles,
    end_of_turn,
    first_of_turn,
    new_key,
    post_turn,
    turn_events,
)
from tests.sse import SseEvent

RPM = 6
# "go" reserves 30: the system prompt 3 + the message 1 + 2 messages' overhead 8 +
# max_context_tokens 1 in, max_output_tokens 17 out (gateway_runtime/tokens.py); the fake
# model uses 10 + 20 (it streams its 20 tokens whatever max_tokens says).
TURN_TOKENS = 30
BUDGET_TURNS = 10


@pytest.fixture(scope="module")
async def tenants(auth_mesh: AuthMesh) -> AsyncIterator[dict[str, str]]:
    """Tenants of this module, added to the mesh's tenants file (reloaded on change)."""
    names = {
        "free": auth_mesh.tenant("alpha"),  # no budget, no limits
        "rate": auth_mesh.tenant("outage-rate"),
        "budget": auth_mesh.tenant("outage-budget"),
    }
    path = auth_mesh.tenants_file
    before = path.read_text()
    doc = yaml.safe_load(before)
    doc["tenants"][names["rate"]] = {"rpm_per_key": RPM, "max_output_tokens": 20}
    doc["tenants"][names["budget"]] = {
        "system_prompt": "Be brief.",
        "tokens_per_day": BUDGET_TURNS * TURN_TOKENS,
        "max_output_tokens": 17,
        "max_context_tokens": 1,
    }
    _write(path, yaml.safe_dump(doc))
    try:
        yield names
    finally:
        _write(path, before)


def _write(path: os.PathLike[str], text: str) -> None:
    tmp = f"{os.fspath(path)}.{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@contextlib.asynccontextmanager
async def redis_stopped(mesh: AuthMesh) -> AsyncIterator[None]:
    await mesh.sandbox.stop("redis")
    try:
        yield
    finally:
        await mesh.sandbox.start("redis")


@contextlib.asynccontextmanager
async def redis_hung(mesh: AuthMesh) -> AsyncIterator[None]:
    pid = mesh.sandbox.pid("redis")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def stream_until(
    client: httpx.AsyncClient,
    session_id: str,
    until: Callable[[SseEvent], bool],
    timeout: float = 60,
) -> list[SseEvent]:
    """The session's events up to `until`, on one connection: events a stage wrote to the
    Postgres fallback log reach a connected client too (ingress/fallback_watch.py)."""
    return await turn_events(client, session_id, until, timeout=timeout)


async def _one_turn(client: httpx.AsyncClient, message: str = "hi") -> list[SseEvent]:
    r = await post_turn(client, None, message)
    assert r.status_code == 202, r.text
    sid, tid = r.json()["session_id"], r.json()["event_id"]
    return await stream_until(client, sid, end_of_turn(tid))


@pytest.mark.parametrize("outage", ["stopped", "hung"])
async def test_redis_unavailable_before_a_turn_the_turn_completes(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, tenants: dict[str, str], outage: str
) -> None:
    key = await new_key(admin, tenants["free"])
    down = redis_stopped if outage == "stopped" else redis_hung
    async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
        assert (await _one_turn(client))[-1].type == "assistant.final"  # warm, Redis up
        took: list[float] = []
        async with down(auth_mesh):
            for _ in range(2):  # the first finds Redis down; the second knows
                started = time.perf_counter()
                events = await _one_turn(client)
                took.append(time.perf_counter() - started)
                assert events[-1].type == "assistant.final", events[-1]
                assert events[-1].data["data"]["text"].count("tok") == 20
                assert all(e.id.startswith("pg-") for e in events)  # the fallback log
        events = await _one_turn(client)  # Redis back
        assert events[-1].type == "assistant.final"
    conn = await asyncpg.connect(auth_mesh.sandbox.postgres_dsn)
    try:  # a tenant with no budget and no limits needs no counters
        budgets = await conn.fetchval(
            "SELECT count(*) FROM budget_counters WHERE tenant = $1", tenants["free"]
        )
        rates = await conn.fetchval(
            "SELECT count(*) FROM rate_admissions WHERE strpos(counter, $1) > 0",
            key["key_id"],
        )
    finally:
        await conn.close()
    assert (budgets, rates) == (0, 0)
    print(
        f"\nredis {outage} before a turn: first turn {took[0]:.2f} s, second {took[1]:.2f} s"
        " (post to final answer, through the Postgres fallback log)"
    )


async def test_auth_off_redis_stopped_before_a_turn_the_turn_completes(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    """The issue as reported: auth off, the unlimited default tenant, Redis stopped."""
    await sandbox.stop("redis")  # the auth-off mesh's own Redis
    try:
        started = time.perf_counter()
        events = await _one_turn(client)
        took = time.perf_counter() - started
    finally:
        await sandbox.start("redis")
    assert events[-1].type == "assistant.final", events[-1]
    assert all(e.id.startswith("pg-") for e in events)
    print(f"\nredis stopped, auth off: the turn took {took:.2f} s")


async def test_rpm_limit_holds_across_a_redis_outage_and_back(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, tenants: dict[str, str]
) -> None:
    """Half the minute's limit used through Redis on both replicas; Redis stops: the two
    replicas together admit only the other half through Postgres; Redis returns (empty):
    it gets the whole minute back and refuses too."""
    key = await new_key(admin, tenants["rate"])
    first, second = auth_mesh.urls
    async with as_key(first, key["secret"]) as one, as_key(second, key["secret"]) as two:
        clients = itertools.cycle([one, two])
        before = [await post_turn(next(clients), None, "rl") for _ in range(RPM // 2)]
        assert [r.status_code for r in before] == [202] * (RPM // 2)
        await asyncio.sleep(1.0)  # copied to Postgres behind each admission (within 0.25 s)
        async with redis_stopped(auth_mesh):
            during = await asyncio.gather(
                *(post_turn(c, None, "rl") for c in itertools.islice(clients, RPM + 2))
            )
        after = []
        for _ in range(6):  # each replica probes Redis once a second, then uses it again
            after.append(await post_turn(next(clients), None, "rl"))
            await asyncio.sleep(0.5)
    codes = [r.status_code for r in during]
    assert codes.count(202) == RPM - RPM // 2, codes
    assert codes.count(429) == RPM + 2 - (RPM - RPM // 2), codes
    refused = [r.json()["detail"] for r in during if r.status_code == 429]
    assert {d["code"] for d in refused} == {"rate_limited"}
    assert all(d["message"].startswith("rpm_per_key") for d in refused)
    assert [r.status_code for r in after] == [429] * len(after)
    redis = Redis.from_url(auth_mesh.sandbox.redis_url)
    log = auth_mesh.sandbox.keys.rate_log("rpm_per_key", f"key:{key['key_id']}")
    try:  # the minute, back in Redis: each admission once
        assert await redis.zcard(log) == RPM
        assert int(await redis.get(log + ":sum") or 0) == RPM
    finally:
        await redis.aclose()
    print(
        f"\nrpm {RPM} across a Redis outage: {RPM // 2} admitted before (Redis), "
        f"{codes.count(202)} of {len(codes)} during (Postgres), 0 of {len(after)} after"
        " (Redis, the minute restored)"
    )


async def test_a_budget_for_ten_turns_admits_ten_across_a_redis_outage(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, tenants: dict[str, str]
) -> None:
    tenant = tenants["budget"]
    key = await new_key(admin, tenant)

    async def outcome(client: httpx.AsyncClient, session_id: str, turn_id: str) -> SseEvent:
        """The turn's denial, or its end."""
        first = await stream_until(client, session_id, first_of_turn(turn_id))
        if first[-1].type == "error":
            return first[-1]
        return (await stream_until(client, session_id, end_of_turn(turn_id)))[-1]

    async def turns(client: httpx.AsyncClient, n: int) -> list[SseEvent]:
        posted = await asyncio.gather(*(post_turn(client, None, "go") for _ in range(n)))
        assert all(r.status_code == 202 for r in posted), [r.text for r in posted]
        return await asyncio.gather(
            *(outcome(client, r.json()["session_id"], r.json()["event_id"]) for r in posted)
        )

    half = BUDGET_TURNS // 2
    async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
        before = await turns(client, half)
        async with redis_stopped(auth_mesh):
            during = await turns(client, half + 1)
        after = await turns(client, 1)
    assert [e.type for e in before] == ["assistant.final"] * half
    assert sorted(e.type for e in during) == ["assistant.final"] * half + ["error"]
    denied = [e for e in during + after if e.type == "error"]
    assert len(denied) == 2 and {e.data["data"]["code"] for e in denied} == {"budget_exhausted"}

    conn = await asyncpg.connect(auth_mesh.sandbox.postgres_dsn)
    try:
        await budget_settles(conn, tenant, BUDGET_TURNS * TURN_TOKENS)
        stored = await conn.fetchrow(
            "SELECT count(*) AS n, sum(prompt_tokens + completion_tokens) AS tokens"
            " FROM turns WHERE tenant = $1",
            tenant,
        )
    finally:
        await conn.close()
    assert stored is not None
    assert (stored["n"], stored["tokens"]) == (BUDGET_TURNS, BUDGET_TURNS * TURN_TOKENS)
    print(
        f"\nbudget for {BUDGET_TURNS} turns across a Redis outage: {half} admitted before, "
        f"{half} of {half + 1} during (Redis stopped), "
        f"0 of 1 after; ledger used {BUDGET_TURNS * TURN_TOKENS} = the stored turns' usage"
    )
