"""One turn end to end through every stage, on the real infrastructure."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from gateway_runtime.settings import CommonSettings
from tests.sse import SseEvent, read_events
from tests.turns import ends_turn, stored_messages, wait_stored


async def test_a_turn_streams_deltas_then_the_final_answer_and_is_stored_once(
    client: httpx.AsyncClient, settings: CommonSettings
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
    assert len(deltas) == 20  # the fake upstream's 20 tokens, each as it came
    final = events[-1].data["data"]
    assert final["text"] == "".join(d.data["data"]["text"] for d in deltas)
    assert final["usage"]["completion_tokens"] == 20
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)

    assert await wait_stored(settings.postgres_dsn, turn_id) == (1, 2)
    assert await stored_messages(settings.postgres_dsn, session_id=session_id) == [
        ("user", "hello there"),
        ("assistant", final["text"]),
    ]


async def test_the_next_turn_sees_the_transcript(
    client: httpx.AsyncClient, settings: CommonSettings
) -> None:
    session_id = f"s-{uuid.uuid4().hex}"
    first = (
        await client.post("/v1/session/message", json={"session_id": session_id, "message": "one"})
    ).json()
    await read_events(client, f"/v1/session/{session_id}/events", ends_turn(first["event_id"]))
    await wait_stored(settings.postgres_dsn, first["event_id"])
    second = (
        await client.post("/v1/session/message", json={"session_id": session_id, "message": "two"})
    ).json()
    events: list[SseEvent] = await read_events(
        client, f"/v1/session/{session_id}/events", ends_turn(second["event_id"])
    )
    assert events[-1].type == "assistant.final"
    assert await wait_stored(settings.postgres_dsn, second["event_id"]) == (1, 2)


async def test_a_session_action_runs_as_a_turn_over_the_transcript(
    client: httpx.AsyncClient, settings: CommonSettings
) -> None:
    session_id = f"s-{uuid.uuid4().hex}"
    first = (
        await client.post(
            "/v1/session/message", json={"session_id": session_id, "message": "plan a trip"}
        )
    ).json()
    await read_events(client, f"/v1/session/{session_id}/events", ends_turn(first["event_id"]))
    await wait_stored(settings.postgres_dsn, first["event_id"])
    r = await client.post(
        "/v1/session/action", json={"session_id": session_id, "action": "summarize"}
    )
    assert r.status_code == 202, r.text
    action_id = r.json()["event_id"]
    events = await read_events(client, f"/v1/session/{session_id}/events", ends_turn(action_id))
    assert events[-1].type == "assistant.final"
    assert await wait_stored(settings.postgres_dsn, action_id) == (1, 2)
    stored = await stored_messages(settings.postgres_dsn, turn_id=action_id)
    assert stored[0] == ("user", "[action] summarize")
