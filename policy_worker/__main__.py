"""`python -m policy_worker`: wires settings → adapters → the runtime's stage loop."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from adapters.admissions import PostgresAdmissions
from adapters.budgets import PostgresBudgetLedger
from adapters.opa import OpaClient
from adapters.openfga import FgaAuthorizer
from adapters.principals import PrincipalDirectory
from adapters.profiles import CachedProfiles, ProfileStore, default_profile
from adapters.ratelimit import RateLimiter
from adapters.session_claims import SessionClaims
from adapters.tenants import TenantDirectory
from gateway_runtime.postgres import create_pool
from gateway_runtime.redis_keys import RedisKeys
from gateway_runtime.settings import PolicySettings
from gateway_runtime.tokens import TurnCosts
from gateway_runtime.worker import fanout_publisher, redis_client, run_worker, serve_stage
from policy_worker.handler import PolicyHandler
from schemas.tools import load_definitions
from schemas.topics import Topics


async def main(settings: PolicySettings, stop: asyncio.Event) -> None:
    authorizer = FgaAuthorizer(settings)
    # admissions, budgets, principals, session claims, the fan-out's fallback log
    pool = await create_pool(settings, max_size=16)
    try:
        async with (
            redis_client(settings) as redis,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=settings.max_in_flight)
            ) as opa_http,
            contextlib.AsyncExitStack() as stack,
        ):
            fanout = fanout_publisher(redis, settings, pool)
            topics = Topics.for_namespace(settings.kafka_namespace)
            # automations' turns count against the same RPM/TPM as the ingress's clients
            limiter = RateLimiter(redis, RedisKeys(settings.kafka_namespace), pool)
            stack.push_async_callback(limiter.close)
            handler = PolicyHandler(
                topics=topics,
                fanout=fanout,
                require_auth=settings.gateway_require_auth,
                engine=OpaClient(opa_http, settings),
                budgets=PostgresBudgetLedger(pool),
                tenants=TenantDirectory(settings.tenants_file),
                admissions=PostgresAdmissions(pool),
                principals=PrincipalDirectory(pool),
                claims=SessionClaims(pool, authorizer),
                rate_limits=limiter,
                profiles=CachedProfiles(
                    ProfileStore(pool), default_profile(settings), settings.profile_cache_ttl_s
                ),
                costs=TurnCosts(
                    load_definitions(),
                    context_window_tokens=settings.context_window_tokens,
                    max_tool_rounds=settings.max_tool_rounds,
                ),
            )
            # the requests topic (the ingress's) and every automation's inbound topic
            await serve_stage(handler, settings, stop, fanout=fanout, pattern=topics.turn_sources())
    finally:
        await authorizer.close()
        await pool.close()


if __name__ == "__main__":
    settings = PolicySettings()
    run_worker(settings, lambda stop: main(settings, stop))
