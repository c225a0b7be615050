"""The budget ledger's Redis scripts on the real Redis: atomic, idempotent, released."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from adapters.budgets import RedisBudgetLedger, day_of
from testbed.sandbox import Sandbox


@pytest.fixture
async def ledger(sandbox: Sandbox) -> AsyncIterator[tuple[RedisBudgetLedger, Redis]]:
    # a blocking pool: 300 concurrent calls queue for its connections instead of failing
    pool = BlockingConnectionPool.from_url(sandbox.redis_url, max_connections=50)
    redis = Redis(connection_pool=pool)
    try:
        yield RedisBudgetLedger(redis, sandbox.keys), redis
    finally:
        await redis.aclose()
        await pool.disconnect()


async def test_concurrent_reservations_never_exceed_the_budget(
    ledger: tuple[RedisBudgetLedger, Redis],
) -> None:
    budgets, _ = ledger
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    held = await asyncio.gather(
        *(budgets.reserve(uuid.uuid4().hex, tenant, "p", 7, 100) for _ in range(300))
    )
    assert sum(h.granted for h in held) == 14  # 14 * 7 = 98 <= 100 < 105
    usage = await budgets.usage(tenant, "p")
    assert (usage.used, usage.reserved) == (0, 98)


async def test_reserve_and_settle_are_idempotent_per_turn(
    ledger: tuple[RedisBudgetLedger, Redis], sandbox: Sandbox
) -> None:
    budgets, redis = ledger
    tenant, turn = f"t-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    first = await budgets.reserve(turn, tenant, "p", 30, 100)
    again = await budgets.reserve(turn, tenant, "p", 30, 100)  # a redelivered turn
    assert first.granted and again.granted and again.amount == 30
    assert (await budgets.usage(tenant, "p")).reserved == 30
    assert await budgets.settle(turn, tenant, "p", 42) is True
    assert await budgets.settle(turn, tenant, "p", 42) is False  # redelivered completion
    usage = await budgets.usage(tenant, "p")
    assert (usage.used, usage.reserved) == (42, 0)
    assert int(await redis.ttl(sandbox.keys.budget(tenant, "p", day_of(time.time())))) > 86400


async def test_a_failed_turn_releases_its_reservation(
    ledger: tuple[RedisBudgetLedger, Redis],
) -> None:
    budgets, _ = ledger
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    turn = uuid.uuid4().hex
    assert (await budgets.reserve(turn, tenant, "p", 80, 100)).granted
    assert not (await budgets.reserve(uuid.uuid4().hex, tenant, "p", 80, 100)).granted
    await budgets.settle(turn, tenant, "p", 0)
    assert (await budgets.reserve(uuid.uuid4().hex, tenant, "p", 80, 100)).granted


async def test_unlimited_budget_and_unreserved_settlement(
    ledger: tuple[RedisBudgetLedger, Redis],
) -> None:
    budgets, _ = ledger
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    assert (await budgets.reserve(uuid.uuid4().hex, tenant, "p", 10**9, 0)).granted
    await budgets.settle(uuid.uuid4().hex, tenant, "q", 12)  # a turn that reserved nothing
    assert (await budgets.usage(tenant, "q")).used == 12
