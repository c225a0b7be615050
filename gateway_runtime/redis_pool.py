"""The one way processes of the mesh open Redis: a bounded pool that queues, not fails.

redis-py's default async pool refuses a command once its connections are all busy
("Too many connections"); under load that turned fan-out publishes into needless
fallbacks. A blocking pool makes a burst wait for a free connection instead.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis


def open_redis(url: str, *, max_connections: int = 128, wait_s: float = 5.0) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait_s,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)
