"""`python -m policy_worker`: wires settings → adapters → the runtime's stage loop."""

from __future__ import annotations

import asyncio

import httpx

from adapters.admissions import PostgresAdmissions
from adapters.budgets import PostgresBudgetLedger
from adapters.opa import OpaClient
from adapters.openfga import FgaAuthorizer
from adapters.tenants import TenantDirectory
from gateway_runtime.postgres import create_pool
from gateway_runtime.settings import PolicySettings
from gateway_runtime.worker import fanout_publisher, redis_client, run_worker, serve_stage
from policy_worker.handler import PolicyHandler
from schemas.topics import Topics


async def main(settings: PolicySettings, stop: asyncio.Event) -> None:
    limits = httpx.Limits(max_connections=settings.max_in_flight, max_keepalive_connections=32)
    authorizer = FgaAuthorizer(settings)
    # admissions, budgets, the fan-out's fallback log
    pool = await create_pool(settings, max_size=8)
    try:
        async with (
            redis_client(settings) as redis,
            httpx.AsyncClient(limits=limits) as http,
        ):
            fanout = fanout_publisher(redis, settings, pool)
            handler = PolicyHandler(
                topics=Topics.for_namespace(settings.kafka_namespace),
                fanout=fanout,
                require_auth=settings.gateway_require_auth,
                authorizer=authorizer,
                engine=OpaClient(http, settings),
                budgets=PostgresBudgetLedger(pool),
                tenants=TenantDirectory(settings.tenants_file),
                admissions=PostgresAdmissions(pool),
            )
            await serve_stage(handler, settings, stop, fanout=fanout)
    finally:
        await authorizer.close()
        await pool.close()


if __name__ == "__main__":
    settings = PolicySettings()
    run_worker(settings, lambda stop: main(settings, stop))
