"""The tool stage's logic: ToolRequested in, the turn back on the contextualized topic.

Each call runs through the registry, filtered by the tenant's allow-list; its result is
shown to the client (`tool.result`) and appended to the turn's messages as a `tool`
message after the assistant's tool-call message, so the LLM stage continues the turn
with the results (one more `tool_rounds`). A result is published once per call and
reused when the event is redelivered, so a replay hands the model the same results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gateway_runtime.errors import InvalidEvent
from gateway_runtime.ports import Fanout, Output, Tenant, Tenants
from gateway_runtime.redis_keys import RedisKeys
from schemas.events import ChatMessage, Event, ToolCall, ToolRequested, TurnContextualized
from schemas.topics import Topics
from tool_dispatcher.registry import ToolRegistry, ToolResult

log = logging.getLogger(__name__)


def continuation(event: ToolRequested, results: Sequence[str]) -> TurnContextualized:
    """The turn with the assistant's calls and one `tool` message per result appended."""
    turn = event.turn
    calls_json = json.dumps(
        [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in event.calls
        ]
    )
    messages = [
        *turn.messages,
        ChatMessage("assistant", event.text, tool_calls_json=calls_json),
        *(
            ChatMessage("tool", result, tool_call_id=call.id)
            for call, result in zip(event.calls, results, strict=True)
        ),
    ]
    return dataclasses.replace(
        turn, messages=messages, tool_rounds=turn.tool_rounds + 1, prior_usage=event.usage
    )


@dataclass
class ToolDispatcher:
    topics: Topics
    keys: RedisKeys
    registry: ToolRegistry
    tenants: Tenants
    fanout: Fanout
    max_result_chars: int = 4000
    stage: str = "tools"

    @property
    def input_topic(self) -> str:
        return self.topics.tool_requested.name

    async def handle(self, event: Event) -> Sequence[Output]:
        if not isinstance(event, ToolRequested):
            raise InvalidEvent(f"tool stage expects ToolRequested, got {type(event).__name__}")
        if not event.calls:
            raise InvalidEvent("ToolRequested without calls")
        tenant = self.tenants.get(event.request.tenant)
        results = [await self._result(event, call, tenant) for call in event.calls]
        return [Output(self.topics.contextualized.name, continuation(event, results))]

    async def _result(self, event: ToolRequested, call: ToolCall, tenant: Tenant) -> str:
        sid, tid = event.request.session_id, event.request.event_id
        once = self.keys.tool_result(tid, event.turn.tool_rounds, call.id)
        if (earlier := await self._recorded(once)) is not None:
            return earlier
        allowed = tenant.tool_allowed(call.name)
        result = self.registry.call(call.name, call.arguments, allowed=allowed)
        content = _truncated(result, self.max_result_chars)
        log.info("tool %s %s", call.name, "ok" if result.ok else "refused")
        data: dict[str, object] = {
            "round": event.turn.tool_rounds,
            "id": call.id,
            "name": call.name,
            "ok": result.ok,
            "content": content,
        }
        if await self.fanout.publish(sid, tid, "tool.result", data, once_key=once) is None:
            # Another delivery of this event published first: the model sees that result.
            return await self._recorded(once) or content
        return content

    async def _recorded(self, once_key: str) -> str | None:
        earlier = await self.fanout.recorded(once_key)
        if earlier is None:
            return None
        data = earlier.get("data")
        return str(data["content"]) if isinstance(data, dict) else None


def _truncated(result: ToolResult, limit: int) -> str:
    if len(result.content) <= limit:
        return result.content
    return result.content[:limit] + f"... [truncated, {len(result.content)} characters in all]"
