"""`python -m context_worker`: wires settings → adapters → the runtime's stage loop."""

from __future__ import annotations

import asyncio

import httpx

from adapters.memory import open_memory
from adapters.profiles import CachedProfiles, ProfileStore, default_profile
from adapters.tenants import TenantDirectory
from context_worker.handler import ContextHandler
from context_worker.transcript import PostgresTranscript
from gateway_runtime.postgres import create_pool
from gateway_runtime.settings import ContextSettings
from gateway_runtime.worker import fanout_publisher, redis_client, run_worker, serve_stage
from schemas.topics import Topics


async def main(settings: ContextSettings, stop: asyncio.Event) -> None:
    pool = await create_pool(settings)
    profiles = CachedProfiles(
        ProfileStore(pool), default_profile(settings), ttl_s=settings.profile_cache_ttl_s
    )
    await profiles.ensure_default()
    try:
        async with (
            httpx.AsyncClient(timeout=5.0) as http,
            redis_client(settings) as redis,
        ):
            fanout = fanout_publisher(redis, settings, pool)
            handler = ContextHandler(
                topics=Topics.for_namespace(settings.kafka_namespace),
                transcript=PostgresTranscript(pool),
                tenants=TenantDirectory(settings.tenants_file),
                profiles=profiles,
                memory=open_memory(settings.somabrain_url, pool, http),
                fanout=fanout,
                context_window_tokens=settings.context_window_tokens,
                recall_limit=settings.memory_recall_limit,
                transcript_wait_s=settings.transcript_wait_s,
            )
            await serve_stage(handler, settings, stop, fanout=fanout)
    finally:
        await pool.close()


if __name__ == "__main__":
    settings = ContextSettings()
    run_worker(settings, lambda stop: main(settings, stop))
