"""The budget ledger's Postgres functions on the real Postgres: atomic, idempotent, released."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from adapters.budgets import PostgresBudgetLedger


@pytest.fixture
def budgets(pool: asyncpg.Pool) -> PostgresBudgetLedger:
    return PostgresBudgetLedger(pool)


async def test_concurrent_reservations_never_exceed_the_budget(
    budgets: PostgresBudgetLedger,
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    held = await asyncio.gather(
        *(budgets.reserve(uuid.uuid4().hex, tenant, "p", 7, 100) for _ in range(300))
    )
    assert sum(h.granted for h in held) == 14  # 14 * 7 = 98 <= 100 < 105
    refused = [h for h in held if not h.granted]
    assert all(h.usage.used + h.usage.reserved + 7 > 100 for h in refused)
    usage = await budgets.usage(tenant, "p")
    assert (usage.used, usage.reserved) == (0, 98)


async def test_reserve_and_settle_are_idempotent_per_turn(budgets: PostgresBudgetLedger) -> None:
    tenant, turn = f"t-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    first, again = await asyncio.gather(  # a redelivered turn, even at the same moment
        budgets.reserve(turn, tenant, "p", 30, 100), budgets.reserve(turn, tenant, "p", 30, 100)
    )
    assert first.granted and again.granted and first.amount == again.amount == 30
    assert (await budgets.usage(tenant, "p")).reserved == 30
    settled = await asyncio.gather(*(budgets.settle(turn, tenant, "p", 42) for _ in range(3)))
    assert sorted(settled) == [False, False, True]  # redelivered completions
    assert (await budgets.reserve(turn, tenant, "p", 30, 100)).amount == 30  # holds nothing new
    usage = await budgets.usage(tenant, "p")
    assert (usage.used, usage.reserved) == (42, 0)


async def test_a_failed_turn_releases_its_reservation(budgets: PostgresBudgetLedger) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    turn = uuid.uuid4().hex
    assert (await budgets.reserve(turn, tenant, "p", 80, 100)).granted
    assert not (await budgets.reserve(uuid.uuid4().hex, tenant, "p", 80, 100)).granted
    await budgets.settle(turn, tenant, "p", 0)
    assert (await budgets.reserve(uuid.uuid4().hex, tenant, "p", 80, 100)).granted


async def test_unlimited_budget_and_unreserved_settlement(budgets: PostgresBudgetLedger) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    unlimited = await budgets.reserve(uuid.uuid4().hex, tenant, "p", 10**9, 0)
    assert unlimited.granted and unlimited.amount == 0  # nothing held, nothing asked
    assert (await budgets.usage(tenant, "p")).reserved == 0
    turn = uuid.uuid4().hex
    assert await budgets.settle(turn, tenant, "q", 12)  # a turn that reserved nothing
    assert not await budgets.settle(turn, tenant, "q", 12)
    assert (await budgets.usage(tenant, "q")).used == 12


async def test_no_budget_no_postgres() -> None:
    """The unlimited path asks nothing: a ledger on a closed pool still answers."""
    ledger = PostgresBudgetLedger(None)  # type: ignore[arg-type]
    assert (await ledger.reserve("t", "tenant", "p", 5, 0)).granted


async def test_today_lists_every_budget_spent_on_today(budgets: PostgresBudgetLedger) -> None:
    """What the ingress's budget gauges read (ingress/metrics.py)."""
    tenant, turn = f"t-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    assert (await budgets.reserve(turn, tenant, "a", 50, 100)).granted
    assert (await budgets.reserve(uuid.uuid4().hex, tenant, "b", 20, 100)).granted
    await budgets.settle(turn, tenant, "a", 12)
    today = await budgets.today()
    assert (today[(tenant, "a")].used, today[(tenant, "a")].reserved) == (12, 0)
    assert (today[(tenant, "b")].used, today[(tenant, "b")].reserved) == (0, 20)
