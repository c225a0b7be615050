"""Daily token budgets in Redis: reserved atomically before a turn, settled after it.

One Redis hash per (tenant, persona, UTC day) holds `used` (settled tokens) and
`reserved` (tokens held by turns in flight). The policy stage reserves a turn's estimate
with one script that checks `used + reserved + estimate <= budget` and adds the estimate
in the same step, so N concurrent turns can never reserve more than the budget. The
persistence stage settles: the reservation is released and the actual usage added, once
per turn (event_id) whatever the redeliveries. A failed turn settles its (usually zero)
usage, which releases the reservation.

Keys (gateway_runtime/redis_keys.py): the bucket `<ns>:budget:<tenant>:<persona>:<day>`
(hash), the turn's reservation `<ns>:budget:resv:<event_id>` (bucket and amount) and its
settlement marker `<ns>:budget:settled:<event_id>`. The scripts touch the bucket named in
a reservation record, so they assume one Redis (not Redis Cluster), like the rest of the
mesh.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.ports import BudgetUsage, Reservation
from gateway_runtime.redis_keys import RedisKeys

BUCKET_TTL_S = 3 * 86400
RESERVATION_TTL_S = 2 * 86400

# KEYS[1] bucket, KEYS[2] reservation record; ARGV[1] estimate, ARGV[2] budget (0 = none),
# ARGV[3] bucket ttl, ARGV[4] reservation ttl. Returns {granted, amount, used, reserved}.
_RESERVE = """
local prev = redis.call('GET', KEYS[2])
if prev then
  local amount = tonumber(string.match(prev, ' (%d+)$'))
  return {1, amount, 0, 0}
end
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local estimate = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
if budget > 0 and used + reserved + estimate > budget then
  return {0, 0, used, reserved}
end
redis.call('HINCRBY', KEYS[1], 'reserved', estimate)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], KEYS[1] .. ' ' .. estimate, 'EX', ARGV[4])
return {1, estimate, used, reserved + estimate}
"""

# KEYS[1] settled marker, KEYS[2] reservation record, KEYS[3] bucket used when the turn
# reserved nothing; ARGV[1] actual tokens, ARGV[2] marker ttl, ARGV[3] bucket ttl.
_SETTLE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  return 0
end
local bucket, amount = KEYS[3], 0
local record = redis.call('GET', KEYS[2])
if record then
  local b, a = string.match(record, '^(.*) (%d+)$')
  bucket, amount = b, tonumber(a)
  redis.call('DEL', KEYS[2])
end
if amount > 0 then
  redis.call('HINCRBY', bucket, 'reserved', -amount)
end
redis.call('HINCRBY', bucket, 'used', tonumber(ARGV[1]))
redis.call('EXPIRE', bucket, ARGV[3])
return 1
"""


def day_of(ts: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts))


def seconds_to_reset(ts: float) -> int:
    return 86400 - int(ts) % 86400


class RedisBudgetLedger:
    """The `Budgets` port in Redis; one instance per process."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)

    async def usage(self, tenant: str, persona: str) -> BudgetUsage:
        now = time.time()
        try:
            used, reserved = await self._redis.hmget(
                self._keys.budget(tenant, persona, day_of(now)), "used", "reserved"
            )
        except RedisError as exc:
            raise DependencyUnavailable(f"budget counters unavailable: {exc!r}") from exc
        return BudgetUsage(int(used or 0), int(reserved or 0), seconds_to_reset(now))

    async def reserve(
        self, turn_id: str, tenant: str, persona: str, estimate: int, budget: int
    ) -> Reservation:
        """Hold `estimate` tokens for the turn if they fit; a repeat returns the first hold."""
        now = time.time()
        keys = [
            self._keys.budget(tenant, persona, day_of(now)),
            self._keys.budget_reservation(turn_id),
        ]
        args = [estimate, budget, BUCKET_TTL_S, RESERVATION_TTL_S]
        try:
            granted, amount, used, reserved = await self._reserve(keys=keys, args=args)
        except RedisError as exc:
            raise DependencyUnavailable(f"budget reservation failed: {exc!r}") from exc
        usage = BudgetUsage(int(used), int(reserved), seconds_to_reset(now))
        return Reservation(bool(granted), int(amount), usage)

    async def settle(self, turn_id: str, tenant: str, persona: str, actual_tokens: int) -> bool:
        """Release the turn's reservation and count its actual usage; False if done before."""
        keys = [
            self._keys.budget_settled(turn_id),
            self._keys.budget_reservation(turn_id),
            self._keys.budget(tenant, persona, day_of(time.time())),
        ]
        try:
            done = await self._settle(
                keys=keys, args=[max(0, actual_tokens), RESERVATION_TTL_S, BUCKET_TTL_S]
            )
        except RedisError as exc:
            raise DependencyUnavailable(f"budget settlement failed: {exc!r}") from exc
        return bool(done)
