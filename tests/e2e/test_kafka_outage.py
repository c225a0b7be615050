"""The broker paused or stopped: turns are still accepted within 2 s, and run once after.

100 turns are posted while the outage mesh's own broker is paused (SIGSTOP) or stopped.
Every POST must answer 202 within TURN_ACCEPT_DEADLINE_S (2 s): the first after
KAFKA_PUBLISH_TIMEOUT_S, into the Postgres outbox, the rest straight into the outbox
behind it. The session streams say the turns are queued. Once the broker is back, the
outbox is relayed in order and every turn ends with exactly one final answer, stored
once, with nothing else started. An Idempotency-Key posted 5 times starts one turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import asyncpg
import httpx
import pytest

from testbed.sandbox import Sandbox
from tests.e2e.conftest import OutageMesh
from tests.sse import read_events
from tests.turns import ends_turn, logged_events

Outage = Literal["paused", "stopped"]
TURNS = 100
SESSIONS = 10
ANSWER_WITHIN_S = 2.0


@contextlib.asynccontextmanager
async def broker_down(sandbox: Sandbox, outage: Outage) -> AsyncIterator[None]:
    if outage == "paused":
        await sandbox.pause("kafka")
    else:
        await sandbox.stop("kafka")
    try:
        yield
    finally:
        if outage == "paused":
            await sandbox.resume("kafka")
        else:
            await sandbox.start("kafka")


async def stored_turns(dsn: str, session_ids: list[str]) -> dict[str, int]:
    """Turn rows per turn id of the sessions."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT turn_id, count(*) AS n FROM turns WHERE session_id = any($1::text[])"
            " GROUP BY turn_id",
            session_ids,
        )
    finally:
        await conn.close()
    return {r["turn_id"]: int(r["n"]) for r in rows}


async def settled_turns(
    dsn: str, session_ids: list[str], expected: dict[str, int]
) -> dict[str, int]:
    """The stored turns once they are `expected` (or a turn is stored twice, or 30 s)."""
    async with asyncio.timeout(30):
        while (stored := await stored_turns(dsn, session_ids)) != expected:
            if any(n > 1 for n in stored.values()):
                break
            await asyncio.sleep(0.1)
    return stored


