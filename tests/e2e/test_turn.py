"""One turn end to end through every stage, on the real infrastructure.

"Stored once" is checked where a duplicate would show: the events in the session's
durable log, the rows of the whole session, and the transcript the model is sent next.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx

from context_worker.prompts import ACTION_PROMPTS
from testbed.sandbox import Sandbox
from tests.sse import read_events
from tests.turns import (
    FAKE_ANSWER,
    ends_turn,
    logged_events,
    sent_upstream,
    stored_messages,
    streamed_text,
    turn,
    wait_stored,
)

SYSTEM = ("system", "You are a helpful, concise assistant.")


async def test_a_turn_streams_deltas_then_the_final_answer_and_is_stored_once(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    session_id = f"s-{uuid.uuid4().hex}"
    r = await client.post(
        "/v1/session/message", json={"session_id": session_id, "message": "hello there"}
    )
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["session_id"] == session_id
    turn_id = accepted["event_id"]

    async with asyncio.timeout(30):
        events = await read_events(client, f"/v1/session/{session_id}/events", ends_turn(turn_id))
    types = [e.type for e in events]
    assert types[0] == "turn.accepted"
    assert types[-1] == "assistant.final", events[-1]
    deltas = [e for e in events if e.type == "assistant.delta"]
    # the fake upstream's 20 tokens, every one: the first at once, later ones gathered
    assert streamed_text(events) == FAKE_ANSWER
    assert deltas[0].data["data"] == {"seq": 1, "text": "tok0 "}
    assert deltas[-1].data["data"]["seq"] == 20
    final = events[-1].data["data"]
    assert final["text"] == FAKE_ANSWER
    assert final["usage"]["completion_tokens"] == 20
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)

    assert await wait_stored(sandbox.postgres_dsn, turn_id) == (1, 2)
    assert await stored_messages(sandbox.postgres_dsn, session_id=session_id) == [
        ("user", "hello there"),
        ("assistant", final["text"]),
    ]
    logged = [e["type"] for e in await logged_events(sandbox, session_id)]
    assert logged == ["turn.accepted", *["assistant.delta"] * len(deltas), "assistant.final"]


async def test_the_next_turn_sends_the_model_the_transcript_once(
    client: httpx.AsyncClient, sandbox: Sandbox, fake_llm: str
) -> None:
    session_id, marker = f"s-{uuid.uuid4().hex}", uuid.uuid4().hex
    first = await turn(client, session_id=session_id, message=f"one {marker}")
    await wait_stored(sandbox.postgres_dsn, first[-1].turn_id)
    second = await turn(client, session_id=session_id, message=f"two {marker}")
    assert second[-1].type == "assistant.final"
    assert await wait_stored(sandbox.postgres_dsn, second[-1].turn_id) == (1, 2)

    sent_first, sent_second = await sent_upstream(fake_llm, marker)
    assert sent_first == [SYSTEM, ("user", f"one {marker}")]
    assert sent_second[0][0] == "system"  # the prompt, and what memory recalled
    assert sent_second[1:] == [
        ("user", f"one {marker}"),
        ("assistant", first[-1].data["data"]["text"]),
        ("user", f"two {marker}"),
    ]


async def test_a_session_action_runs_as_a_turn_over_the_transcript(
    client: httpx.AsyncClient, sandbox: Sandbox, fake_llm: str
) -> None:
    session_id, marker = f"s-{uuid.uuid4().hex}", uuid.uuid4().hex
    first = await turn(client, session_id=session_id, message=f"plan a trip {marker}")
    await wait_stored(sandbox.postgres_dsn, first[-1].turn_id)
    r = await client.post(
        "/v1/session/action", json={"session_id": session_id, "action": "summarize"}
    )
    assert r.status_code == 202, r.text
    action_id = r.json()["event_id"]
    events = await read_events(client, f"/v1/session/{session_id}/events", ends_turn(action_id))
    assert events[-1].type == "assistant.final"
    assert await wait_stored(sandbox.postgres_dsn, action_id) == (1, 2)
    stored = await stored_messages(sandbox.postgres_dsn, turn_id=action_id)
    assert stored[0] == ("user", "[action] summarize")

    *_, sent_action = await sent_upstream(fake_llm, marker)
    assert sent_action == [
        SYSTEM,
        ("user", f"plan a trip {marker}"),
        ("assistant", first[-1].data["data"]["text"]),
        ("user", ACTION_PROMPTS["summarize"]),
    ]
