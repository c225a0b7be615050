"""The tool round in both stages, with in-memory twins of the fan-out and the model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.tenants import TenantDirectory
from gateway_runtime.ports import Chunk, ToolSpecs
from gateway_runtime.redis_keys import RedisKeys
from llm_worker.handler import LLMHandler
from llm_worker.router import ModelRouter
from llm_worker.tool_requests import ToolOffer
from llm_worker.wire import ToolCallAccumulator, wire_messages
from schemas.codec import Codec
from schemas.events import (
    ChatMessage,
    ModelProfile,
    ToolCall,
    ToolRequested,
    TurnCompleted,
    TurnContextualized,
    TurnRequested,
    Usage,
)
from schemas.tools import load_definitions
from schemas.topics import Topics
from tool_dispatcher.handler import ToolDispatcher
from tool_dispatcher.registry import ToolRegistry
from tool_dispatcher.tools import BUILTIN_TOOLS

TOPICS = Topics.for_namespace("t")
KEYS = RedisKeys("t")


class MemoryFanout:
    """An in-memory twin of FanoutPublisher (once-keys included)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.once: dict[str, dict[str, Any]] = {}

    async def publish(
        self,
        session_id: str,
        turn_id: str,
        event_type: str,
        data: dict[str, Any],
        *,
        once_key: str | None = None,
    ) -> str | None:
        payload = {"type": event_type, "session_id": session_id, "turn_id": turn_id, "data": data}
        if once_key is not None:
            if once_key in self.once:
                return None
            self.once[once_key] = payload
        self.events.append((event_type, data))
        return str(len(self.events))

    async def recorded(self, once_key: str) -> dict[str, Any] | None:
        return self.once.get(once_key)

    def types(self) -> list[str]:
        return [t for t, _ in self.events]


class Attempts:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    async def begin(self, key: str) -> int:
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]


class AlwaysHealthy:
    async def allow(self, name: str) -> str:
        return "allow"

    async def succeeded(self, name: str, ttft_ms: float) -> str:
        return "closed"

    async def failed(self, name: str) -> str:
        return "closed"


class ScriptedModel:
    """Answers with tool calls while offered tools and no tool result is in the messages."""

    def __init__(self) -> None:
        self.offered: list[list[str]] = []

    async def stream(
        self, profile: ModelProfile, messages: list[ChatMessage], tools: ToolSpecs = ()
    ) -> AsyncIterator[Chunk]:
        self.offered.append([t["function"]["name"] for t in tools])
        if tools and not any(m.role == "tool" for m in messages):
            yield Chunk(finish_reason="tool_calls", usage=Usage(10, 5))
            yield Chunk(tool_calls=(ToolCall("c1", "calculator", '{"expression": "6*7"}'),))
            return
        result = next((m.content for m in reversed(messages) if m.role == "tool"), "nothing")
        yield Chunk(text=f"The result is {result}")
        yield Chunk(finish_reason="stop", usage=Usage(20, 4))


@pytest.fixture
def tenants(tmp_path: Path) -> TenantDirectory:
    path = tmp_path / "tenants.yaml"
    path.write_text(
        "tenants:\n"
        "  default: {tools_allow: ['*']}\n"
        "  mathy: {tools_allow: ['calc*']}\n"
        "  quiet: {tools_allow: []}\n"
    )
    return TenantDirectory(path)


def _turn(tenant: str = "default", **overrides: Any) -> TurnContextualized:
    request = TurnRequested("turn-1", "s1", "what is 6*7?", 1, tenant=tenant)
    fields: dict[str, Any] = dict(
        request=request,
        principal="alice",
        messages=[ChatMessage("system", "Be brief."), ChatMessage("user", "what is 6*7?")],
        profile=ModelProfile(model="openai/fake:tool"),
    )
    fields.update(overrides)
    return TurnContextualized(**fields)


def _llm(
    tenants: TenantDirectory, model: ScriptedModel, fanout: MemoryFanout, max_rounds: int = 4
) -> LLMHandler:
    return LLMHandler(
        topics=TOPICS,
        keys=KEYS,
        router=ModelRouter(model, AlwaysHealthy()),  # type: ignore[arg-type]
        fanout=fanout,
        attempts=Attempts(),
        tools=ToolOffer(load_definitions(), tenants, max_rounds),
    )


def _dispatcher(tenants: TenantDirectory, fanout: MemoryFanout) -> ToolDispatcher:
    return ToolDispatcher(TOPICS, KEYS, ToolRegistry(BUILTIN_TOOLS), tenants, fanout)


async def test_a_turn_goes_llm_tools_llm_and_completes_with_the_result(
    tenants: TenantDirectory,
) -> None:
    fanout, model = MemoryFanout(), ScriptedModel()
    llm, tools = _llm(tenants, model, fanout), _dispatcher(tenants, fanout)

    [asked] = await llm.handle(_turn())
    assert asked.topic == "t.tool.requested"
    request = asked.event
    assert isinstance(request, ToolRequested)
    assert request.calls == [ToolCall("c1", "calculator", '{"expression": "6*7"}')]
    assert request.usage == Usage(10, 5)

    [back] = await tools.handle(request)
    assert back.topic == "t.turn.contextualized"
    again = back.event
    assert isinstance(again, TurnContextualized)
    assert again.tool_rounds == 1 and again.prior_usage == Usage(10, 5)
    assistant, tool = again.messages[-2:]
    assert (assistant.role, tool.role, tool.content, tool.tool_call_id) == (
        "assistant",
        "tool",
        "42",
        "c1",
    )
    assert json.loads(assistant.tool_calls_json or "")[0]["function"]["name"] == "calculator"

    [done] = await llm.handle(again)
    assert done.topic == "t.turn.completed"
    completed = done.event
    assert isinstance(completed, TurnCompleted)
    assert completed.answer == "The result is 42"
    assert completed.usage == Usage(30, 9)  # both rounds: the budget settles on the whole turn
    assert fanout.types() == ["tool.call", "tool.result", "assistant.delta", "assistant.final"]
    assert fanout.events[1][1] == {
        "round": 0,
        "id": "c1",
        "name": "calculator",
        "ok": True,
        "content": "42",
    }
    assert model.offered == [["calculator", "current_time"]] * 2


