"""kill -9 of the LLM worker in the middle of a turn: the turn still ends, stored once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway_runtime.settings import CommonSettings
from tests.mesh import Mesh
from tests.sse import SseEvent, read_events
from tests.turns import ends_turn, wait_stored


@pytest.fixture
async def slow_upstream(fake_llm: str) -> AsyncIterator[None]:
    """20 tokens 100 ms apart: a turn streams for two seconds."""
    async with httpx.AsyncClient(base_url=fake_llm) as fake:
        (await fake.post("/admin/mode", json={"gap_ms": 100})).raise_for_status()
        try:
            yield
        finally:
            (await fake.post("/admin/mode", json={"gap_ms": 5})).raise_for_status()


@pytest.mark.usefixtures("slow_upstream")
async def test_llm_worker_killed_mid_turn_then_restarted(
    mesh: Mesh, client: httpx.AsyncClient, settings: CommonSettings
) -> None:
    session_id = f"s-{uuid.uuid4().hex}"
    turn_id = (
        await client.post("/v1/session/message", json={"session_id": session_id, "message": "x"})
    ).json()["event_id"]
    streaming = asyncio.Event()

    def until(event: SseEvent) -> bool:
        if event.type == "assistant.delta" and event.data["data"]["seq"] >= 3:
            streaming.set()
        return ends_turn(turn_id)(event)

    reader = asyncio.create_task(read_events(client, f"/v1/session/{session_id}/events", until))
    await asyncio.wait_for(streaming.wait(), 30)
    mesh.kill("llm_worker")
    mesh.start("llm_worker")
    events = await asyncio.wait_for(reader, 120)

    types = [e.type for e in events]
    assert "turn.retrying" in types, types
    assert types[-1] == "assistant.final", types
    after_retry = events[types.index("turn.retrying") :]
    deltas = [e for e in after_retry if e.type == "assistant.delta"]
    assert len(deltas) == 20
    assert events[-1].data["data"]["text"] == "".join(d.data["data"]["text"] for d in deltas)
    assert await wait_stored(settings.postgres_dsn, turn_id) == (1, 2)
    await mesh.wait_group_members("llm")
