"""`python -m persistence_worker`: wires settings → adapters → the runtime's stage loop."""

from __future__ import annotations

import asyncio

import httpx

from adapters.budgets import PostgresBudgetLedger
from adapters.memory import open_memory
from gateway_runtime.postgres import create_pool
from gateway_runtime.settings import PersistenceSettings
from gateway_runtime.worker import fanout_publisher, redis_client, run_worker, serve_stage
from persistence_worker.handler import PersistenceHandler
from persistence_worker.store import PostgresTurnStore
from schemas.topics import Topics


async def main(settings: PersistenceSettings, stop: asyncio.Event) -> None:
    pool = await create_pool(settings, max_size=settings.max_in_flight // 4 + 2)
    try:
        async with (
            httpx.AsyncClient(timeout=5.0) as http,
            redis_client(settings) as redis,
        ):
            handler = PersistenceHandler(
                topics=Topics.for_namespace(settings.kafka_namespace),
                store=PostgresTurnStore(pool),
                budgets=PostgresBudgetLedger(pool),
                memory=open_memory(settings.somabrain_url, pool, http),
            )
            await serve_stage(
                handler, settings, stop, fanout=fanout_publisher(redis, settings, pool)
            )
    finally:
        await pool.close()


if __name__ == "__main__":
    settings = PersistenceSettings()
    run_worker(settings, lambda stop: main(settings, stop))