async def test_tools_follow_the_tenants_allow_list(tenants: TenantDirectory) -> None:
    model = ScriptedModel()
    await _llm(tenants, model, MemoryFanout()).handle(_turn("mathy"))
    [answered] = await _llm(tenants, model, MemoryFanout()).handle(_turn("quiet"))
    assert model.offered == [["calculator"], []]
    assert answered.topic == "t.turn.completed"


async def test_the_dispatcher_refuses_tools_the_tenant_may_not_use(
    tenants: TenantDirectory,
) -> None:
    fanout = MemoryFanout()
    calls = [
        ToolCall("a", "current_time", "{}"),
        ToolCall("b", "calculator", '{"expression": "1+1"}'),
        ToolCall("c", "shell", '{"cmd": "ls"}'),
    ]
    request = ToolRequested(_turn("mathy"), calls, Usage(), 1)
    [back] = await _dispatcher(tenants, fanout).handle(request)
    results = [m.content for m in back.event.messages[-3:]]  # type: ignore[union-attr]
    assert results == [
        "error: no tool named 'current_time' is available",
        "2",
        "error: no tool named 'shell' is available",
    ]
    assert [d["ok"] for _, d in fanout.events] == [False, True, False]


async def test_a_redelivered_request_reuses_the_published_results(
    tenants: TenantDirectory,
) -> None:
    fanout = MemoryFanout()
    request = ToolRequested(_turn(), [ToolCall("t", "current_time", "{}")], Usage(), 1)
    [first] = await _dispatcher(tenants, fanout).handle(request)
    [second] = await _dispatcher(tenants, fanout).handle(request)
    assert first.event == second.event
    assert fanout.types() == ["tool.result"]


async def test_the_last_round_offers_no_tools_so_the_turn_ends(tenants: TenantDirectory) -> None:
    model = ScriptedModel()
    [out] = await _llm(tenants, model, MemoryFanout(), max_rounds=2).handle(_turn(tool_rounds=2))
    assert model.offered == [[]]
    assert isinstance(out.event, TurnCompleted)
    assert out.event.answer == "The result is nothing"


async def test_a_rerun_round_repeats_its_tool_call_without_asking_the_model(
    tenants: TenantDirectory,
) -> None:
    fanout, model = MemoryFanout(), ScriptedModel()
    llm = _llm(tenants, model, fanout)
    [first] = await llm.handle(_turn())
    [second] = await llm.handle(_turn())  # a crash after the publish: the same round again
    assert len(model.offered) == 1
    assert isinstance(second.event, ToolRequested) and isinstance(first.event, ToolRequested)
    assert second.event.calls == first.event.calls
    assert fanout.types() == ["tool.call"]


def test_streamed_tool_call_pieces_join_by_index() -> None:
    calls = ToolCallAccumulator()
    calls.add_openai([{"index": 1, "id": "b", "function": {"name": "current_time"}}])
    calls.add_openai([{"index": 0, "id": "a", "function": {"name": "calculator", "arguments": ""}}])
    calls.add_openai([{"index": 0, "function": {"arguments": '{"expression"'}}])
    calls.add_openai([{"index": 1, "function": {"arguments": "{}"}}])
    calls.add_openai([{"index": 0, "function": {"arguments": ': "1"}'}}])
    calls.add(2, None, "calculator", "{}")
    assert calls.calls() == (
        ToolCall("a", "calculator", '{"expression": "1"}'),
        ToolCall("b", "current_time", "{}"),
        ToolCall("call_2", "calculator", "{}"),
    )


def test_tool_messages_go_to_the_model_in_openai_form() -> None:
    calls_json = '[{"id": "a", "type": "function", "function": {"name": "x", "arguments": "{}"}}]'
    wired = wire_messages(
        [
            ChatMessage("user", "hi"),
            ChatMessage("assistant", "", tool_calls_json=calls_json),
            ChatMessage("tool", "42", tool_call_id="a"),
        ]
    )
    assert wired == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": json.loads(calls_json)},
        {"role": "tool", "content": "42", "tool_call_id": "a"},
    ]


def test_tool_events_survive_the_codec() -> None:
    codec = Codec()
    turn = _turn(
        messages=[ChatMessage("tool", "42", tool_call_id="c1")],
        tool_rounds=1,
        prior_usage=Usage(1, 2),
    )
    request = ToolRequested(turn, [ToolCall("c1", "calculator", "{}")], Usage(3, 4), 5, "hm", "m")
    for event in (turn, request):
        record = codec.encode(event)
        assert record.key == b"s1"
        assert codec.decode(record.value, record.headers) == event
