"""The SomaBrain-style memory adapter against a fake memory service (a real HTTP server).

The memory service is outside the system, so a fake on loopback stands in for it; the
Postgres store (the default) is covered end to end in tests/e2e/test_memory.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from adapters.memory import PostgresMemory, SomaBrainMemory, open_memory
from gateway_runtime.errors import DependencyUnavailable
from testbed.sandbox import Sandbox


class FakeMemoryService:
    """POST /remember stores by id (idempotent); POST /recall matches words of the query."""

    def __init__(self) -> None:
        self.memories: dict[str, dict] = {}
        self.fail = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        path = lines[0].split(" ")[1]
        length = next(
            int(v)
            for k, _, v in (line.partition(":") for line in lines[1:])
            if k.lower() == "content-length"
        )
        body = json.loads(await reader.readexactly(length))
        status, payload = (503, {"error": "down"}) if self.fail else self.route(path, body)
        data = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        writer.close()

    def route(self, path: str, body: dict) -> tuple[int, dict]:
        if path == "/remember":
            self.memories.setdefault(body["id"], body)
            return 200, {"ok": True}
        if path == "/recall":
            words = set(body["query"].lower().split())
            hits = [
                m
                for m in self.memories.values()
                if (m["tenant"], m["principal"]) == (body["tenant"], body["principal"])
                and words & set(m["content"].lower().split())
            ]
            return 200, {"results": [{"content": m["content"]} for m in hits][: body["top_k"]]}
        return 404, {}


@pytest.fixture
async def service() -> AsyncIterator[tuple[FakeMemoryService, str]]:
    fake = FakeMemoryService()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield fake, f"http://127.0.0.1:{port}"


async def test_remember_then_recall_through_the_service(
    service: tuple[FakeMemoryService, str],
) -> None:
    fake, url = service
    async with httpx.AsyncClient(timeout=5) as http:
        memory = SomaBrainMemory(http, url)
        await memory.remember("acme", "alice", "s1", "t1", "User: I like teal\nAssistant: ok")
        await memory.remember("acme", "alice", "s1", "t1", "a redelivery of the same turn")
        await memory.remember("acme", "bob", "s2", "t2", "User: I like teal too")
        assert len(fake.memories) == 2  # the turn id is the idempotency key
        recalled = await memory.recall("acme", "alice", "teal", 3)
        assert recalled == ["User: I like teal\nAssistant: ok"]  # bob's memory stays his
        assert await memory.recall("acme", "alice", "nothing matches", 3) == []


async def test_an_unavailable_service_is_a_retryable_error(
    service: tuple[FakeMemoryService, str],
) -> None:
    fake, url = service
    fake.fail = True
    async with httpx.AsyncClient(timeout=5) as http:
        memory = SomaBrainMemory(http, url)
        with pytest.raises(DependencyUnavailable):
            await memory.recall("acme", "alice", "teal", 3)
        with pytest.raises(DependencyUnavailable):
            await memory.remember("acme", "alice", "s", "t", "x")


async def test_somabrain_url_selects_the_adapter(sandbox: Sandbox) -> None:
    pool = await asyncpg.create_pool(sandbox.postgres_dsn, min_size=1, max_size=1)
    try:
        async with httpx.AsyncClient() as http:
            assert isinstance(open_memory("http://memory:9000", pool, http), SomaBrainMemory)
            assert isinstance(open_memory(None, pool, http), PostgresMemory)
    finally:
        await pool.close()
