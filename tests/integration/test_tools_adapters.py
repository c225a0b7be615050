"""Both model adapters offer tools and join streamed tool calls (against the fake upstream)."""

from __future__ import annotations

import json

from gateway_runtime.ports import ChatModel, Chunk
from schemas.events import ChatMessage, ModelProfile, ToolCall
from schemas.tools import load_definitions

TOOLS = [d.openai() for d in load_definitions().values()]


async def collect(
    model: ChatModel, fake_llm: str, messages: list[ChatMessage], tools: list[dict]
) -> list[Chunk]:
    profile = ModelProfile(model="openai/fake:tool", base_url=fake_llm + "/v1")
    return [chunk async for chunk in model.stream(profile, messages, tools)]


async def test_a_streamed_tool_call_arrives_whole_on_the_last_chunk(
    adapter: ChatModel, fake_llm: str
) -> None:
    chunks = await collect(adapter, fake_llm, [ChatMessage("user", "6*7?")], TOOLS)
    assert "tool_calls" in {c.finish_reason for c in chunks}
    assert [c.tool_calls for c in chunks if c.tool_calls] == [
        (ToolCall("call_fake_1", "calculator", '{"expression": "6*7"}'),)
    ]
    assert chunks[-1].tool_calls
    assert not "".join(c.text for c in chunks)


async def test_tool_results_go_back_to_the_model(adapter: ChatModel, fake_llm: str) -> None:
    calls = [{"id": "c", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}]
    messages = [
        ChatMessage("user", "6*7?"),
        ChatMessage("assistant", "", tool_calls_json=json.dumps(calls)),
        ChatMessage("tool", "42", tool_call_id="c"),
    ]
    chunks = await collect(adapter, fake_llm, messages, TOOLS)
    assert "".join(c.text for c in chunks) == "The result is 42"
    assert not any(c.tool_calls for c in chunks)


async def test_without_tools_offered_the_model_answers(adapter: ChatModel, fake_llm: str) -> None:
    chunks = await collect(adapter, fake_llm, [ChatMessage("user", "6*7?")], [])
    assert "".join(c.text for c in chunks) == "No tool was offered."
