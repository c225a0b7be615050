"""Budget race: 50 concurrent turns against a daily budget that admits exactly 10.

Each turn reserves 33 tokens (one model call: the system prompt "Be brief." 3 + the
2-character message 1 + 2 messages' overhead 8 + max_context_tokens 1 in, max_output_tokens
20 out; gateway_runtime/tokens.py) and the persona's budget is 330, so exactly 10
reservations fit. The fake model then uses 30 tokens a turn (10 prompt + 20 completion),
so settling never frees budget for a late turn (300 + 33 > 330).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer

from schemas.codec import header
from schemas.topics import Topics
from tests.security.conftest import AuthMesh
from tests.security.helpers import (
    as_key,
    budget_settles,
    end_of_turn,
    first_of_turn,
    new_key,
    post_turn,
    turn_events,
)

TURNS = 50
ADMITTED = 10


async def _records_reaching_llm(mesh: AuthMesh, turn_ids: set[str]) -> int:
    """TurnContextualized records of these turns: what the LLM stage consumes."""
    topic = Topics.for_namespace(mesh.mesh.env["KAFKA_NAMESPACE"]).contextualized.name
    consumer = AIOKafkaConsumer(
        topic,
        **mesh.mesh.kafka.client_kwargs(),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = consumer.assignment()
        while not partitions:
            await asyncio.sleep(0.05)
            partitions = consumer.assignment()
        end = await consumer.end_offsets(list(partitions))
        seen = 0
        async with asyncio.timeout(30):
            while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    seen += sum(header(r.headers, "event-id") in turn_ids for r in records)
        return seen
    finally:
        await consumer.stop()


async def test_fifty_concurrent_turns_against_a_budget_for_ten(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    tenant = auth_mesh.tenant("race")
    key = await new_key(admin, tenant)
    async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(post_turn(client, None, "go") for _ in range(TURNS)))
        posted_s = time.perf_counter() - started
        assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
        turns = [(r.json()["session_id"], r.json()["event_id"]) for r in responses]
        firsts = await asyncio.gather(
            *(turn_events(client, sid, first_of_turn(tid)) for sid, tid in turns)
        )
        decided_s = time.perf_counter() - started
        outcomes = [events[-1] for events in firsts]
        accepted = [
            (sid, tid)
            for (sid, tid), e in zip(turns, outcomes, strict=True)
            if e.type == "turn.accepted"
        ]
        denials = [e.data["data"] for e in outcomes if e.type == "error"]
        assert len(accepted) == ADMITTED, [e.type for e in outcomes]
        assert len(denials) == TURNS - ADMITTED
        assert {d["code"] for d in denials} == {"budget_exhausted"}
        assert all(d["retryable"] and d["retry_after_s"] > 0 for d in denials)
        assert "00:00 UTC" in denials[0]["message"]
        finals = await asyncio.gather(
            *(turn_events(client, sid, end_of_turn(tid)) for sid, tid in accepted)
        )
        assert all(events[-1].type == "assistant.final" for events in finals)

    reaching_llm = await _records_reaching_llm(auth_mesh, {tid for _, tid in turns})
    assert reaching_llm == ADMITTED

    # Settlement: the reservations are released and the actual usage (30 a turn) counted.
    conn = await asyncpg.connect(auth_mesh.sandbox.postgres_dsn)
    try:
        await budget_settles(conn, tenant, ADMITTED * 30)
        stored = await conn.fetchval("SELECT count(*) FROM turns WHERE tenant = $1", tenant)
    finally:
        await conn.close()
    assert stored == ADMITTED
    print(
        f"\nbudget race: {TURNS} concurrent turns, {len(accepted)} admitted, "
        f"{len(denials)} denied (budget_exhausted), {reaching_llm} reached the LLM stage; "
        f"posted in {posted_s * 1000:.0f} ms, all decided in {decided_s * 1000:.0f} ms"
    )
