"""The sandbox's outage tools on servers of its own: pause, resume, stop and start.

Outage tests hang or stop Postgres and Kafka under a mesh; they must do so on the
sandbox's own servers, never the machine's (the session's stack guard checks that).
One sandbox serves the module; every test leaves its servers running and unpaused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from gateway_runtime.kafka import KafkaConnection
from gateway_runtime.settings import CommonSettings
from testbed.sandbox import Sandbox, open_sandbox

SHORT_S = 0.5  # how long a query to a hung server may take before it counts as hung


@pytest.fixture(scope="module")
async def owned(settings: CommonSettings) -> AsyncIterator[Sandbox]:
    """A sandbox with a Postgres server and a Kafka broker of its own."""
    async with open_sandbox("outage", settings, own=("postgres", "kafka")) as sandbox:
        yield sandbox


async def _until(probe: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll `probe` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        await asyncio.sleep(0.1)


def _states(root: int) -> dict[int, str]:
    """State letter (/proc) of `root` and every descendant."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), fields[0])
    tree, i = [root], 0
    while i < len(tree):
        tree.extend(pid for pid, (ppid, _) in table.items() if ppid == tree[i])
        i += 1
    return {pid: table[pid][1] for pid in tree if pid in table}


async def _topic(kafka: KafkaConnection, name: str) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _produce(kafka: KafkaConnection, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _consume(kafka: KafkaConnection, topic: str, count: int, timeout: float) -> list[bytes]:
    """The topic's first `count` values, from the beginning."""
    consumer = AIOKafkaConsumer(
        topic,
        **kafka.client_kwargs(),
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        async with asyncio.timeout(timeout):
            while len(values) < count:
                values.append((await consumer.getone()).value)
        return values
    finally:
        await consumer.stop()


async def test_own_servers_serve_the_sandbox(owned: Sandbox, settings: CommonSettings) -> None:
    assert owned.postgres_dsn != settings.postgres_dsn
    assert owned.kafka_bootstrap_servers != settings.kafka_bootstrap_servers
    assert owned.env["POSTGRES_DSN"] == owned.postgres_dsn
    assert owned.env["KAFKA_BOOTSTRAP_SERVERS"] == owned.kafka_bootstrap_servers

    conn = await asyncpg.connect(owned.postgres_dsn, timeout=5)
    try:
        assert await conn.fetchval("SELECT current_database()") == owned.name
    finally:
        await conn.close()
    # OpenFGA keeps its store on the sandbox's server: it migrated its database there.
    fga = await asyncpg.connect(owned.postgres_dsn.replace(f"/{owned.name}", "/openfga"))
    try:
        assert await fga.fetchval("SELECT to_regclass('public.tuple') IS NOT NULL")
    finally:
        await fga.close()

    topic = f"{owned.name}.roundtrip"
    await _topic(owned.kafka, topic)
    await _produce(owned.kafka, topic, [b"one", b"two"])
    assert await _consume(owned.kafka, topic, 2, timeout=30) == [b"one", b"two"]

    shared = AIOKafkaAdminClient(**KafkaConnection.from_settings(settings).client_kwargs())
    await shared.start()
    try:
        assert topic not in await shared.list_topics()
    finally:
        await shared.close()


async def test_paused_postgres_hangs_connections_until_resumed(owned: Sandbox) -> None:
    pooled = await asyncpg.connect(owned.postgres_dsn, timeout=5)  # its backend exists now
    try:
        assert await pooled.fetchval("SELECT 1") == 1
        await owned.pause("postgres")
        try:
            states = _states(owned.pid("postgres"))  # the postmaster and all its children
            assert pooled.get_server_pid() in states
            assert set(states.values()) == {"T"}, states
            with pytest.raises(TimeoutError):
                await pooled.fetchval("SELECT 1", timeout=SHORT_S)
            with pytest.raises(TimeoutError):
                await asyncpg.connect(owned.postgres_dsn, timeout=SHORT_S)
        finally:
            await owned.resume("postgres")
        assert "T" not in _states(owned.pid("postgres")).values()

        async def fresh_connection_answers() -> bool:
            try:
                conn = await asyncpg.connect(owned.postgres_dsn, timeout=2)
            except (OSError, TimeoutError, asyncpg.PostgresError):
                return False
            try:
                return bool(await conn.fetchval("SELECT 1", timeout=2) == 1)
            finally:
                await conn.close()

        async def pooled_answers() -> bool:
            # Until the cancel of the timed-out query went through, the connection is busy.
            try:
                return bool(await pooled.fetchval("SELECT 1", timeout=2) == 1)
            except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return False

        await _until(fresh_connection_answers, timeout=10)
        await _until(pooled_answers, timeout=10)
    finally:
        pooled.terminate()
    await owned.resume("postgres")  # idempotent: not paused any more


async def test_paused_kafka_hangs_requests_until_resumed(owned: Sandbox) -> None:
    admin = AIOKafkaAdminClient(**owned.kafka.client_kwargs())
    await admin.start()  # connected before the pause, as a mesh's clients are
    try:
        await owned.pause("kafka")
        try:
            assert set(_states(owned.pid("kafka")).values()) == {"T"}
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(admin.list_topics(), SHORT_S)
        finally:
            await owned.resume("kafka")

        async def answers() -> bool:
            try:
                await asyncio.wait_for(admin.list_topics(), 2)
            except (TimeoutError, KafkaError):
                return False
            return True

        await _until(answers, timeout=15)
    finally:
        await admin.close()


async def test_stopped_postgres_starts_again_with_its_data(owned: Sandbox) -> None:
    table = f"t_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(owned.postgres_dsn, timeout=5)
    try:
        await conn.execute(f"CREATE TABLE {table} (v text); INSERT INTO {table} VALUES ('kept')")
    finally:
        await conn.close()
    await owned.stop("postgres")
    with pytest.raises(OSError):
        await asyncpg.connect(owned.postgres_dsn, timeout=SHORT_S)
    await owned.start("postgres")
    conn = await asyncpg.connect(owned.postgres_dsn, timeout=5)  # same port: reconnects
    try:
        assert await conn.fetchval(f"SELECT v FROM {table}") == "kept"
    finally:
        await conn.close()


async def test_stopped_kafka_starts_again_with_its_topics_and_records(owned: Sandbox) -> None:
    topic = f"{owned.name}.durable"
    await _topic(owned.kafka, topic)
    await _produce(owned.kafka, topic, [b"a", b"b", b"c"])
    await owned.stop("kafka")
    host, _, port = owned.kafka_bootstrap_servers.rpartition(":")
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.close()
    await owned.start("kafka")  # same port and data directory

    admin = AIOKafkaAdminClient(**owned.kafka.client_kwargs())
    await admin.start()
    try:
        assert topic in await admin.list_topics()
    finally:
        await admin.close()
    assert await _consume(owned.kafka, topic, 3, timeout=30) == [
        b"a",
        b"b",
        b"c",
    ]


async def test_only_owned_components_may_be_paused_or_stopped(
    owned: Sandbox, settings: CommonSettings
) -> None:
    with pytest.raises(ValueError):
        await Sandbox.open("bad", settings, own=("redis",))
    with pytest.raises(ValueError):
        await owned.pause("llm")
    with pytest.raises(ValueError):
        await owned.stop("llm")
    sharing = dataclasses.replace(owned, own=frozenset())  # as a default one
    for component in ("postgres", "kafka"):
        with pytest.raises(ValueError):
            await sharing.pause(component)
        with pytest.raises(ValueError):
            await sharing.stop(component)
        with pytest.raises(ValueError):
            await sharing.start(component)


async def test_close_resumes_and_stops_paused_servers(settings: CommonSettings) -> None:
    sandbox = await Sandbox.open("closing", settings, own=("postgres",))
    try:
        trees = {c: set(_states(sandbox.pid(c))) for c in ("postgres", "redis")}
        await sandbox.pause("postgres")
        await sandbox.pause("redis")
    finally:
        started = time.monotonic()
        await sandbox.close()
    assert time.monotonic() - started < 10, "a paused server held close() up"
    for component, pids in trees.items():
        alive = {pid: s for pid, s in _states_of(pids).items() if s not in "ZX"}
        assert not alive, f"{component} left running: {alive}"
    assert not (sandbox.dir / "state").exists()


def _states_of(pids: set[int]) -> dict[int, str]:
    states = {}
    for pid in pids:
        try:
            states[pid] = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            states[pid] = "X"
    return states