async def finals_by_turn(sandbox: Sandbox, session_ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for session_id in session_ids:
        for event in await logged_events(sandbox, session_id):
            if event["type"] == "assistant.final":
                counts[event["turn_id"]] = counts.get(event["turn_id"], 0) + 1
    return counts


@pytest.mark.parametrize("outage", ["paused", "stopped"])
async def test_turns_posted_during_a_broker_outage_run_once_after(
    outage: Outage, outage_mesh: OutageMesh, outage_client: httpx.AsyncClient
) -> None:
    sessions = [f"kafka-{outage}-{i}-{uuid.uuid4().hex[:6]}" for i in range(SESSIONS)]
    accepted: dict[str, str] = {}  # turn id -> session
    answer_s: list[float] = []
    async with broker_down(outage_mesh.sandbox, outage):
        for i in range(TURNS):
            session_id = sessions[i % SESSIONS]
            posted = time.monotonic()
            r = await outage_client.post(
                "/v1/session/message", json={"session_id": session_id, "message": f"turn {i}"}
            )
            answer_s.append(time.monotonic() - posted)
            assert r.status_code == 202, r.text
            assert r.json()["queued"] is True, r.json()
            accepted[r.json()["event_id"]] = session_id
        # The stream says so (read from the log: the turns have not started).
        async with asyncio.timeout(10):
            queued = await read_events(
                outage_client,
                f"/v1/session/{sessions[0]}/events",
                lambda e: e.type == "turn.queued",
            )
        assert queued[-1].data["data"]["reason"] == "kafka_unavailable"
        back_at = time.monotonic()
    worst = max(answer_s)
    print(
        f"broker {outage}: {TURNS} POSTs, answer max {worst:.3f}s, "
        f"first {answer_s[0]:.3f}s, median {sorted(answer_s)[TURNS // 2]:.4f}s"
    )
    assert worst <= ANSWER_WITHIN_S, f"a POST took {worst:.2f}s"

    # Every accepted turn ends once: one final answer each, in order per session.
    for session_id in sessions:
        last = [t for t, s in accepted.items() if s == session_id][-1]
        async with asyncio.timeout(120):
            await read_events(outage_client, f"/v1/session/{session_id}/events", ends_turn(last))
    print(f"broker {outage}: all {TURNS} turns answered {time.monotonic() - back_at:.1f}s after")
    finals = await finals_by_turn(outage_mesh.sandbox, sessions)
    assert finals == {t: 1 for t in accepted}, "a turn lost, doubled or never asked for"
    once = {t: 1 for t in accepted}
    assert await settled_turns(outage_mesh.dsn, sessions, once) == once
    for session_id in sessions:  # the transcript in posting order
        turns = [
            e["turn_id"]
            for e in await logged_events(outage_mesh.sandbox, session_id)
            if e["type"] == "assistant.final"
        ]
        assert turns == [t for t, s in accepted.items() if s == session_id]


async def test_one_idempotency_key_posted_five_times_starts_one_turn(
    outage_mesh: OutageMesh, outage_client: httpx.AsyncClient
) -> None:
    session_id = f"idem-{uuid.uuid4().hex[:8]}"
    body = {"session_id": session_id, "message": "exactly once"}
    headers = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = await outage_client.post("/v1/session/message", json=body, headers=headers)
    assert first.status_code == 202, first.text
    retries = await asyncio.gather(
        *(outage_client.post("/v1/session/message", json=body, headers=headers) for _ in range(4))
    )
    assert {r.status_code for r in retries} == {202}
    assert {(r.json()["session_id"], r.json()["event_id"]) for r in retries} == {
        (first.json()["session_id"], first.json()["event_id"])
    }
    assert all(r.headers.get("Idempotent-Replayed") == "true" for r in retries)
    other = await outage_client.post(
        "/v1/session/message", json={**body, "message": "another"}, headers=headers
    )
    assert other.status_code == 422 and other.json()["detail"]["code"] == "idempotency_key_reused"

    turn_id = first.json()["event_id"]
    # A second turn of the session ends after anything a retry could have started.
    r = await outage_client.post("/v1/session/message", json={**body, "message": "then"})
    async with asyncio.timeout(30):
        await read_events(
            outage_client, f"/v1/session/{session_id}/events", ends_turn(r.json()["event_id"])
        )
    once = {turn_id: 1, r.json()["event_id"]: 1}
    assert await finals_by_turn(outage_mesh.sandbox, [session_id]) == once
    assert await settled_turns(outage_mesh.dsn, [session_id], once) == once


async def test_an_idempotent_retry_during_a_broker_outage_answers_the_queued_turn(
    outage_mesh: OutageMesh, outage_client: httpx.AsyncClient
) -> None:
    session_id = f"idem-q-{uuid.uuid4().hex[:8]}"
    body = {"session_id": session_id, "message": "queued once"}
    headers = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    async with broker_down(outage_mesh.sandbox, "paused"):
        answers = [
            await outage_client.post("/v1/session/message", json=body, headers=headers)
            for _ in range(5)
        ]
    assert {r.status_code for r in answers} == {202}
    assert len({r.json()["event_id"] for r in answers}) == 1
    turn_id = answers[0].json()["event_id"]
    async with asyncio.timeout(60):
        await read_events(outage_client, f"/v1/session/{session_id}/events", ends_turn(turn_id))
    r = await outage_client.post("/v1/session/message", json={**body, "message": "then"})
    async with asyncio.timeout(30):
        await read_events(
            outage_client, f"/v1/session/{session_id}/events", ends_turn(r.json()["event_id"])
        )
    assert await finals_by_turn(outage_mesh.sandbox, [session_id]) == {
        turn_id: 1,
        r.json()["event_id"]: 1,
    }
