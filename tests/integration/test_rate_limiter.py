"""The sliding-window rate limiter's script on the real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway_runtime.ports import Tenant
from gateway_runtime.redis_keys import RedisKeys
from ingress.ratelimit import RateLimiter
from testbed.sandbox import Sandbox


@pytest.fixture
async def limiter(sandbox: Sandbox) -> AsyncIterator[RateLimiter]:
    redis = Redis.from_url(sandbox.redis_url)
    try:
        yield RateLimiter(redis, sandbox.keys)
    finally:
        await redis.aclose()


async def test_concurrent_requests_admit_exactly_the_limit(limiter: RateLimiter) -> None:
    tenant = Tenant(f"t-{uuid.uuid4().hex[:8]}", rpm_per_key=5, rpm_per_tenant=7)
    decisions = await asyncio.gather(
        *(limiter.admit(f"key:{i % 2}-{tenant.name}", tenant, 1) for i in range(40))
    )
    assert sum(d.allowed for d in decisions) == 7
    refused = [d for d in decisions if not d.allowed]
    assert {d.limit for d in refused} <= {"rpm_per_key", "rpm_per_tenant"}
    assert all(d.retry_after_s is not None and 0 < d.retry_after_s <= 60 for d in refused)


async def test_tokens_per_minute_count_costs(limiter: RateLimiter) -> None:
    tenant = Tenant(f"t-{uuid.uuid4().hex[:8]}", tpm_per_tenant=100)
    assert (await limiter.admit("k", tenant, 60)).allowed
    refused = await limiter.admit("k", tenant, 60)
    assert not refused.allowed and refused.limit == "tpm_per_tenant"
    assert (await limiter.admit("k", tenant, 40)).allowed  # exactly the rest fits
    never = await limiter.admit("k", tenant, 101)
    assert not never.allowed and never.retry_after_s is None  # can never fit


async def test_no_limits_no_redis_call() -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0")  # nothing listens: must not be asked
    try:
        assert (await RateLimiter(redis, RedisKeys()).admit("k", Tenant("t"), 10)).allowed
    finally:
        await redis.aclose()
