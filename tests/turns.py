"""Helpers the end-to-end tests share: start a turn, follow it, check what was stored,
what the durable log holds and what the model upstream was sent."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from testbed.mesh import Mesh
from testbed.sandbox import Sandbox
from tests.sse import SseEvent, read_events

# The fake upstream's default answer: 20 tokens (bench/fake_upstream.py).
FAKE_ANSWER = "".join(f"tok{i} " for i in range(20))


def streamed_text(frames: list[Any]) -> str:
    """The answer as its `assistant.delta` frames streamed it (SSE events or WebSocket
    frames), after checking the frames are whole: each delta's `seq` counts the model's
    pieces sent so far, so it grows with every frame (several pieces may share one)."""
    data = [
        f.data["data"] if isinstance(f, SseEvent) else f["data"]
        for f in frames
        if (f.type if isinstance(f, SseEvent) else f["type"]) == "assistant.delta"
    ]
    seqs = [d["seq"] for d in data]
    assert seqs == sorted(set(seqs)), f"delta seq must grow with every frame: {seqs}"
    return "".join(d["text"] for d in data)


def ends_turn(turn_id: str) -> Callable[[SseEvent], bool]:
    return lambda e: e.turn_id == turn_id and e.type in ("assistant.final", "error")


async def turn(
    client: httpx.AsyncClient,
    role: str = "dialogue",
    session_id: str | None = None,
    message: str = "hi",
    **extra: Any,
) -> list[SseEvent]:
    """Post a message with the given model role and read its events to the end."""
    session_id = session_id or f"s-{uuid.uuid4().hex}"
    r = await client.post(
        "/v1/session/message",
        json={
            "session_id": session_id,
            "message": message,
            "metadata": {"model_role": role},
            **extra,
        },
    )
    assert r.status_code == 202, r.text
    turn_id = r.json()["event_id"]
    async with asyncio.timeout(30):
        return await read_events(client, f"/v1/session/{session_id}/events", ends_turn(turn_id))


async def profile(
    client: httpx.AsyncClient,
    mesh: Mesh,
    role: str,
    model: str,
    fake_llm: str,
    fallbacks: list[str] | None = None,
) -> None:
    """Point `role` (in the mesh's deployment mode) at a model of the fake upstream (as the
    mesh's operator: profiles serve every tenant)."""
    r = await client.put(
        f"/v1/model-profiles/{role}/{mesh.env['DEPLOYMENT_MODE']}",
        json={"model": model, "base_url": fake_llm + "/v1", "fallbacks": fallbacks or []},
        headers=mesh.operator_headers,
    )
    assert r.status_code == 200, r.text


async def stored_rows(dsn: str, turn_id: str) -> tuple[int, int]:
    """(turn rows, message rows) stored for a turn."""
    conn = await asyncpg.connect(dsn)
    try:
        # One statement, one snapshot: the rows of a turn are written in one transaction.
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM turns WHERE turn_id = $1) AS turns,"
            " (SELECT count(*) FROM messages WHERE turn_id = $1) AS messages",
            turn_id,
        )
        return int(row["turns"]), int(row["messages"])
    finally:
        await conn.close()


async def wait_stored(dsn: str, turn_id: str, timeout: float = 20) -> tuple[int, int]:
    async with asyncio.timeout(timeout):
        while (rows := await stored_rows(dsn, turn_id)) == (0, 0):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return rows


async def stored_messages(
    dsn: str, *, session_id: str | None = None, turn_id: str | None = None
) -> list[tuple[str, str]]:
    """(role, content) of the stored transcript of a session or of one turn, in order."""
    column, value = ("session_id", session_id) if session_id else ("turn_id", turn_id)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f"SELECT role, content FROM messages WHERE {column} = $1 ORDER BY id", value
        )
    finally:
        await conn.close()
    return [(r["role"], r["content"]) for r in rows]


async def logged_events(sandbox: Sandbox, session_id: str) -> list[dict[str, Any]]:
    """Every event of the session's durable log (the Redis stream SSE resumes from)."""
    redis = Redis.from_url(sandbox.redis_url)
    try:
        entries = await redis.xrange(sandbox.keys.stream(session_id))
    finally:
        await redis.aclose()
    return [json.loads(fields[b"e"]) for _, fields in entries]


async def sent_upstream(fake_llm: str, contains: str) -> list[list[tuple[str, str]]]:
    """The (role, content) messages of each chat request the fake upstream received whose
    body holds `contains`, oldest first: what the model was actually sent."""
    async with httpx.AsyncClient(base_url=fake_llm) as fake:
        r = await fake.get("/admin/requests", params={"contains": contains})
    r.raise_for_status()
    return [
        [(m["role"], m.get("content") or "") for m in request["messages"]]
        for request in r.json()["requests"]
    ]
