"""RPM/TPM limits per key and per tenant, shared by every ingress replica through Redis.

Each limit is a sliding one-minute log: a sorted set of the admitted requests (score =
Redis server time in ms, member = `<id>:<cost>`) plus the running sum of their costs.
One script call trims every counter the request touches, checks them all and, only if
all pass, records the request in all of them, so concurrent requests on any number of
replicas can never admit more than the limit in any 60 s window. The clock is Redis's
(`TIME`), so replicas with skewed clocks still agree.

A refused request learns when enough of the window will have expired for it to fit
(`retry_after_s`). TPM counts a turn's estimated tokens (message + the tenant's
max_output_tokens): the real usage is unknown until the turn ends.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.ports import Tenant
from gateway_runtime.redis_keys import RedisKeys

WINDOW_MS = 60_000

# KEYS: per counter its log (sorted set) then its sum. ARGV[1] window ms, ARGV[2] member
# id, then per counter its limit and this request's cost.
# Returns {1} when admitted, else {0, wait ms (-1 = never fits), index of the counter}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local n = #KEYS / 2
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
return {1}
"""


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: str = ""  # which one refused: rpm_per_key, rpm_per_tenant, tpm_per_key, ...
    limit_value: int = 0
    retry_after_s: float | None = None  # None: the request can never fit that limit


ADMITTED = RateDecision(True)


class RateLimiter:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._script = redis.register_script(_ADMIT)
        self._keys = keys

    async def admit(self, subject: str, tenant: Tenant, tokens: int) -> RateDecision:
        counters = [
            (name, self._keys.rate_log(name, who), limit, cost)
            for name, who, limit, cost in (
                ("rpm_per_key", subject, tenant.rpm_per_key, 1),
                ("rpm_per_tenant", tenant.name, tenant.rpm_per_tenant, 1),
                ("tpm_per_key", subject, tenant.tpm_per_key, tokens),
                ("tpm_per_tenant", tenant.name, tenant.tpm_per_tenant, tokens),
            )
            if limit > 0
        ]
        if not counters:
            return ADMITTED
        keys: list[str] = []
        args: list[str | int] = [WINDOW_MS, uuid.uuid4().hex]
        for _, key, limit, cost in counters:
            keys += [key, key + ":sum"]
            args += [limit, cost]
        try:
            result = await self._script(keys=keys, args=args)
        except RedisError as exc:
            raise DependencyUnavailable(f"rate limiter unavailable: {exc!r}") from exc
        if result[0] == 1:
            return ADMITTED
        name, _, limit, _ = counters[int(result[2]) - 1]
        wait_ms = int(result[1])
        return RateDecision(False, name, limit, None if wait_ms < 0 else max(wait_ms, 1) / 1000)
