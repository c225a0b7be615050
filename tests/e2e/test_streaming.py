"""Streaming to clients: resume, fan-out to many clients, WebSocket, Redis outage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from testbed.mesh import Mesh
from testbed.sandbox import Sandbox
from tests.sse import SseEvent, read_events
from tests.turns import FAKE_ANSWER, ends_turn, profile, streamed_text, turn


async def test_last_event_id_resumes_with_exactly_the_rest(client: httpx.AsyncClient) -> None:
    events = await turn(client, "dialogue")
    session_id = events[0].data["session_id"]
    turn_id = events[-1].turn_id
    assert len(events) > 6  # accepted, several deltas, final
    for cut in (1, 3, len(events) - 1):
        rest = await read_events(
            client,
            f"/v1/session/{session_id}/events",
            ends_turn(turn_id),
            last_event_id=events[cut - 1].id,
        )
        assert [e.id for e in rest] == [e.id for e in events[cut:]]


async def test_sse_headers_and_keep_alive(mesh: Mesh) -> None:
    async with (
        httpx.AsyncClient(base_url=mesh.base_url) as client,
        client.stream("GET", f"/v1/session/s-{uuid.uuid4().hex}/events") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        first = await response.aiter_lines().__anext__()
        assert first.startswith("retry:")


async def test_sse_clients_that_leave_are_let_go_at_once(mesh: Mesh) -> None:
    """The server hears of a client that left only on the ASGI receive channel: each
    stream waits for it, so a closed stream leaves the hub (and gives its lease back)
    without waiting for the next write."""
    session_id = f"s-{uuid.uuid4().hex}"

    async def fanout_clients(http: httpx.AsyncClient, want: int) -> int:
        """The ingress's count of its streams, once it is `want` (or after 5 s)."""
        count = -1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):  # keep-alives come every 15 s: none is needed
                while True:
                    health = (await http.get("/v1/health", headers=mesh.operator_headers)).json()
                    count = int(health["components"]["fanout"]["clients"])
                    if count == want:
                        return count
                    await asyncio.sleep(0.05)
        return count

    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as http:
        before = await fanout_clients(http, 0)
        async with contextlib.AsyncExitStack() as streams:
            readers = []  # (a reader dropped would close its stream)
            for _ in range(5):
                response = await streams.enter_async_context(
                    http.stream("GET", f"/v1/session/{session_id}/events")
                )
                readers.append(response.aiter_lines())
                assert (await readers[-1].__anext__()).startswith("retry:")
            assert await fanout_clients(http, before + 5) == before + 5
        assert await fanout_clients(http, before) == before


