"""The clients the ingress builds once at start-up and hands to routes by injection."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
from redis.asyncio import Redis

from adapters.dead_letters import DeadLetterStore
from adapters.deployments import DeploymentHealth
from adapters.profiles import ProfileStore
from gateway_runtime.event_log import PostgresEventLog
from gateway_runtime.fanout import FanoutPublisher
from gateway_runtime.kafka import KafkaPublisher, make_producer
from gateway_runtime.postgres import create_pool
from gateway_runtime.redis_keys import RedisKeys
from gateway_runtime.redis_pool import open_redis
from gateway_runtime.settings import IngressSettings
from ingress.auth.services import AuthServices, open_auth
from ingress.consumer_groups import ConsumerGroups
from ingress.events import SessionEvents
from ingress.fallback_watch import FallbackLogWatch
from ingress.hub import FanoutHub
from ingress.idempotency import IdempotencyKeys
from ingress.outbox import TurnOutbox
from ingress.revocation import KeyRevocations
from ingress.streams import OpenStreams
from schemas.codec import Codec
from schemas.topics import Topics


@dataclass
class Resources:
    settings: IngressSettings
    codec: Codec
    publisher: KafkaPublisher
    redis: Redis
    pool: asyncpg.Pool
    http: httpx.AsyncClient
    hub: FanoutHub
    events: SessionEvents
    fanout: FanoutPublisher
    topics: Topics
    profiles: ProfileStore
    deployments: DeploymentHealth
    auth: AuthServices
    dead_letters: DeadLetterStore
    outbox: TurnOutbox
    idempotency: IdempotencyKeys
    groups: ConsumerGroups  # each stage's consumer group, for /v1/health
    streams: OpenStreams  # the open SSE/WS streams, by principal (cap, revocation)
    revocations: KeyRevocations
    keys: RedisKeys
    # The capsule registry's client (routes/capsules.py); None when it is not configured.
    capsule_registry: httpx.AsyncClient | None = None


@contextlib.asynccontextmanager
async def open_resources(settings: IngressSettings) -> AsyncIterator[Resources]:
    async with contextlib.AsyncExitStack() as stack:  # closed in the reverse order
        clients = await _open_clients(stack, settings)
        pool, redis = clients.pool, clients.redis
        keys = RedisKeys(settings.kafka_namespace)
        hub = FanoutHub(redis, keys, queue_size=settings.sse_client_queue)
        await hub.start()
        stack.push_async_callback(hub.stop)
        await stack.enter_async_context(FallbackLogWatch(settings, hub).running())
        auth = await stack.enter_async_context(
            open_auth(
                settings,
                require_auth=settings.gateway_require_auth,
                pool=pool,
                redis=redis,
                keys=keys,
                http=clients.http,
            )
        )
        outbox = TurnOutbox(pool, clients.publisher, settings)
        await stack.enter_async_context(outbox.running())
        streams, revocations = await _open_revocations(stack, settings, clients, keys, hub, auth)
        event_log = PostgresEventLog(pool)
        yield Resources(
            settings=settings,
            codec=Codec(),
            publisher=clients.publisher,
            redis=redis,
            pool=pool,
            http=clients.http,
            hub=hub,
            events=SessionEvents(redis, hub, event_log, keys),
            fanout=FanoutPublisher.from_settings(redis, settings, event_log),
            topics=Topics.for_namespace(settings.kafka_namespace),
            profiles=ProfileStore(pool),
            deployments=DeploymentHealth(redis, keys),
            auth=auth,
            dead_letters=DeadLetterStore(pool),
            outbox=outbox,
            idempotency=IdempotencyKeys(pool, settings.idempotency_ttl_s),
            groups=clients.groups,
            streams=streams,
            revocations=revocations,
            keys=keys,
            capsule_registry=clients.capsule_registry,
        )


@dataclass
class _Clients:
    """The connections everything else is built on."""

    publisher: KafkaPublisher
    groups: ConsumerGroups
    redis: Redis
    pool: asyncpg.Pool
    http: httpx.AsyncClient
    capsule_registry: httpx.AsyncClient | None


async def _open_clients(stack: contextlib.AsyncExitStack, settings: IngressSettings) -> _Clients:
    producer = make_producer(settings, client_id="ingress")
    await producer.start()
    stack.push_async_callback(producer.stop)
    groups = await stack.enter_async_context(ConsumerGroups.open(settings))
    redis = open_redis(settings, max_connections=256)
    stack.push_async_callback(redis.aclose)
    pool = await create_pool(settings, min_size=1, max_size=10)
    stack.push_async_callback(pool.close)
    http = await stack.enter_async_context(httpx.AsyncClient(timeout=10.0))
    capsule_registry = None
    if settings.capsule_registry_url:
        capsule_registry = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=settings.capsule_registry_url,
                timeout=settings.capsule_registry_timeout_s,
            )
        )
    return _Clients(KafkaPublisher(producer), groups, redis, pool, http, capsule_registry)


async def _open_revocations(
    stack: contextlib.AsyncExitStack,
    settings: IngressSettings,
    clients: _Clients,
    keys: RedisKeys,
    hub: FanoutHub,
    auth: AuthServices,
) -> tuple[OpenStreams, KeyRevocations]:
    """The open streams, and the revocations that end them (on every replica: the hub
    hears of each revocation) and finish their clean-up in the background."""
    streams = OpenStreams(settings.max_streams_per_principal)
    revocations = KeyRevocations(
        settings,
        pool=clients.pool,
        redis=clients.redis,
        keys=keys,
        key_store=auth.keys,
        authorizer=auth.authorizer,
        streams=streams,
    )
    hub.on_revoked = revocations.revoked_elsewhere
    await stack.enter_async_context(revocations.running())
    return streams, revocations
