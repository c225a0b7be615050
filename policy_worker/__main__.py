"""`python -m policy_worker`: wires settings → adapters → the runtime's stage loop."""

from __future__ import annotations

import asyncio

from gateway_runtime.worker import fanout_publisher, redis_client, run_worker, serve_stage
from policy_worker.handler import PolicyHandler
from policy_worker.settings import PolicySettings
from schemas.topics import Topics


async def main(settings: PolicySettings, stop: asyncio.Event) -> None:
    async with redis_client(settings.redis_url) as redis:
        fanout = fanout_publisher(redis, settings)
        handler = PolicyHandler(
            topics=Topics.for_namespace(settings.kafka_namespace),
            fanout=fanout,
            require_auth=settings.gateway_require_auth,
        )
        await serve_stage(handler, settings, stop, fanout=fanout)


if __name__ == "__main__":
    settings = PolicySettings()
    run_worker(settings, lambda stop: main(settings, stop))
