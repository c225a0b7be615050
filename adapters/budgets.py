"""Daily token budgets in Postgres: reserved atomically before a turn, settled after it.

Postgres is the ledger, not a fallback for one in Redis, because a budget must outlive
Redis: this mesh's Redis keeps nothing on disk, so a restart used to forget the day's
spending and admit a second budget's worth. A Redis ledger with a Postgres copy would
not fix that cheaply: to know at the switch what was held by turns in flight, every
reservation must reach Postgres too (Postgres is then the ledger anyway), and while one
policy worker still reserves in Redis and another already in Postgres, two ledgers grant
the same tokens. With one ledger there is no switch, nothing to reconcile when Redis
returns, and no overspend across an outage. The price: per budgeted turn, two Postgres
round trips in the policy stage (read the usage for OPA, then reserve) and one in the
persistence stage (settle), each a single statement. Tenants and personas without a
budget never reach the ledger (the policy stage skips it; the persistence stage settles
only turns that reserved tokens), so the unlimited hot path has no counter I/O.

Tables and functions: migrations/015_counters_fallback.sql. `budget_counters` holds
`used` (settled tokens) and `reserved` (tokens held by turns in flight) per (tenant,
persona, UTC day); `budget_holds` one row per turn. `budget_reserve` adds the estimate
with `INSERT ... ON CONFLICT DO UPDATE ... WHERE used + reserved + estimate <= budget`:
the row lock serialises concurrent turns, so N of them never reserve more than the
budget, and a repeat of the turn returns its first hold. `budget_settle` releases the
hold and adds the actual usage to the day the turn reserved in, once per turn (event_id)
whatever the redeliveries; a failed turn settles its (usually zero) usage.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

import asyncpg

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.ports import BudgetUsage, Reservation
from gateway_runtime.postgres import PG_ERRORS

HOLDS_KEPT_DAYS = 3  # settled or not, holds of older days are deleted
_CLEANUP_EVERY_S = 3600.0


def day_of(ts: float) -> date:
    """The UTC day a budget bucket covers."""
    return datetime.fromtimestamp(ts, tz=UTC).date()


def seconds_to_reset(ts: float) -> int:
    return 86400 - int(ts) % 86400


class PostgresBudgetLedger:
    """The `Budgets` port in Postgres; one instance per process."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._next_cleanup = time.monotonic() + _CLEANUP_EVERY_S

    async def usage(self, tenant: str, persona: str) -> BudgetUsage:
        now = time.time()
        try:
            row = await self._pool.fetchrow(
                "SELECT used, reserved FROM budget_counters"
                " WHERE tenant = $1 AND persona = $2 AND day = $3",
                tenant,
                persona,
                day_of(now),
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"budget counters unavailable: {exc!r}") from exc
        used, reserved = (row["used"], row["reserved"]) if row else (0, 0)
        return BudgetUsage(int(used), int(reserved), seconds_to_reset(now))

    async def today(self) -> dict[tuple[str, str], BudgetUsage]:
        """Every (tenant, persona) budget spent on today (UTC), for the ingress's metrics:
        one statement over one day's rows."""
        now = time.time()
        try:
            rows = await self._pool.fetch(
                "SELECT tenant, persona, used, reserved FROM budget_counters WHERE day = $1",
                day_of(now),
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"budget counters unavailable: {exc!r}") from exc
        reset = seconds_to_reset(now)
        return {
            (r["tenant"], r["persona"]): BudgetUsage(int(r["used"]), int(r["reserved"]), reset)
            for r in rows
        }

    async def reserve(
        self, turn_id: str, tenant: str, persona: str, estimate: int, budget: int
    ) -> Reservation:
        """Hold `estimate` tokens for the turn if they fit; a repeat returns the first hold.
        A budget of 0 is unlimited: nothing is held, nothing is asked."""
        now = time.time()
        if budget <= 0:
            return Reservation(True, 0, BudgetUsage(0, 0, seconds_to_reset(now)))
        try:
            row = await self._pool.fetchrow(
                "SELECT granted, amount, used, reserved"
                " FROM budget_reserve($1, $2, $3, $4, $5, $6)",
                turn_id,
                tenant,
                persona,
                day_of(now),
                estimate,
                budget,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"budget reservation failed: {exc!r}") from exc
        assert row is not None  # a function with OUT parameters returns one row
        usage = BudgetUsage(int(row["used"]), int(row["reserved"]), seconds_to_reset(now))
        return Reservation(bool(row["granted"]), int(row["amount"]), usage)

    async def settle(self, turn_id: str, tenant: str, persona: str, actual_tokens: int) -> bool:
        """Release the turn's reservation and count its actual usage; False if done before."""
        try:
            done = await self._pool.fetchval(
                "SELECT budget_settle($1, $2, $3, $4, $5)",
                turn_id,
                tenant,
                persona,
                day_of(time.time()),
                max(0, actual_tokens),
            )
            await self._cleanup()
        except PG_ERRORS as exc:
            raise DependencyUnavailable(f"budget settlement failed: {exc!r}") from exc
        return bool(done)

    async def _cleanup(self) -> None:
        """Forget the holds of past days, at most once an hour per process."""
        if time.monotonic() < self._next_cleanup:
            return
        self._next_cleanup = time.monotonic() + _CLEANUP_EVERY_S
        await self._pool.execute(
            "DELETE FROM budget_holds WHERE day < current_date - $1::int", HOLDS_KEPT_DAYS
        )
