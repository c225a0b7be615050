"""The clients the ingress builds once at start-up and hands to routes by injection."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from gateway_runtime.deployments import DeploymentHealth
from gateway_runtime.event_log import PostgresEventLog
from gateway_runtime.fanout import FanoutPublisher
from gateway_runtime.kafka import make_producer
from gateway_runtime.postgres import create_pool
from gateway_runtime.profiles import ProfileStore
from ingress.events import SessionEvents
from ingress.hub import FanoutHub
from ingress.settings import IngressSettings
from schemas.codec import Codec
from schemas.topics import Topics


@dataclass
class Resources:
    settings: IngressSettings
    codec: Codec
    producer: AIOKafkaProducer
    redis: Redis
    pool: asyncpg.Pool
    http: httpx.AsyncClient
    hub: FanoutHub
    events: SessionEvents
    fanout: FanoutPublisher
    topics: Topics
    profiles: ProfileStore
    deployments: DeploymentHealth


@contextlib.asynccontextmanager
async def open_resources(settings: IngressSettings) -> AsyncIterator[Resources]:
    async with contextlib.AsyncExitStack() as stack:
        producer = make_producer(settings.kafka_bootstrap_servers, client_id="ingress")
        await producer.start()
        stack.push_async_callback(producer.stop)
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2)
        stack.push_async_callback(redis.aclose)
        pool = await create_pool(settings.postgres_dsn, min_size=1, max_size=10)
        stack.push_async_callback(pool.close)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10.0))
        hub = FanoutHub(redis, queue_size=settings.sse_client_queue)
        await hub.start()
        stack.push_async_callback(hub.stop)
        yield Resources(
            settings=settings,
            codec=Codec(),
            producer=producer,
            redis=redis,
            pool=pool,
            http=http,
            hub=hub,
            events=SessionEvents(redis, hub, PostgresEventLog(pool)),
            fanout=FanoutPublisher(
                redis, maxlen=settings.session_stream_maxlen, ttl_s=settings.session_stream_ttl_s
            ),
            topics=Topics.for_namespace(settings.kafka_namespace),
            profiles=ProfileStore(pool),
            deployments=DeploymentHealth(redis),
        )
