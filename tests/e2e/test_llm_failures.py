"""Provider failures: retry, fallback, mid-stream reset, and a breaker two workers share."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest
from aiokafka.partitioner import murmur2

from testbed.mesh import Mesh
from testbed.sandbox import Sandbox
from tests.turns import FAKE_ANSWER, profile, streamed_text, turn, wait_stored


async def upstream_calls(fake_llm: str, model: str) -> int:
    async with httpx.AsyncClient() as fake:
        return int((await fake.get(fake_llm + "/admin/stats")).json()["by_model"].get(model, 0))


async def set_mode(fake_llm: str, name: str, mode: str) -> None:
    async with httpx.AsyncClient() as fake:
        r = await fake.post(fake_llm + "/admin/mode", json={"name": name, "mode": mode})
        r.raise_for_status()


async def test_failing_deployment_is_retried_then_reported_actionably(
    client: httpx.AsyncClient, mesh: Mesh, fake_llm: str
) -> None:
    await profile(client, mesh, "always500", "openai/fake:error_500", fake_llm)
    events = await turn(client, "always500")
    assert events[-1].type == "error"
    error = events[-1].data["data"]
    assert error["code"] == "llm_unavailable"
    assert error["retryable"] is True and error["retry_after_s"] > 0
    assert "no fallback is configured" in error["message"]
    assert await upstream_calls(fake_llm, "fake:error_500") == 2  # one try + one retry


async def test_fallback_profile_answers_when_the_primary_fails(
    client: httpx.AsyncClient, mesh: Mesh, fake_llm: str
) -> None:
    await profile(client, mesh, "steady", "openai/fake", fake_llm)
    await profile(client, mesh, "flaky", "openai/fake:error_429", fake_llm, ["steady"])
    events = await turn(client, "flaky")
    final = events[-1]
    assert final.type == "assistant.final", events
    assert final.data["data"]["fallback"] is True
    assert final.data["data"]["model"] == "openai/fake"
    assert streamed_text(events) == FAKE_ANSWER


async def test_mid_stream_reset_is_an_error_never_a_finished_answer(
    client: httpx.AsyncClient, mesh: Mesh, fake_llm: str, sandbox: Sandbox
) -> None:
    await profile(client, mesh, "cut", "openai/fake:reset", fake_llm, ["steady"])
    await profile(client, mesh, "steady", "openai/fake", fake_llm)
    events = await turn(client, "cut")
    types = [e.type for e in events]
    assert "assistant.final" not in types
    assert types[-1] == "error"
    assert events[-1].data["data"]["code"] == "llm_stream_interrupted"
    assert 0 < len(streamed_text(events)) < len(FAKE_ANSWER)
    turn_id = events[-1].turn_id
    await wait_stored(sandbox.postgres_dsn, turn_id)
    conn = await asyncpg.connect(sandbox.postgres_dsn)
    try:
        status = await conn.fetchval("SELECT status FROM turns WHERE turn_id = $1", turn_id)
        messages = await conn.fetchval("SELECT count(*) FROM messages WHERE turn_id = $1", turn_id)
    finally:
        await conn.close()
    assert (status, messages) == ("failed", 0)


def sessions_covering_every_partition(partitions: int = 12) -> list[str]:
    """One session id per partition, so every llm worker of the group gets some."""
    found: dict[int, str] = {}
    while len(found) < partitions:
        sid = f"s-{uuid.uuid4().hex}"
        found.setdefault((murmur2(sid.encode()) & 0x7FFFFFFF) % partitions, sid)
    return list(found.values())


async def breaker_state(client: httpx.AsyncClient, deployment: str) -> str:
    metrics = (await client.get("/metrics")).text
    for line in metrics.splitlines():
        if line.startswith("soma_llm_breaker_state{") and f'deployment="{deployment}"' in line:
            if line.endswith(" 1.0"):
                return line.split('state="')[1].split('"')[0]
    return "unknown"


@pytest.fixture
async def second_llm_worker(mesh: Mesh):
    mesh.start("llm_worker_2", module="llm_worker")
    await mesh.wait_group_members("llm", count=2)
    yield
    mesh.stop("llm_worker_2")


@pytest.mark.usefixtures("second_llm_worker")
async def test_breaker_opens_half_opens_and_closes_across_two_llm_workers(
    client: httpx.AsyncClient, mesh: Mesh, fake_llm: str
) -> None:
    name = "fake-breaker"
    deployment = f"brk/{mesh.env['DEPLOYMENT_MODE']}"  # the profile's name, never its URL
    await set_mode(fake_llm, name, "error_500")
    await profile(client, mesh, "brk", f"openai/{name}", fake_llm)

    # Threshold 3: two turns (two calls each) open it.
    for _ in range(2):
        assert (await turn(client, "brk"))[-1].type == "error"
    assert await breaker_state(client, deployment) == "open"
    calls = await upstream_calls(fake_llm, name)

    # Open: turns on every partition, so on both workers, fail fast without a call.
    sessions = sessions_covering_every_partition()
    results = await asyncio.gather(*(turn(client, "brk", sid) for sid in sessions))
    for events in results:
        assert "circuit open" in events[-1].data["data"]["message"]
    assert await upstream_calls(fake_llm, name) == calls

    # After the cooldown one probe goes; the upstream is healthy again, so it closes.
    await set_mode(fake_llm, name, "ok")
    async with asyncio.timeout(10):
        while await breaker_state(client, deployment) != "half_open":  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert (await turn(client, "brk"))[-1].type == "assistant.final"
    assert await breaker_state(client, deployment) == "closed"
    assert await upstream_calls(fake_llm, name) == calls + 1
