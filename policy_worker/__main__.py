"""`python -m policy_worker`: wires settings → adapters → the runtime's stage loop."""

from __future__ import annotations

import asyncio

import httpx

from gateway_runtime.authz import FgaAuthorizer
from gateway_runtime.budget import RedisBudgetLedger
from gateway_runtime.opa import OpaClient
from gateway_runtime.postgres import create_pool
from gateway_runtime.tenants import TenantDirectory
from gateway_runtime.worker import fanout_publisher, redis_client, run_worker, serve_stage
from policy_worker.handler import PolicyHandler
from policy_worker.settings import PolicySettings
from schemas.topics import Topics


async def main(settings: PolicySettings, stop: asyncio.Event) -> None:
    limits = httpx.Limits(max_connections=settings.max_in_flight, max_keepalive_connections=32)
    authorizer = FgaAuthorizer(settings)
    pool = await create_pool(settings.postgres_dsn, max_size=2)  # the fan-out's fallback log
    try:
        async with (
            redis_client(settings.redis_url) as redis,
            httpx.AsyncClient(limits=limits) as http,
        ):
            fanout = fanout_publisher(redis, settings, pool)
            handler = PolicyHandler(
                topics=Topics.for_namespace(settings.kafka_namespace),
                fanout=fanout,
                require_auth=settings.gateway_require_auth,
                authorizer=authorizer,
                engine=OpaClient(http, settings),
                budgets=RedisBudgetLedger(redis),
                tenants=TenantDirectory(),
            )
            await serve_stage(handler, settings, stop, fanout=fanout)
    finally:
        await authorizer.close()
        await pool.close()


if __name__ == "__main__":
    settings = PolicySettings()
    run_worker(settings, lambda stop: main(settings, stop))
