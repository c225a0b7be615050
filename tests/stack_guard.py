"""What the test suite must leave alone: the stack `make up` runs on this machine.

The suite shares the machine (and the Kafka broker and Postgres server) with a gateway
that may be running. A snapshot is taken before the first test and compared after the
last: the running stack's processes, its database rows, its Redis keys, its Kafka topics
and its OpenFGA store must be as they were. A difference fails the run, naming it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_runtime.kafka import KafkaConnection
from gateway_runtime.settings import CommonSettings

COMPONENTS = (
    "redis",
    "kafka",
    "openfga",
    "opa",
    "llm",
    *(
        "policy_worker",
        "context_worker",
        "llm_worker",
        "tool_dispatcher",
        "persistence_worker",
        "ingress",
    ),
)


@dataclass(frozen=True)
class StackSnapshot:
    pids: dict[str, str]
    rows: dict[str, Any]
    redis_keys: frozenset[bytes]
    topic_ends: dict[str, Any]
    fga: dict[str, Any]

    def differences(self, after: StackSnapshot) -> list[str]:
        found = []
        for name in ("pids", "rows", "topic_ends", "fga"):
            before_value, after_value = getattr(self, name), getattr(after, name)
            if before_value != after_value:
                found.append(f"{name}: before {before_value!r}, after {after_value!r}"[:2000])
        # Keys may expire on their own; none may appear.
        new_keys = sorted(after.redis_keys - self.redis_keys)
        if new_keys:
            found.append(f"redis: {len(new_keys)} new keys, e.g. {new_keys[:10]!r}")
        return found


def _pids(state: Path) -> dict[str, str]:
    pids = {}
    for name in COMPONENTS:
        with contextlib.suppress(OSError):
            pids[name] = (state / f"{name}.pid").read_text().strip()
    with contextlib.suppress(OSError):
        pids["postgres"] = (state / "postgres" / "postmaster.pid").read_text().split()[0]
    return pids


async def _rows(dsn: str) -> dict[str, Any]:
    """Row count of every table of the running stack's database, and its keys' state."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return {"unreachable": type(exc).__name__}
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        rows: dict[str, Any] = {}
        for t in tables:
            name = t["tablename"]
            rows[name] = await conn.fetchval(f'SELECT count(*) FROM "{name}"')
        if "api_keys" in rows:
            keys = await conn.fetch("SELECT key_id, revoked_at FROM api_keys ORDER BY key_id")
            rows["api_keys_state"] = [(k["key_id"], str(k["revoked_at"])) for k in keys]
        return rows
    finally:
        await conn.close()


async def _redis_keys(url: str) -> frozenset[bytes]:
    redis = Redis.from_url(url, socket_connect_timeout=2)
    try:
        return frozenset([k async for k in redis.scan_iter(count=1000)])
    except (RedisError, OSError):
        return frozenset()
    finally:
        await redis.aclose()


async def _topic_ends(kafka: KafkaConnection, namespace: str) -> dict[str, Any]:
    """End offsets of the running stack's topics (the `<namespace>.` ones)."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), request_timeout_ms=5000)
    try:
        await consumer.start()
    except Exception as exc:  # an unreachable broker is a state too
        return {"unreachable": type(exc).__name__}
    try:
        topics = [t for t in await consumer.topics() if t.startswith(namespace + ".")]
        partitions = [
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
        ]
        ends = await consumer.end_offsets(partitions) if partitions else {}
        return {f"{tp.topic}/{tp.partition}": int(end) for tp, end in sorted(ends.items())}
    finally:
        await consumer.stop()


async def _fga(api_url: str) -> dict[str, Any]:
    """The OpenFGA stores, and how many tuples the running stack's store holds."""
    async with httpx.AsyncClient(base_url=api_url, timeout=5) as http:
        try:
            stores = (await http.get("/stores")).raise_for_status().json().get("stores") or []
        except httpx.HTTPError:
            return {"unreachable": True}
        state: dict[str, Any] = {"stores": sorted(s["name"] for s in stores)}
        for store in stores:
            tuples, token = 0, ""
            while True:
                body: dict[str, Any] = {"page_size": 100}
                if token:
                    body["continuation_token"] = token
                page = (await http.post(f"/stores/{store['id']}/read", json=body)).json()
                tuples += len(page.get("tuples") or [])
                token = page.get("continuation_token") or ""
                if not token:
                    break
            state[store["name"]] = tuples
        return state


async def snapshot(settings: CommonSettings) -> StackSnapshot:
    return StackSnapshot(
        pids=_pids(settings.soma_home / "state"),
        rows=await _rows(settings.postgres_dsn),
        redis_keys=await _redis_keys(settings.redis_url),
        topic_ends=await _topic_ends(
            KafkaConnection.from_settings(settings), settings.kafka_namespace
        ),
        fga=await _fga(settings.openfga_api_url),
    )
