"""Redis fan-out: how stages hand a session's events to whichever ingress streams them.

Each event is appended to the session's Redis stream (the durable, ordered log that
`Last-Event-ID` resumes from) and published on the session's live channel, atomically in
one script call. The stream entry id is the SSE event id, so a client can resume from the
log and then follow the live channel without a gap or a duplicate.

While Redis is unavailable, events go to the Postgres fallback log instead
(`event_log.py`), so no final answer is lost; the ingress reads both.

Client-visible event types: schemas/stream_events.py (the list the OpenAPI and AsyncAPI
documents give; docs/events.md describes each one's data).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.event_log import PostgresEventLog
from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys
from gateway_runtime.settings import CommonSettings
from schemas.events import ErrorInfo

# KEYS[1] stream, KEYS[2] live channel, KEYS[3] optional once-key (keeps the payload);
# ARGV[1] payload (JSON), ARGV[2] maxlen, ARGV[3] ttl seconds, ARGV[4] event type.
# The live message is "<stream id> <type>\n<payload>" so subscribers need not parse JSON.
_APPEND_AND_PUBLISH = """
if KEYS[3] ~= '' and redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', ARGV[3]) == false then
  return false
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 't', ARGV[4], 'e', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[2], id .. ' ' .. ARGV[4] .. '\\n' .. ARGV[1])
return id
"""


class FanoutPublisher:
    """The `Fanout` port: a session's client-visible events; one per process."""

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        *,
        maxlen: int,
        ttl_s: int,
        fallback: PostgresEventLog | None = None,
        gate: RedisGate | None = None,
    ) -> None:
        self._redis = redis
        self._gate = gate or RedisGate.of(redis)
        self._keys = keys
        self._fallback = fallback
        self._maxlen = maxlen
        self._ttl_s = ttl_s
        self._script = redis.register_script(_APPEND_AND_PUBLISH)

    @classmethod
    def from_settings(
        cls, redis: Redis, settings: CommonSettings, fallback: PostgresEventLog | None = None
    ) -> FanoutPublisher:
        """The process's publisher; with `fallback`, it survives a Redis outage."""
        return cls(
            redis,
            RedisKeys(settings.kafka_namespace),
            maxlen=settings.session_stream_maxlen,
            ttl_s=settings.session_stream_ttl_s,
            fallback=fallback,
        )

    async def publish(
        self,
        session_id: str,
        turn_id: str,
        event_type: str,
        data: dict[str, Any],
        *,
        once_key: str | None = None,
    ) -> str | None:
        """Append and publish one event; returns its stream id.

        With `once_key` (a `RedisKeys` name), the event is published at most once per
        key (e.g. the final answer of a turn that a crash made run twice); a repeat
        returns None.
        """
        ts_ms = int(time.time() * 1000)
        payload = json.dumps(
            {
                "type": event_type,
                "session_id": session_id,
                "turn_id": turn_id,
                "ts": ts_ms,
                "data": data,
            },
            separators=(",", ":"),
        )
        keys = [self._keys.stream(session_id), self._keys.live(session_id), once_key or ""]
        if self._fallback is not None and not self._gate.available():
            self._gate.fallback("fanout")
            return await self._fallback.append(
                session_id, turn_id, event_type, payload, ts_ms, once_key
            )
        try:
            result = await self._script(
                keys=keys, args=[payload, self._maxlen, self._ttl_s, event_type]
            )
        except RedisError as exc:
            if self._fallback is None:
                raise DependencyUnavailable(f"redis fan-out publish failed: {exc!r}") from exc
            self._gate.failed("fanout", exc)
            self._gate.fallback("fanout")
            return await self._fallback.append(
                session_id, turn_id, event_type, payload, ts_ms, once_key
            )
        if result is None:
            return None
        return result.decode() if isinstance(result, bytes) else str(result)

    async def recorded(self, once_key: str) -> dict[str, Any] | None:
        """The event published under `once_key`, if one was."""
        raw = None
        if self._fallback is None or self._gate.available():
            try:
                raw = await self._redis.get(once_key)
            except RedisError as exc:
                if self._fallback is None:
                    raise DependencyUnavailable(f"redis read failed: {exc!r}") from exc
                self._gate.failed("fanout", exc)
        if raw is None and self._fallback is not None:
            raw = await self._fallback.recorded(once_key)
        return json.loads(raw) if raw else None

    async def publish_error(self, session_id: str, turn_id: str, error: ErrorInfo) -> None:
        await self.publish(session_id, turn_id, "error", asdict(error))
