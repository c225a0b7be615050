"""An OpenAI API turn's own generation parameters, laid over the model profiles.

A client of `/v1/chat/completions` or `/v1/responses` chooses its temperature, stop
sequences, seed, tools and the rest (`TurnRequested.generation_json`). They go on every
deployment the turn may try: the temperature replaces the profile's, `max_tokens` can only
lower the profile's (already capped by the turn's reservation), and the others join the
profile's `kwargs`, where `wire.provider_kwargs` keeps generation arguments only (so a
turn written to Kafka by hand cannot smuggle an endpoint or headers through them).

With `tools` the model is offered the client's tools, never the gateway's own, and its
calls are returned to the client: the turn ends there (`finish_reason: tool_calls`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from adapters.profiles import PROVIDER_KWARGS
from schemas.events import ModelProfile, ToolCall, TurnRequested


def client_tools(request: TurnRequested) -> list[dict[str, Any]]:
    """The client's tool definitions (OpenAI chat `tools`), [] if none."""
    tools = request.generation.get("tools")
    return [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []


def with_generation(profile: ModelProfile, generation: dict[str, Any]) -> ModelProfile:
    """`profile` as the client's parameters change it for this turn."""
    if not generation:
        return profile
    changes: dict[str, Any] = {}
    temperature = generation.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        changes["temperature"] = float(temperature)
    max_tokens = generation.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        changes["max_tokens"] = min(profile.max_tokens, max_tokens)
    extra = {k: v for k, v in generation.items() if k in PROVIDER_KWARGS and v is not None}
    if extra:
        kwargs = json.loads(profile.kwargs_json or "{}")
        changes["kwargs_json"] = json.dumps({**kwargs, **extra}, separators=(",", ":"))
    return dataclasses.replace(profile, **changes) if changes else profile


def wire_tool_calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    """Tool calls as the OpenAI API writes them."""
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]