async def test_200_clients_one_subscription_each_gets_only_its_session(
    client: httpx.AsyncClient, mesh: Mesh, sandbox: Sandbox
) -> None:
    redis = Redis.from_url(sandbox.redis_url)
    patterns_before = await redis.pubsub_numpat()
    sessions = [f"s-{uuid.uuid4().hex}" for _ in range(50)]
    ready = asyncio.Semaphore(0)
    turn_ids: dict[str, str] = {}

    async def listen(http: httpx.AsyncClient, session_id: str) -> list[SseEvent]:
        seen: list[SseEvent] = []
        async with http.stream("GET", f"/v1/session/{session_id}/events") as response:
            ready.release()
            buffer: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line == "" and "data" in buffer:
                    event = SseEvent(
                        buffer.get("id", ""), buffer.get("event", ""), json.loads(buffer["data"])
                    )
                    seen.append(event)
                    buffer = {}
                    if event.type == "assistant.final":
                        return seen
                elif line and not line.startswith(":"):
                    key, _, value = line.partition(":")
                    buffer[key] = value.lstrip()
        return seen

    limits = httpx.Limits(max_connections=300)
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60, limits=limits) as many:
        listeners = [asyncio.create_task(listen(many, s)) for s in sessions for _ in range(4)]
        async with asyncio.timeout(30):
            for _ in listeners:
                await ready.acquire()
        health = (await many.get("/v1/health", headers=mesh.operator_headers)).json()
        assert health["components"]["fanout"]["clients"] >= 200
        assert await redis.pubsub_numpat() == patterns_before  # no subscription per client
        for session_id in sessions:
            r = await many.post(
                "/v1/session/message", json={"session_id": session_id, "message": "hi"}
            )
            turn_ids[session_id] = r.json()["event_id"]
        async with asyncio.timeout(60):
            results = await asyncio.gather(*listeners)
    await redis.aclose()
    for index, events in enumerate(results):
        session_id = sessions[index // 4]
        assert {e.data["session_id"] for e in events} == {session_id}
        assert [e.type for e in events][-1] == "assistant.final"
        assert streamed_text(events) == FAKE_ANSWER
        assert {e.turn_id for e in events} == {turn_ids[session_id]}


async def test_websocket_starts_a_turn_and_streams_its_events(mesh: Mesh) -> None:
    session_id = f"s-{uuid.uuid4().hex}"
    url = mesh.base_url.replace("http", "ws") + f"/v1/session/{session_id}/stream"
    async with connect(url) as ws:
        await ws.send(json.dumps({"nonsense": True}))
        bad = json.loads(await ws.recv())
        assert bad["type"] == "error" and bad["data"]["code"] == "invalid_request"
        await ws.send(json.dumps({"message": "hello over ws"}))
        frames = []
        async with asyncio.timeout(30):
            while True:
                frame = json.loads(await ws.recv())
                frames.append(frame)
                if frame["type"] in ("assistant.final", "error"):
                    break
    assert frames[0]["type"] == "turn.requested"
    turn_id = frames[0]["event_id"]
    assert frames[-1]["type"] == "assistant.final"
    assert all(f["turn_id"] == turn_id for f in frames[1:])
    assert streamed_text(frames) == FAKE_ANSWER
    assert all(f["id"] for f in frames[1:])


@pytest.fixture
async def slow_named(fake_llm: str):
    async with httpx.AsyncClient() as fake:
        r = await fake.post(
            fake_llm + "/admin/mode", json={"name": "fake-slow", "gap_ms": 150, "tokens": 20}
        )
        r.raise_for_status()
    yield "openai/fake-slow"


async def test_redis_stopped_during_a_turn_the_client_still_gets_the_final_answer(
    client: httpx.AsyncClient, mesh: Mesh, sandbox: Sandbox, fake_llm: str, slow_named: str
) -> None:
    await profile(client, mesh, "slow", slow_named, fake_llm)
    session_id = f"s-{uuid.uuid4().hex}"
    r = await client.post(
        "/v1/session/message",
        json={"session_id": session_id, "message": "hi", "metadata": {"model_role": "slow"}},
    )
    turn_id = r.json()["event_id"]
    streaming = asyncio.Event()

    def until(event: SseEvent) -> bool:
        if event.type == "assistant.delta" and event.data["data"]["seq"] >= 2:
            streaming.set()
        return ends_turn(turn_id)(event)

    reader = asyncio.create_task(read_events(client, f"/v1/session/{session_id}/events", until))
    try:
        await asyncio.wait_for(streaming.wait(), 30)
        await sandbox.stop("redis")  # the mesh's own Redis, never the machine's
        events = await asyncio.wait_for(reader, 60)
    finally:
        await sandbox.start("redis")
    assert events[-1].type == "assistant.final"
    assert any(e.id.startswith("pg-") for e in events)  # came through the fallback log
    final_text = events[-1].data["data"]["text"]
    assert final_text.count("tok") == 20
    async with asyncio.timeout(30):
        while (await client.get("/v1/health", headers=mesh.operator_headers)).json()[  # noqa: ASYNC110
            "components"
        ]["fanout"]["status"] != "ok":
            await asyncio.sleep(0.1)


async def test_a_turn_with_the_real_local_model(
    client: httpx.AsyncClient, mesh: Mesh, sandbox: Sandbox
) -> None:
    r = await client.put(
        f"/v1/model-profiles/local/{mesh.env['DEPLOYMENT_MODE']}",
        json={
            "model": "openai/smollm2",
            "base_url": mesh.env["LOCAL_LLM_BASE_URL"],
            "max_tokens": 32,
            "temperature": 0.2,
        },
        headers=mesh.operator_headers,
    )
    assert r.status_code == 200, r.text
    events = await turn(client, "local")
    assert events[-1].type == "assistant.final", events[-1]
    deltas = [e for e in events if e.type == "assistant.delta"]
    assert len(deltas) >= 2
    assert events[-1].data["data"]["text"].strip()
    assert events[-1].data["data"]["model"] == "openai/smollm2"
