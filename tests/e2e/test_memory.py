"""Memories: a finished exchange is remembered once and recalled for a later turn."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from adapters.memory import PostgresMemory
from testbed.sandbox import Sandbox
from tests.turns import sent_upstream, turn


async def test_an_exchange_is_remembered_once_and_recalled(
    client: httpx.AsyncClient, sandbox: Sandbox, fake_llm: str
) -> None:
    marker = f"zebra{uuid.uuid4().hex[:8]}"
    events = await turn(client, message=f"My favourite animal is the {marker}.")
    assert events[-1].type == "assistant.final"
    turn_id = events[-1].turn_id
    pool = await asyncpg.create_pool(sandbox.postgres_dsn, min_size=1, max_size=2)
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
    # A later turn, in another session, about the same thing: the model is reminded.
    later = await turn(client, message=f"Which animal, {marker}?")
    assert later[-1].type == "assistant.final"
    [sent] = await sent_upstream(fake_llm, f"Which animal, {marker}?")
    system = sent[0][1]
    assert "What you remember of earlier conversations" in system
    assert system.count(f"User: My favourite animal is the {marker}.") == 1
