"""The one way processes of the mesh open Redis: a bounded pool that queues, not fails.

redis-py's default async pool refuses a command once its connections are all busy
("Too many connections"); under load that turned fan-out publishes into needless
fallbacks. A blocking pool makes a burst wait for a free connection instead.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway_runtime.settings import CommonSettings


def open_redis(
    settings: CommonSettings, *, max_connections: int = 128, wait_s: float = 5.0
) -> Redis:
    """REDIS_TIMEOUT_S bounds every command: a hung Redis (SIGSTOP) answers with a
    TimeoutError, a RedisError, like a stopped one."""
    timeout_s = settings.redis_timeout_s
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=wait_s,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=30,
        # A pooled connection a Redis restart left dead fails once: the command is tried
        # again on a fresh connection. Only for connection errors: a timeout (a hung
        # Redis) is not retried, so a call waits REDIS_TIMEOUT_S once.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis(connection_pool=pool)
