"""RPM/TPM limits per key and per tenant, shared by every ingress replica: in Redis, and
in Postgres while Redis is unavailable.

Each limit is a sliding one-minute log: a sorted set of the admitted requests (score =
Redis server time in ms, member = `<id>:<cost>`) plus the running sum of their costs.
One script call trims every counter the request touches, checks them all and, only if
all pass, records the request in all of them, so concurrent requests on any number of
replicas can never admit more than the limit in any 60 s window. The clock is Redis's
(`TIME`), so replicas with skewed clocks still agree.

While Redis is unavailable (the process's `RedisGate` says so), the same check runs in
Postgres: `rate_admit` (migrations/015) locks the request's counters, sums each one's
window in `rate_admissions` and records the request only if all fit. For a limit to
hold across the switch, Postgres must know what Redis admitted in the last minute, so
each process copies its Redis admissions there (write-behind: within FLUSH_S, and at
once when it finds Redis down, before its first Postgres admission). On the way back,
before its first Redis admission after an outage, a process folds the last minute of
`rate_admissions` into the Redis logs: ZADD NX per member, so each admission is counted
once whichever replicas fold, and a Redis that restarted empty gets back what it forgot.
A restart nobody saw as an outage is caught too: the script refuses to run on a Redis
without the marker the fold sets. Replicas switch independently; for about FLUSH_S after
Redis fails and a probe interval after it returns, each ledger may not yet see the
other's newest admissions. That is the bound on what the switch can admit in excess.

A refused request learns when enough of the window will have expired for it to fit
(`retry_after_s`). TPM counts a turn's estimated tokens (message + the tenant's
max_output_tokens): the real usage is unknown until the turn ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.ports import RateDecision, Tenant
from gateway_runtime.postgres import PG_ERRORS
from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys

log = logging.getLogger(__name__)

WINDOW_MS = 60_000
FLUSH_S = 0.25  # how soon Redis admissions are copied to Postgres
_CLEANUP_EVERY_S = 30.0
_FOLD_CHUNK = 500

# KEYS: per counter its log (sorted set) then its sum, then the fold marker. ARGV[1] window
# ms, ARGV[2] member id, then per counter its limit and this request's cost.
# Returns {1, now ms} when admitted, {-1} when Redis lacks the last minute (no marker),
# else {0, wait ms (-1 = never fits), index of the counter}.
_ADMIT = """
if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
  return {-1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local n = (#KEYS - 1) / 2
local refused, wait = 0, 0
for i = 1, n do
  local log, sum = KEYS[2 * i - 1], KEYS[2 * i]
  local limit, cost = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
  if #old > 0 then
    local freed = 0
    for _, m in ipairs(old) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
    redis.call('DECRBY', sum, freed)
  end
  local total = tonumber(redis.call('GET', sum) or '0')
  if total + cost > limit then
    local w = -1
    if cost <= limit then
      local need, freed = total + cost - limit, 0
      local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        freed = freed + tonumber(string.match(entries[j], ':(%d+)$'))
        if freed >= need then
          w = tonumber(entries[j + 1]) + window - now
          break
        end
      end
    end
    if refused == 0 or w < 0 or (wait >= 0 and w > wait) then
      refused, wait = i, w
    end
  end
end
if refused > 0 then
  return {0, wait, refused}
end
for i = 1, n do
  local log, sum = KEYS[2 * i - 1], KEYS[2 * i]
  local cost = ARGV[2 + 2 * i]
  redis.call('ZADD', log, now, ARGV[2] .. ':' .. cost)
  redis.call('INCRBY', sum, cost)
  redis.call('PEXPIRE', log, window)
  redis.call('PEXPIRE', sum, window)
end
return {1, now}
"""

# KEYS: per counter its log then its sum. ARGV[1] window ms, then per admission the index
# of its counter, its member and its time (ms). Adds each admission still in the window
# that the log lacks. Returns how many were added.
_FOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local added = 0
for j = 2, #ARGV, 3 do
  local i, member, at = tonumber(ARGV[j]), ARGV[j + 1], tonumber(ARGV[j + 2])
  local log, sum = KEYS[2 * i - 1], KEYS[2 * i]
  if at > now - window and redis.call('ZADD', log, 'NX', at, member) == 1 then
    redis.call('INCRBY', sum, tonumber(string.match(member, ':(%d+)$')))
    redis.call('PEXPIRE', log, window)
    redis.call('PEXPIRE', sum, window)
    added = added + 1
  end
end
return added
"""


ADMITTED = RateDecision(True)


@dataclass(frozen=True, slots=True)
class _Counter:
    name: str
    key: str
    limit: int
    cost: int


# A copied admission: counter key, time (ms), member, cost.
_Row = tuple[str, int, str, int]


class RateLimiter:
    """One per ingress process; `close` copies what is left to Postgres."""

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        pool: asyncpg.Pool,
        *,
        gate: RedisGate | None = None,
        wait_s: float | None = None,
        flush_s: float = FLUSH_S,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._pool = pool
        self._gate = gate or RedisGate.of(redis)
        self._wait_s = wait_s  # per admission script call (None: the socket timeout)
        self._admit_script = redis.register_script(_ADMIT)
        self._fold_script = redis.register_script(_FOLD)
        self._marker = keys.rate_log("window", "restored")
        self._folded = self._gate.outages
        self._fold_lock = asyncio.Lock()
        self._pending: list[_Row] = []
        self._flush_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._flush_s = flush_s
        self._next_cleanup = 0.0

    def _counters(self, subject: str, tenant: Tenant, tokens: int) -> list[_Counter]:
        return [
            _Counter(name, self._keys.rate_log(name, who), limit, cost)
            for name, who, limit, cost in (
                ("rpm_per_key", subject, tenant.rpm_per_key, 1),
                ("rpm_per_tenant", tenant.name, tenant.rpm_per_tenant, 1),
                ("tpm_per_key", subject, tenant.tpm_per_key, tokens),
                ("tpm_per_tenant", tenant.name, tenant.tpm_per_tenant, tokens),
            )
            if limit > 0
        ]

    async def admit(self, subject: str, tenant: Tenant, tokens: int) -> RateDecision:
        counters = self._counters(subject, tenant, tokens)
        if not counters:
            return ADMITTED
        member = uuid.uuid4().hex
        if self._gate.available():
            try:
                return await self._admit_redis(counters, member)
            except (RedisError, TimeoutError) as exc:
                # If Redis did record it after all, it did so under `member`, the name
                # Postgres records it under too: the fold-back will not count it twice.
                self._gate.failed("rate_limiter", exc)
        self._gate.fallback("rate_limiter")
        return await self._admit_postgres(counters, member)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        try:
            await self._flush()
        except PG_ERRORS as exc:
            log.warning("rate-limit admissions not copied to Postgres: %r", exc)

    # ---- Redis -------------------------------------------------------------------------

    async def _admit_redis(self, counters: list[_Counter], member: str) -> RateDecision:
        if self._folded != self._gate.outages:
            await self._fold_back()
        keys: list[str] = []
        args: list[str | int] = [WINDOW_MS, member]
        for counter in counters:
            keys += [counter.key, counter.key + ":sum"]
            args += [counter.limit, counter.cost]
        keys.append(self._marker)
        async with asyncio.timeout(self._wait_s):
            result = await self._admit_script(keys=keys, args=args)
        if int(result[0]) == -1:  # a Redis that restarted: give it the last minute first
            await self._fold_back(restarted=True)
            async with asyncio.timeout(self._wait_s):
                result = await self._admit_script(keys=keys, args=args)
            if int(result[0]) == -1:
                raise RedisError("rate-limit windows could not be restored")
        if int(result[0]) == 1:
            self._copy(counters, member, int(result[1]))
            return ADMITTED
        return _refusal(counters, int(result[2]), int(result[1]))

    async def _fold_back(self, *, restarted: bool = False) -> None:
        """Give Redis the admissions of the last minute it may lack, exactly once each."""
        async with self._fold_lock:
            outages = self._gate.outages
            if restarted and await self._redis.exists(self._marker):
                return  # another call restored it meanwhile
            if not restarted and self._folded == outages:
                return
            try:
                await self._flush()
                rows = await self._pool.fetch(
                    "SELECT counter, at_ms, member FROM rate_admissions"
                    " WHERE at_ms > (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $1",
                    WINDOW_MS,
                )
            except PG_ERRORS as exc:
                log.warning("rate limits not restored to Redis (Postgres: %r)", exc)
                rows = []
            added = 0
            for start in range(0, len(rows), _FOLD_CHUNK):
                added += await self._fold_chunk(rows[start : start + _FOLD_CHUNK])
            await self._redis.set(self._marker, 1)
            self._folded = outages
        log.info(
            "rate-limit windows restored to Redis: %d admissions of the last minute, %d new",
            len(rows),
            added,
        )

    async def _fold_chunk(self, rows: list[asyncpg.Record]) -> int:
        index: dict[str, int] = {}
        keys: list[str] = []
        args: list[str | int] = [WINDOW_MS]
        for row in rows:
            counter = row["counter"]
            if counter not in index:
                index[counter] = len(index) + 1
                keys += [counter, counter + ":sum"]
            args += [index[counter], row["member"], row["at_ms"]]
        return int(await self._fold_script(keys=keys, args=args))

    # ---- Postgres ----------------------------------------------------------------------

    async def _admit_postgres(self, counters: list[_Counter], member: str) -> RateDecision:
        try:
            await self._flush()  # what this process admitted through Redis counts too
            row = await self._pool.fetchrow(
                "SELECT admitted, wait_ms, refused FROM rate_admit($1, $2, $3, $4, $5)",
                [c.key for c in counters],
                [c.limit for c in counters],
                [c.cost for c in counters],
                member,
                WINDOW_MS,
            )
        except PG_ERRORS as exc:
            raise DependencyUnavailable(
                f"rate limiter unavailable (Redis and Postgres): {exc!r}"
            ) from exc
        assert row is not None  # a function with OUT parameters returns one row
        if row["admitted"]:
            return ADMITTED
        return _refusal(counters, int(row["refused"]), int(row["wait_ms"]))

    def _copy(self, counters: list[_Counter], member: str, at_ms: int) -> None:
        """Note a Redis admission for Postgres (write-behind, within FLUSH_S)."""
        self._pending += [(c.key, at_ms, f"{member}:{c.cost}", c.cost) for c in counters]
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self._flush_s)
        try:
            await self._flush()
        except PG_ERRORS as exc:
            log.warning("rate-limit admissions not copied to Postgres yet: %r", exc)

    async def _flush(self) -> None:
        async with self._flush_lock:
            rows, self._pending = self._pending, []
            try:
                if rows:
                    await self._pool.execute(
                        "INSERT INTO rate_admissions (counter, at_ms, member, cost)"
                        " SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[])"
                        " ON CONFLICT DO NOTHING",
                        *(list(column) for column in zip(*rows, strict=True)),
                    )
                await self._cleanup()
            except PG_ERRORS:
                horizon = int(time.time() * 1000) - WINDOW_MS  # older ones count no more
                self._pending = [r for r in rows if r[1] > horizon] + self._pending
                raise

    async def _cleanup(self) -> None:
        """Drop admissions older than two windows, at most every 30 s per process."""
        if time.monotonic() < self._next_cleanup:
            return
        self._next_cleanup = time.monotonic() + _CLEANUP_EVERY_S
        await self._pool.execute(
            "DELETE FROM rate_admissions"
            " WHERE at_ms < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $1",
            2 * WINDOW_MS,
        )


def _refusal(counters: list[_Counter], index: int, wait_ms: int) -> RateDecision:
    counter = counters[index - 1]
    retry_after = None if wait_ms < 0 else max(wait_ms, 1) / 1000
    return RateDecision(False, counter.name, counter.limit, retry_after)
