"""The sliding-window rate limiter on the real Redis and Postgres, and across a switch."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from adapters.ratelimit import FLUSH_S, RateLimiter
from gateway_runtime.ports import Tenant
from gateway_runtime.redis_keys import RedisKeys
from testbed.sandbox import Sandbox

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens: a Redis that is down


@pytest.fixture
async def redis(sandbox: Sandbox) -> AsyncIterator[Redis]:
    redis = Redis.from_url(sandbox.redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
async def down() -> AsyncIterator[Redis]:
    redis = Redis.from_url(NOWHERE)
    try:
        yield redis
    finally:
        await redis.aclose()


@contextlib.asynccontextmanager
async def _limiter(
    redis: Redis, sandbox: Sandbox, pool: asyncpg.Pool
) -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter(redis, sandbox.keys, pool)
    try:
        yield limiter
    finally:
        await limiter.close()


@pytest.fixture
async def limiter(redis: Redis, sandbox: Sandbox, pool: asyncpg.Pool) -> AsyncIterator[RateLimiter]:
    async with _limiter(redis, sandbox, pool) as limiter:
        yield limiter


@pytest.fixture
async def fallback(down: Redis, sandbox: Sandbox, pool: asyncpg.Pool) -> AsyncIterator[RateLimiter]:
    """A limiter whose Redis is down: it admits through Postgres."""
    async with _limiter(down, sandbox, pool) as limiter:
        yield limiter


def _tenant(**limits: int) -> Tenant:
    return Tenant(f"t-{uuid.uuid4().hex[:8]}", **limits)  # type: ignore[arg-type]


async def test_concurrent_requests_admit_exactly_the_limit(limiter: RateLimiter) -> None:
    tenant = _tenant(rpm_per_key=5, rpm_per_tenant=7)
    decisions = await asyncio.gather(
        *(limiter.admit(f"key:{i % 2}-{tenant.name}", tenant, 1) for i in range(40))
    )
    assert sum(d.allowed for d in decisions) == 7
    refused = [d for d in decisions if not d.allowed]
    assert {d.limit for d in refused} <= {"rpm_per_key", "rpm_per_tenant"}
    assert all(d.retry_after_s is not None and 0 < d.retry_after_s <= 60 for d in refused)


async def test_tokens_per_minute_count_costs(limiter: RateLimiter) -> None:
    tenant = _tenant(tpm_per_tenant=100)
    assert (await limiter.admit("k", tenant, 60)).allowed
    refused = await limiter.admit("k", tenant, 60)
    assert not refused.allowed and refused.limit == "tpm_per_tenant"
    assert (await limiter.admit("k", tenant, 40)).allowed  # exactly the rest fits
    never = await limiter.admit("k", tenant, 101)
    assert not never.allowed and never.retry_after_s is None  # can never fit


async def test_no_limits_no_redis_call() -> None:
    redis = Redis.from_url(NOWHERE)  # must not be asked, nor Postgres
    try:
        limiter = RateLimiter(redis, RedisKeys(), None)  # type: ignore[arg-type]
        assert (await limiter.admit("k", Tenant("t"), 10)).allowed
    finally:
        await redis.aclose()


async def test_redis_down_postgres_admits_exactly_the_limit(fallback: RateLimiter) -> None:
    tenant = _tenant(rpm_per_key=5, rpm_per_tenant=7)
    decisions = await asyncio.gather(
        *(fallback.admit(f"key:{i % 2}-{tenant.name}", tenant, 1) for i in range(40))
    )
    assert sum(d.allowed for d in decisions) == 7
    refused = [d for d in decisions if not d.allowed]
    assert {d.limit for d in refused} <= {"rpm_per_key", "rpm_per_tenant"}
    assert all(d.retry_after_s is not None and 0 < d.retry_after_s <= 60 for d in refused)
    tpm = _tenant(tpm_per_tenant=100)
    assert (await fallback.admit("k", tpm, 60)).allowed
    assert not (await fallback.admit("k", tpm, 60)).allowed
    assert (await fallback.admit("k", tpm, 40)).allowed
    assert (await fallback.admit("k", tpm, 101)).retry_after_s is None


async def test_the_limit_holds_across_the_switch_and_back(
    limiter: RateLimiter, fallback: RateLimiter, redis: Redis, sandbox: Sandbox
) -> None:
    """3 admitted by Redis, then Redis is gone: Postgres admits only the rest. Then a Redis
    that restarted empty gets the whole minute back before it admits again."""
    tenant = _tenant(rpm_per_tenant=8)
    assert all([(await limiter.admit("k", tenant, 1)).allowed for _ in range(3)])
    await asyncio.sleep(3 * FLUSH_S)  # copied to Postgres behind (at once if it fails)
    during = await asyncio.gather(*(fallback.admit("k", tenant, 1) for _ in range(10)))
    assert sum(d.allowed for d in during) == 5
    log = sandbox.keys.rate_log("rpm_per_tenant", tenant.name)
    await redis.delete(log, log + ":sum", sandbox.keys.rate_log("window", "restored"))
    after = await asyncio.gather(*(limiter.admit("k", tenant, 1) for _ in range(5)))
    assert not any(d.allowed for d in after)
    assert await redis.zcard(log) == 8 and int(await redis.get(log + ":sum") or 0) == 8
