"""The OpenAI chat wire format both model adapters speak: messages out, tool calls in.

Streamed tool calls arrive in pieces: the first delta of a call carries its index, id
and name, later deltas of the same index carry fragments of its arguments JSON.
`ToolCallAccumulator` joins them by index into whole calls for the answer's last chunk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from adapters.profiles import PROVIDER_KWARGS
from schemas.events import ChatMessage, ModelProfile, ToolCall


def provider_kwargs(profile: ModelProfile) -> dict[str, Any]:
    """The profile's generation arguments; anything else (a turn written to Kafka by hand,
    a row from before the API checked them) is dropped, never sent: LiteLLM would take an
    `api_base` or `extra_headers` from there past the egress policy."""
    kwargs: dict[str, Any] = json.loads(profile.kwargs_json or "{}")
    return {k: v for k, v in kwargs.items() if k in PROVIDER_KWARGS}


def wire_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    wired: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls_json:
            item["tool_calls"] = json.loads(m.tool_calls_json)
            # OpenAI wants null, not "", as the content of a pure tool-call message.
            item["content"] = m.content or None
        if m.tool_call_id:
            item["tool_call_id"] = m.tool_call_id
        wired.append(item)
    return wired


@dataclass
class _Partial:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ToolCallAccumulator:
    def __init__(self) -> None:
        self._calls: dict[int, _Partial] = {}

    def add(self, index: int, call_id: str | None, name: str | None, arguments: str | None) -> None:
        partial = self._calls.setdefault(index, _Partial())
        partial.id = partial.id or call_id or ""
        partial.name = partial.name or name or ""
        if arguments:
            partial.arguments.append(arguments)

    def add_openai(self, deltas: list[dict[str, Any]]) -> None:
        """The `tool_calls` of one streamed OpenAI delta, as parsed JSON."""
        for position, delta in enumerate(deltas):
            function = delta.get("function") or {}
            self.add(
                int(delta.get("index", position)),
                delta.get("id"),
                function.get("name"),
                function.get("arguments"),
            )

    def calls(self) -> tuple[ToolCall, ...]:
        # Some servers (llama.cpp among them) send no call id: one is made up, unique
        # within the answer, because the tool result must name the call it answers.
        return tuple(
            ToolCall(p.id or f"call_{index}", p.name, "".join(p.arguments))
            for index, p in sorted(self._calls.items())
            if p.name
        )
