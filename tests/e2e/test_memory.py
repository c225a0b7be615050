"""Memories: a finished exchange is remembered once and recalled for a later turn."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from gateway_runtime.memory import PostgresMemory
from gateway_runtime.settings import CommonSettings
from tests.turns import turn


async def test_an_exchange_is_remembered_once_and_recalled(
    client: httpx.AsyncClient, settings: CommonSettings
) -> None:
    marker = f"zebra{uuid.uuid4().hex[:8]}"
    events = await turn(client, message=f"My favourite animal is the {marker}.")
    assert events[-1].type == "assistant.final"
    turn_id = events[-1].turn_id
    pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=2)
    try:
        async with asyncio.timeout(20):
            while not await pool.fetchval(  # noqa: ASYNC110 - polls Postgres
                "SELECT count(*) FROM memories WHERE turn_id = $1", turn_id
            ):
                await asyncio.sleep(0.05)
        recalled = await PostgresMemory(pool).recall("default", "anonymous", marker, 3)
        assert len(recalled) == 1
        assert marker in recalled[0] and recalled[0].startswith("User: ")
        count = await pool.fetchval("SELECT count(*) FROM memories WHERE turn_id = $1", turn_id)
        assert count == 1
    finally:
        await pool.close()
