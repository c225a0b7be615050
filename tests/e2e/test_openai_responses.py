"""The Responses API with the official openai SDK on a real mesh (auth off, as `make up`,
with the mesh's real operator key): background responses retrieved and resumed, streams,
cancel, delete, previous_response_id, function calls; and the durability the issue asks
for: a kill -9 of the LLM worker and a restart of the ingress in the middle of a stream,
then a resume with `starting_after`, with no gap, no duplicate and one coherent answer.

Every answer comes from the fake upstream through the policy, context and LLM stages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import openai
import pytest
from openai import AsyncOpenAI

from ingress.openai.response_store import ResponseStore
from testbed.mesh import Mesh
from testbed.sandbox import Sandbox
from tests.turns import FAKE_ANSWER, logged_events, profile, sent_upstream

# The fake's 20 tokens, 150 ms apart: a response streams for about 3 s.
SLOW_MODEL = "openai/fake:ok:50:20:150"
CALCULATOR = {
    "type": "function",
    "name": "calculator",
    "description": "Evaluates an arithmetic expression.",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
}


@pytest.fixture
async def aclient(mesh: Mesh) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        base_url=mesh.base_url + "/v1", api_key=mesh.operator_key, max_retries=0, timeout=60
    ) as client:
        yield client


async def _role(mesh: Mesh, fake_llm: str, role: str, model: str) -> str:
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as client:
        await profile(client, mesh, role, model, fake_llm)
    return role


@pytest.fixture
async def slow_role(mesh: Mesh, fake_llm: str) -> str:
    return await _role(mesh, fake_llm, "resp-slow", SLOW_MODEL)


@pytest.fixture
async def tool_role(mesh: Mesh, fake_llm: str) -> str:
    return await _role(mesh, fake_llm, "resp-calc", "openai/fake:tool")


async def until_status(client: AsyncOpenAI, rid: str, wanted: set[str], timeout: float = 60) -> Any:
    async with asyncio.timeout(timeout):
        while (response := await client.responses.retrieve(rid)).status not in wanted:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return response


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def gaps_and_duplicates(seqs: list[int]) -> tuple[int, int]:
    """Sequence numbers missing below the last one received, and those received twice."""
    missing = set(range(max(seqs) + 1)) - set(seqs)
    return len(missing), len(seqs) - len(set(seqs))


# ---- the SDK's calls --------------------------------------------------------------------


async def test_background_create_then_retrieve_until_completed(aclient: AsyncOpenAI) -> None:
    created = await aclient.responses.create(
        model="dialogue",
        input="hello",
        instructions="be brief",
        background=True,
        metadata={"ticket": "t-1"},
    )
    assert created.id.startswith("resp_") and created.object == "response"
    assert created.status == "queued" and created.background is True
    assert created.metadata == {"ticket": "t-1"} and created.instructions == "be brief"

    done = await until_status(aclient, created.id, {"completed", "failed"})
    assert done.status == "completed", done.error
    assert done.output_text == FAKE_ANSWER
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (
        10,
        20,
    )
    assert done.created_at == created.created_at and done.model == "dialogue"


async def test_create_streamed_and_the_stream_helper(aclient: AsyncOpenAI) -> None:
    stream = await aclient.responses.create(model="dialogue", input="hello", stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert text_of(events) == FAKE_ANSWER
    assert events[-1].response.output_text == FAKE_ANSWER  # type: ignore[union-attr]

    async with aclient.responses.stream(model="dialogue", input="hello again") as helper:
        final = await helper.get_final_response()
    assert final.output_text == FAKE_ANSWER and final.status == "completed"

    background = await aclient.responses.create(
        model="dialogue", input="hello", stream=True, background=True
    )
    events = [e async for e in background]
    assert [e.type for e in events[:2]] == ["response.created", "response.queued"]
    assert events[0].response.status == "queued"  # type: ignore[union-attr]
    assert events[-1].type == "response.completed" and text_of(events) == FAKE_ANSWER


async def test_non_streamed_create_answers_the_completed_response(aclient: AsyncOpenAI) -> None:
    response = await aclient.responses.create(
        model="dialogue", input=[{"role": "user", "content": "hi"}], max_output_tokens=64
    )
    assert response.status == "completed" and response.output_text == FAKE_ANSWER
    again = await aclient.responses.retrieve(response.id)
    assert again.model_dump() == response.model_dump()

    unstored = await aclient.responses.create(model="dialogue", input="hi", store=False)
    assert unstored.output_text == FAKE_ANSWER and unstored.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        await aclient.responses.retrieve(unstored.id)


async def test_an_idempotency_key_answers_the_same_response(aclient: AsyncOpenAI) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await aclient.responses.create(
        model="dialogue", input="once", background=True, extra_headers=key
    )
    again = await aclient.responses.create(
        model="dialogue", input="once", background=True, extra_headers=key
    )
    assert again.id == first.id and again.created_at == first.created_at


async def test_a_response_past_its_retention_is_gone(
    aclient: AsyncOpenAI, sandbox: Sandbox
) -> None:
    response = await aclient.responses.create(model="dialogue", input="short-lived")
    pool = await asyncpg.create_pool(sandbox.postgres_dsn, min_size=1, max_size=1)
    try:
        store = ResponseStore(pool, retention_s=3600)
        stored = await store.get(response.id)
        assert stored is not None and stored.status == "completed"
        await pool.execute(
            "UPDATE responses SET expires_at = now() - interval '1 second' WHERE id = $1",
            response.id,
        )
        assert await store.get(response.id) is None
        with pytest.raises(openai.NotFoundError):
            await aclient.responses.retrieve(response.id)
        # the next insert purges it
        await aclient.responses.create(model="dialogue", input="next", background=True)
        left = await pool.fetchval("SELECT count(*) FROM responses WHERE id = $1", response.id)
        assert left == 0
    finally:
        await pool.close()


async def test_retrieve_stream_resumes_exactly_after_any_event(
    aclient: AsyncOpenAI, slow_role: str
) -> None:
    created = await aclient.responses.create(model=slow_role, input="resume me", background=True)
    # Mid-run: the first events, then the rest from where the client stopped.
    first: list[Any] = []
    stream = await aclient.responses.retrieve(created.id, stream=True)
    async for event in stream:
        first.append(event)
        if text_deltas(first) == 3:
            break
    await stream.close()
    last = first[-1].sequence_number
    rest = [
        e
        async for e in await aclient.responses.retrieve(
            created.id, stream=True, starting_after=last
        )
    ]
    events = first + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert text_of(events) == FAKE_ANSWER
    assert events[-1].type == "response.completed"

    # Once it ended: the same events, from any point, every time.
    whole = [e async for e in await aclient.responses.retrieve(created.id, stream=True)]
    assert [e.model_dump() for e in whole] == [e.model_dump() for e in events]
    for n in (0, 5, len(events) - 2):
        tail = await aclient.responses.retrieve(created.id, stream=True, starting_after=n)
        assert [e.model_dump() async for e in tail] == [e.model_dump() for e in whole[n + 1 :]]

    # The SDK's own stream helper resumes too (it filters on its side).
    async with aclient.responses.stream(response_id=created.id, starting_after=4) as helper:
        resumed = [e async for e in helper]
        final = await helper.get_final_response()
    assert resumed[0].sequence_number == 5 and final.output_text == FAKE_ANSWER


async def test_cancel_a_background_response(aclient: AsyncOpenAI, slow_role: str) -> None:
    created = await aclient.responses.create(model=slow_role, input="cancel me", background=True)
    running = await until_status(aclient, created.id, {"in_progress", "completed"})
    assert running.status == "in_progress"
    cancelled = await aclient.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    again = await until_status(aclient, created.id, {"cancelled", "completed"}, timeout=10)
    assert again.status == "cancelled"
    events = [e async for e in await aclient.responses.retrieve(created.id, stream=True)]
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "cancelled"
    assert len(text_of(events)) < len(FAKE_ANSWER)
    # Cancelling again answers the response as it is.
    assert (await aclient.responses.cancel(created.id)).status == "cancelled"


async def test_delete_then_404(aclient: AsyncOpenAI) -> None:
    response = await aclient.responses.create(model="dialogue", input="delete me")
    await aclient.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as gone:
        await aclient.responses.retrieve(response.id)
    assert gone.value.code == "not_found"
    with pytest.raises(openai.NotFoundError):
        await aclient.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as unknown:
        await aclient.responses.create(
            model="dialogue", input="more", previous_response_id=response.id
        )
    assert unknown.value.param == "previous_response_id"


async def test_previous_response_id_continues_the_conversation(
    aclient: AsyncOpenAI, fake_llm: str
) -> None:
    marker = uuid.uuid4().hex
    first = await aclient.responses.create(model="dialogue", input=f"x {marker}")
    assert first.output_text == FAKE_ANSWER
    second = await aclient.responses.create(
        model="dialogue", input=f"y {marker}", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id and second.output_text == FAKE_ANSWER
    *_, sent = await sent_upstream(fake_llm, f"y {marker}")
    assert sent[-3:] == [
        ("user", f"x {marker}"),
        ("assistant", FAKE_ANSWER),
        ("user", f"y {marker}"),
    ]


async def test_function_calls_round_trip_with_previous_response_id(
    aclient: AsyncOpenAI, tool_role: str
) -> None:
    first = await aclient.responses.create(
        model=tool_role,
        input=f"what is 6*7? ({uuid.uuid4().hex})",
        tools=[CALCULATOR],  # type: ignore[list-item]
    )
    [call] = first.output
    assert call.type == "function_call" and call.name == "calculator"
    assert json.loads(call.arguments) == {"expression": "6*7"}
    second = await aclient.responses.create(
        model=tool_role,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "42"}],
        tools=[CALCULATOR],  # type: ignore[list-item]
    )
    assert second.output_text == "The result is 42"


async def test_what_is_not_supported_is_the_sdks_400(aclient: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as tool:
        await aclient.responses.create(model="dialogue", input="hi", tools=[{"type": "web_search"}])
    assert tool.value.param == "tools[0].type"
    with pytest.raises(openai.BadRequestError) as store:
        await aclient.responses.create(model="dialogue", input="hi", background=True, store=False)
    assert store.value.param == "store"
    with pytest.raises(openai.NotFoundError) as model:
        await aclient.responses.create(model="no-such-model", input="hi")
    assert model.value.code == "model_not_found"


# ---- durability -------------------------------------------------------------------------


async def _read(
    client: AsyncOpenAI,
    rid: str,
    into: list[Any],
    *,
    starting_after: int | None = None,
    streaming: asyncio.Event | None = None,
) -> None:
    """Events of the response's stream into `into` until it ends or the connection breaks
    (the ingress died); `streaming` is set once 3 text deltas are in."""
    kwargs: dict[str, Any] = {} if starting_after is None else {"starting_after": starting_after}
    with contextlib.suppress(openai.APIError, httpx.HTTPError):
        stream = await client.responses.retrieve(rid, stream=True, **kwargs)
        async for event in stream:
            into.append(event)
            if streaming is not None and text_deltas(into) >= 3:
                streaming.set()


def text_deltas(events: list[Any]) -> int:
    return sum(e.type == "response.output_text.delta" for e in events)


async def test_llm_worker_killed_mid_stream_then_resumed(
    mesh: Mesh, aclient: AsyncOpenAI, slow_role: str, sandbox: Sandbox
) -> None:
    raw = await aclient.responses.with_raw_response.create(
        model=slow_role, input="survive a crash", background=True
    )
    session_id, created = raw.headers["x-session-id"], raw.parse()
    received: list[Any] = []
    streaming = asyncio.Event()
    reader = asyncio.create_task(_read(aclient, created.id, received, streaming=streaming))
    await asyncio.wait_for(streaming.wait(), 30)
    mesh.kill("llm_worker")
    mesh.start("llm_worker")
    await asyncio.wait_for(reader, 120)
    # ... and a client that then reconnects from the middle gets exactly the rest.
    n = len(received) // 2
    again: list[Any] = []
    await _read(aclient, created.id, again, starting_after=received[n].sequence_number)
    await mesh.wait_group_members("llm")

    seqs = [e.sequence_number for e in received]
    gaps, duplicates = gaps_and_duplicates(seqs)
    print(f"\nllm worker kill -9: {len(received)} events, {gaps} gaps, {duplicates} duplicates")
    assert (gaps, duplicates) == (0, 0)
    assert received[-1].type == "response.completed"
    assert text_of(received) == FAKE_ANSWER  # one coherent answer, streamed once
    assert received[-1].response.output_text == FAKE_ANSWER
    assert [e.model_dump() for e in again] == [e.model_dump() for e in received[n + 1 :]]
    logged = [e["type"] for e in await logged_events(sandbox, session_id)]
    assert "turn.retrying" in logged, logged
    retry = logged.index("turn.retrying")
    print(
        f"log: {logged[:retry].count('assistant.delta')} deltas, turn.retrying, "
        f"{logged[retry:].count('assistant.delta')} deltas of the rerun"
    )
    assert (await aclient.responses.retrieve(created.id)).output_text == FAKE_ANSWER


async def test_ingress_restarted_mid_stream_then_resumed(
    mesh: Mesh, aclient: AsyncOpenAI, slow_role: str
) -> None:
    created = await aclient.responses.create(
        model=slow_role, input="survive a restart", background=True
    )
    before: list[Any] = []
    streaming = asyncio.Event()
    reader = asyncio.create_task(_read(aclient, created.id, before, streaming=streaming))
    await asyncio.wait_for(streaming.wait(), 30)
    killed_at = time.monotonic()
    mesh.kill("ingress")
    await asyncio.wait_for(reader, 30)  # the connection broke
    mesh.start("ingress")
    await mesh.wait_healthy()
    back_after = time.monotonic() - killed_at
    after: list[Any] = []
    await _read(aclient, created.id, after, starting_after=before[-1].sequence_number)

    received = before + after
    seqs = [e.sequence_number for e in received]
    gaps, duplicates = gaps_and_duplicates(seqs)
    print(
        f"\ningress restart: {len(before)} + {len(after)} events, {gaps} gaps, "
        f"{duplicates} duplicates, back after {back_after:.1f}s"
    )
    assert (gaps, duplicates) == (0, 0)
    assert received[-1].type == "response.completed"
    assert text_of(received) == FAKE_ANSWER
    done = await until_status(aclient, created.id, {"completed"}, timeout=10)
    assert done.output_text == FAKE_ANSWER
