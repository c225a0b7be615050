"""The LLM stage's side of tools: what the model is offered, and handing its calls on.

The model is offered the tool definitions of `schemas/tools/` that the tenant's
allow-list permits, until the turn has had `max_rounds` tool rounds; after that it gets
no tools and must answer, so a turn never loops. An answer that ends in tool calls is
published to the client once per round (`tool.call`) and becomes a `ToolRequested`; the
published event keeps everything needed to rebuild that request, so a rerun of the round
after a crash repeats it instead of asking the model again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from gateway_runtime.ports import Tenants
from schemas.events import ToolCall, ToolRequested, TurnContextualized, Usage
from schemas.tools import ToolDefinition


class ToolOffer:
    def __init__(
        self, definitions: Mapping[str, ToolDefinition], tenants: Tenants, max_rounds: int
    ) -> None:
        self._definitions = dict(sorted(definitions.items()))
        self._tenants = tenants
        self._max_rounds = max_rounds
        # By allow-list: the hot path builds no dicts per turn (tenant files rarely change).
        self._offers: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def for_turn(self, event: TurnContextualized) -> list[dict[str, Any]]:
        """The `tools` parameter for this turn's model call ([] = offer none)."""
        if event.tool_rounds >= self._max_rounds or not self._definitions:
            return []
        tenant = self._tenants.get(event.request.tenant)
        key = tuple(tenant.tools_allow)
        offer = self._offers.get(key)
        if offer is None:
            offer = [
                d.openai() for name, d in self._definitions.items() if tenant.tool_allowed(name)
            ]
            self._offers[key] = offer
        return offer


def attempt_key(event: TurnContextualized) -> str:
    """What a rerun is counted by: the turn, and which tool round of it."""
    turn_id = event.request.event_id
    return turn_id if event.tool_rounds == 0 else f"{turn_id}:round{event.tool_rounds}"


def total_usage(*parts: Usage | None) -> Usage:
    present = [p for p in parts if p is not None]
    costs = [p.cost_usd for p in present if p.cost_usd is not None]
    return Usage(
        prompt_tokens=sum(p.prompt_tokens for p in present),
        completion_tokens=sum(p.completion_tokens for p in present),
        cost_usd=sum(costs) if costs else None,
    )


def tool_call_data(
    event: TurnContextualized, calls: tuple[ToolCall, ...], text: str, model: str, usage: Usage
) -> dict[str, Any]:
    """The `tool.call` event's data: what the client sees, and what a rerun rebuilds from."""
    return {
        "round": event.tool_rounds,
        "calls": [asdict(call) for call in calls],
        "text": text,
        "model": model,
        "usage": asdict(usage),
    }


def tool_requested(event: TurnContextualized, data: dict[str, Any]) -> ToolRequested:
    return ToolRequested(
        turn=event,
        calls=[ToolCall(**call) for call in data["calls"]],
        usage=Usage(**data["usage"]),
        requested_at_ms=int(time.time() * 1000),
        text=data["text"],
        model=data["model"],
    )
