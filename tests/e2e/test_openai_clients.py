"""Real OpenAI clients pointed at the gateway with `base_url`, unchanged: the official
`openai` SDK (sync and async, streamed and not, tools, errors, models) and LangChain's
`ChatOpenAI`, on a real mesh (auth off, as `make up`) with the mesh's real operator key.
Every answer comes from the fake upstream through the policy, context and LLM stages."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI, OpenAI

from testbed.mesh import Mesh
from tests.turns import FAKE_ANSWER, profile

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluates an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}


@pytest.fixture
def base_url(mesh: Mesh) -> str:
    return mesh.base_url + "/v1"


@pytest.fixture
async def aclient(mesh: Mesh, base_url: str) -> AsyncIterator[AsyncOpenAI]:
    # max_retries=0: an error must be the gateway's answer, not the last of 3 tries.
    async with AsyncOpenAI(
        base_url=base_url, api_key=mesh.operator_key, max_retries=0, timeout=60
    ) as client:
        yield client


@pytest.fixture
def sclient(mesh: Mesh, base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key=mesh.operator_key, max_retries=0, timeout=60)


@pytest.fixture
async def tool_role(mesh: Mesh, fake_llm: str) -> str:
    """A role on the fake's `tool` mode: it calls `calculator` when offered it, then
    answers with the tool's result."""
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as client:
        await profile(client, mesh, "oa-calc", "openai/fake:tool:40", fake_llm)
    return "oa-calc"


def user(text: str = "hi") -> list[Any]:
    return [{"role": "user", "content": text}]


# ---- the openai SDK ---------------------------------------------------------------------


async def test_sync_client_non_streamed_and_streamed(sclient: OpenAI) -> None:
    def run() -> tuple[Any, list[Any]]:
        completion = sclient.chat.completions.create(model="dialogue", messages=user())
        stream = sclient.chat.completions.create(model="dialogue", messages=user(), stream=True)
        return completion, list(stream)

    completion, chunks = await asyncio.to_thread(run)

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-") and completion.model == "dialogue"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == FAKE_ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 20)
    assert completion.usage.total_tokens == 30

    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].id != completion.id  # one turn each
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == FAKE_ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # usage only with include_usage


async def test_async_client_streams_with_include_usage(aclient: AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="dialogue",
        messages=user(),
        stream=True,
        stream_options={"include_usage": True},
        max_completion_tokens=64,
        temperature=0.2,
        seed=1,
    )
    chunks = [c async for c in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FAKE_ANSWER
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (10, 20)
    assert all(c.usage is None for c in chunks[:-1])


async def test_a_raw_response_names_the_session_to_continue(aclient: AsyncOpenAI) -> None:
    raw = await aclient.chat.completions.with_raw_response.create(
        model="openai/fake", messages=user()
    )
    session_id = raw.headers["x-session-id"]
    completion = raw.parse()
    assert completion.model == "openai/fake"  # the model asked for, as OpenAI echoes it
    assert completion.id == "chatcmpl-" + completion.id.removeprefix("chatcmpl-")

    again = await aclient.chat.completions.with_raw_response.create(
        model="fake", messages=user("more"), extra_headers={"X-Session-Id": session_id}
    )
    assert again.headers["x-session-id"] == session_id
    assert again.parse().choices[0].message.content == FAKE_ANSWER


async def test_tool_calls_round_trip(aclient: AsyncOpenAI, tool_role: str) -> None:
    """The model's call comes back to the client, which runs it and sends the result."""
    question = [{"role": "user", "content": f"what is 6*7? ({uuid.uuid4().hex})"}]
    first = await aclient.chat.completions.create(
        model=tool_role, messages=question, tools=[CALCULATOR], tool_choice="auto"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "6*7"}

    follow_up = [
        *question,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "42"},
    ]
    second = await aclient.chat.completions.create(
        model=tool_role, messages=follow_up, tools=[CALCULATOR]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "The result is 42"

    # Streamed, the call comes as a delta with its index, id, name and arguments.
    stream = await aclient.chat.completions.create(
        model=tool_role, messages=question, tools=[CALCULATOR], stream=True
    )
    chunks = [c async for c in stream]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.index, tc.function.name) for tc in calls] == [(0, "calculator")]  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"expression": "6*7"}  # type: ignore[union-attr,arg-type]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_errors_are_the_sdks_exceptions(
    aclient: AsyncOpenAI, mesh: Mesh, base_url: str
) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        await aclient.chat.completions.create(model="no-such-model", messages=user())
    assert (not_found.value.code, not_found.value.param) == ("model_not_found", "model")

    with pytest.raises(openai.BadRequestError) as bad:
        await aclient.chat.completions.create(model="dialogue", messages=user(), n=2)
    assert bad.value.param == "n"

    with pytest.raises(openai.BadRequestError) as image:
        await aclient.chat.completions.create(
            model="dialogue",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                }
            ],
        )
    assert image.value.param == "messages.0.content.1.type"

    bogus = AsyncOpenAI(base_url=base_url, api_key="sk_" + "0" * 40, max_retries=0)
    async with bogus:
        with pytest.raises(openai.AuthenticationError) as denied:
            await bogus.chat.completions.create(model="dialogue", messages=user())
        with pytest.raises(openai.AuthenticationError):
            await bogus.models.list()
    assert denied.value.status_code == 401
    assert denied.value.response.headers.get("www-authenticate", "").startswith("Bearer")


async def test_models_list_and_retrieve(aclient: AsyncOpenAI, tool_role: str) -> None:
    models = [m async for m in aclient.models.list()]
    ids = [m.id for m in models]
    assert ids[0] == "dialogue" and tool_role in ids
    assert all(m.object == "model" and m.owned_by == "soma-gateway" for m in models)

    assert (await aclient.models.retrieve("dialogue")).id == "dialogue"
    assert (await aclient.models.retrieve("openai/fake")).id == "openai/fake"
    with pytest.raises(openai.NotFoundError):
        await aclient.models.retrieve("gpt-4o")


# ---- LangChain --------------------------------------------------------------------------


async def test_langchain_chat_openai_invoke_stream_and_tools(
    mesh: Mesh, base_url: str, tool_role: str
) -> None:
    llm = ChatOpenAI(base_url=base_url, api_key=mesh.operator_key, model="dialogue")

    @tool
    def calculator(expression: str) -> str:
        """Evaluates an arithmetic expression."""
        return "42"

    def run() -> tuple[Any, list[Any], Any]:
        answer = llm.invoke("hi")
        chunks = list(llm.stream("hi", stream_usage=True))
        with_tools = ChatOpenAI(
            base_url=base_url, api_key=mesh.operator_key, model=tool_role
        ).bind_tools([calculator])
        return answer, chunks, with_tools.invoke("what is 6*7?")

    answer, chunks, called = await asyncio.to_thread(run)

    assert isinstance(answer, AIMessage) and answer.content == FAKE_ANSWER
    assert answer.usage_metadata is not None and answer.usage_metadata["total_tokens"] == 30
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks) == FAKE_ANSWER
    # Asked for a stream's usage (stream_options.include_usage), LangChain gets it.
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.usage_metadata is not None and merged.usage_metadata["output_tokens"] == 20

    assert [(c["name"], c["args"]) for c in called.tool_calls] == [
        ("calculator", {"expression": "6*7"})
    ]

    # The async API, too.
    async_answer = await llm.ainvoke("hi")
    assert async_answer.content == FAKE_ANSWER
