"""kill -9 of the LLM worker in the middle of a turn: the turn still ends, stored once.

Once is counted where a second run of the turn would show: final answers in the session's
durable log, the stored rows, and the transcript the model is sent on the next turn. (A
budget settled once per turn is covered by tests/integration/test_budget_ledger.py.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from testbed.mesh import Mesh
from testbed.sandbox import Sandbox
from tests.sse import SseEvent, read_events
from tests.turns import (
    FAKE_ANSWER,
    ends_turn,
    logged_events,
    sent_upstream,
    streamed_text,
    turn,
    wait_stored,
)


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
    mesh: Mesh, client: httpx.AsyncClient, sandbox: Sandbox, fake_llm: str
) -> None:
    session_id, marker = f"s-{uuid.uuid4().hex}", uuid.uuid4().hex
    body = {"session_id": session_id, "message": f"x {marker}"}
    turn_id = (await client.post("/v1/session/message", json=body)).json()["event_id"]
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
    assert streamed_text(after_retry) == FAKE_ANSWER
    assert events[-1].data["data"]["text"] == FAKE_ANSWER
    assert await wait_stored(sandbox.postgres_dsn, turn_id) == (1, 2)
    await mesh.wait_group_members("llm")

    logged = [e["type"] for e in await logged_events(sandbox, session_id)]
    assert logged.count("assistant.final") == 1 and logged.count("turn.retrying") == 1
    # The next turn's model sees the crashed exchange once, with the answer the client got.
    after = await turn(client, session_id=session_id, message=f"y {marker}")
    assert after[-1].type == "assistant.final"
    *_, sent = await sent_upstream(fake_llm, f"y {marker}")
    assert sent[1:] == [
        ("user", f"x {marker}"),
        ("assistant", events[-1].data["data"]["text"]),
        ("user", f"y {marker}"),
    ]
