"""`python -m tool_dispatcher`: wires settings → adapters → the runtime's stage loop."""

from __future__ import annotations

import asyncio

from adapters.tenants import TenantDirectory
from gateway_runtime.postgres import create_pool
from gateway_runtime.redis_keys import RedisKeys
from gateway_runtime.settings import ToolSettings
from gateway_runtime.worker import fanout_publisher, redis_client, run_worker, serve_stage
from schemas.topics import Topics
from tool_dispatcher.handler import ToolDispatcher
from tool_dispatcher.registry import ToolRegistry
from tool_dispatcher.tools import BUILTIN_TOOLS


async def main(settings: ToolSettings, stop: asyncio.Event) -> None:
    pool = await create_pool(settings, max_size=2)
    try:
        async with redis_client(settings) as redis:
            # Like the LLM stage: while Redis is down, tool results go to the Postgres log.
            fanout = fanout_publisher(redis, settings, pool)
            handler = ToolDispatcher(
                topics=Topics.for_namespace(settings.kafka_namespace),
                keys=RedisKeys(settings.kafka_namespace),
                registry=ToolRegistry(BUILTIN_TOOLS),
                tenants=TenantDirectory(settings.tenants_file),
                fanout=fanout,
                max_result_chars=settings.tool_result_max_chars,
            )
            await serve_stage(handler, settings, stop, fanout=fanout)
    finally:
        await pool.close()


if __name__ == "__main__":
    settings = ToolSettings()
    run_worker(settings, lambda stop: main(settings, stop))
