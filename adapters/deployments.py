"""Health of model deployments, shared by every process through Redis.

A circuit breaker per deployment (closed → open after `threshold` failures within
`window`; open → half-open after `cooldown`, when exactly one probe request may go; the
probe's success closes it, its failure opens it again), and moving averages of
time-to-first-token and error rate. The LLM stage writes them; the ingress reads them for
`POST /v1/route` and `/metrics`. All transitions are Lua scripts, so replicas agree.

Without Redis the state is unknown: every call raises DependencyUnavailable at once
while the process's `RedisGate` says Redis is down (a hung Redis costs one timeout, not
one per call), and the LLM stage then treats every breaker as closed and calls the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys
from schemas.events import ModelProfile

_BREAKER = """
local key, op = KEYS[1], ARGV[1]
local now, threshold = tonumber(ARGV[2]), tonumber(ARGV[3])
local cooldown, window = tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HGET', key, 'state') or 'closed'
redis.call('PEXPIRE', key, 86400000)
if op == 'allow' then
  if state == 'open' then
    if now < tonumber(redis.call('HGET', key, 'open_until')) then return 'deny' end
    redis.call('HSET', key, 'state', 'half_open', 'probe_until', now + cooldown)
    return 'probe'
  elseif state == 'half_open' then
    if now < tonumber(redis.call('HGET', key, 'probe_until')) then return 'deny' end
    redis.call('HSET', key, 'probe_until', now + cooldown)
    return 'probe'
  end
  return 'allow'
elseif op == 'success' then
  redis.call('HSET', key, 'state', 'closed', 'failures', 0)
  return 'closed'
end
if state == 'half_open' then
  redis.call('HSET', key, 'state', 'open', 'open_until', now + cooldown)
  return 'open'
end
local started = tonumber(redis.call('HGET', key, 'window_start') or '0')
if now - started > window then
  redis.call('HSET', key, 'window_start', now, 'failures', 0)
end
local failures = redis.call('HINCRBY', key, 'failures', 1)
if failures >= threshold then
  redis.call('HSET', key, 'state', 'open', 'open_until', now + cooldown)
  return 'open'
end
return state
"""

_STATS = """
local key, alpha = KEYS[1], tonumber(ARGV[1])
local failed, latency = tonumber(ARGV[2]), tonumber(ARGV[3])
local err = tonumber(redis.call('HGET', key, 'error_rate') or ARGV[2])
redis.call('HSET', key, 'error_rate', err * (1 - alpha) + failed * alpha)
if latency >= 0 then
  local lat = tonumber(redis.call('HGET', key, 'ttft_ms') or ARGV[3])
  redis.call('HSET', key, 'ttft_ms', lat * (1 - alpha) + latency * alpha)
end
redis.call('HINCRBY', key, 'requests', 1)
redis.call('HINCRBY', key, 'failures', failed)
redis.call('PEXPIRE', key, 86400000)
return 1
"""


def deployment_name(profile: ModelProfile) -> str:
    """A deployment is known by its profile's name, `role/deployment_mode`: that is what
    breakers, statistics, metric labels and error messages show. Never its URL, which may
    name internal hosts and is for admin and operator eyes only."""
    return f"{profile.role}/{profile.deployment_mode}"


@dataclass(frozen=True, slots=True)
class DeploymentState:
    name: str
    breaker: str = "closed"
    ttft_ms: float | None = None
    error_rate: float = 0.0
    requests: int = 0


class DeploymentHealth:
    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        *,
        threshold: int = 5,
        cooldown_s: float = 30.0,
        window_s: float = 60.0,
        alpha: float = 0.2,
        gate: RedisGate | None = None,
    ) -> None:
        self._redis = redis
        self._gate = gate or RedisGate.of(redis)
        self._keys = keys
        self._breaker = redis.register_script(_BREAKER)
        self._stats = redis.register_script(_STATS)
        self._args = [threshold, int(cooldown_s * 1000), int(window_s * 1000)]
        self._alpha = alpha

    def _check(self) -> None:
        if not self._gate.available():
            self._gate.fallback("deployment_health")
            raise DependencyUnavailable("deployment state unknown: redis is unavailable")

    def _failed(self, what: str, exc: RedisError) -> DependencyUnavailable:
        self._gate.failed("deployment_health", exc)
        self._gate.fallback("deployment_health")
        return DependencyUnavailable(f"{what} unavailable: {exc!r}")

    async def _transition(self, name: str, op: str) -> str:
        self._check()
        try:
            result = await self._breaker(
                keys=[self._keys.breaker(name)], args=[op, int(time.time() * 1000), *self._args]
            )
        except RedisError as exc:
            raise self._failed("breaker state", exc) from exc
        return result.decode() if isinstance(result, bytes) else str(result)

    async def allow(self, name: str) -> str:
        """'allow', 'probe' (half-open: this request is the one probe) or 'deny'."""
        return await self._transition(name, "allow")

    async def succeeded(self, name: str, ttft_ms: float) -> str:
        return await self._record(name, failed=False, ttft_ms=ttft_ms)

    async def failed(self, name: str) -> str:
        """Record a failure; returns the breaker state after it."""
        return await self._record(name, failed=True, ttft_ms=-1.0)

    async def _record(self, name: str, *, failed: bool, ttft_ms: float) -> str:
        """The call's outcome in the stats and the breaker: one round trip for both."""
        self._check()
        op = "failure" if failed else "success"
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._stats(
                    keys=[self._keys.deployment_stats(name)],
                    args=[self._alpha, int(failed), ttft_ms],
                    client=pipe,
                )
                await self._breaker(
                    keys=[self._keys.breaker(name)],
                    args=[op, int(time.time() * 1000), *self._args],
                    client=pipe,
                )
                _, result = await pipe.execute()
        except RedisError as exc:
            raise self._failed("deployment stats", exc) from exc
        return result.decode() if isinstance(result, bytes) else str(result)

    async def state(self, name: str) -> DeploymentState:
        self._check()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._keys.breaker(name))
                pipe.hgetall(self._keys.deployment_stats(name))
                breaker, stats = await pipe.execute()
        except RedisError as exc:
            raise self._failed("deployment state", exc) from exc
        state = (breaker.get(b"state") or b"closed").decode()
        if state == "open" and int(breaker.get(b"open_until", 0)) <= time.time() * 1000:
            state = "half_open"  # the next request will be the probe
        return DeploymentState(
            name=name,
            breaker=state,
            ttft_ms=float(stats[b"ttft_ms"]) if b"ttft_ms" in stats else None,
            error_rate=float(stats.get(b"error_rate", 0.0)),
            requests=int(stats.get(b"requests", 0)),
        )

    async def all_states(self) -> list[DeploymentState]:
        self._check()
        try:
            names = {
                key.decode()[len(prefix) :]
                for prefix in (self._keys.breaker_prefix, self._keys.deployment_stats_prefix)
                async for key in self._redis.scan_iter(match=prefix + "*", count=500)
            }
        except RedisError as exc:
            raise self._failed("deployment state", exc) from exc
        return [await self.state(name) for name in sorted(names)]
