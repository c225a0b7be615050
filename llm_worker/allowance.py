"""What one model call of a turn may spend, within what the policy stage reserved for it.

The reservation (`gateway_runtime/tokens.py`, `TurnCosts.ceiling`) covers every call the
turn may make at the size the context stage builds; tool rounds grow the prompt with
calls and results, so before each call the LLM stage checks what is left: the turn's
reservation, less what its earlier rounds really used (`prior_usage`, as the upstream
reported it), less this call's prompt. Each deployment is asked for at most that many
tokens; when a further tool round could not fit, the model is offered no tools and must
answer now; when not even an answer fits, the call is not made and the turn ends
(`turn_tokens_exhausted`). A turn without a reservation (its persona has no budget) is
held only to the output cap its profiles already carry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gateway_runtime.tokens import (
    MIN_ANSWER_TOKENS,
    call_allowance,
    estimate_json,
    estimate_messages,
)
from schemas.events import ErrorInfo, ModelProfile, TurnContextualized, Usage


@dataclass(frozen=True, slots=True)
class Call:
    """The deployments to try, in order, and the tools to offer, for one model call."""

    profiles: list[ModelProfile]
    tools: list[dict[str, Any]]


def spent(usage: Usage | None) -> int:
    return usage.prompt_tokens + usage.completion_tokens if usage else 0


def prompt_tokens(event: TurnContextualized, tools: list[dict[str, Any]]) -> int:
    """This call's prompt, estimated: its messages and the tool definitions offered."""
    return estimate_messages(event.messages) + (estimate_json(tools) if tools else 0)


def plan_call(event: TurnContextualized, tools: list[dict[str, Any]]) -> Call | None:
    """The call within the turn's reservation; None when no answer fits in what is left."""
    profiles = [event.profile, *event.fallbacks]
    used = spent(event.prior_usage)
    left = call_allowance(event.reserved_tokens, used, prompt_tokens(event, tools))
    if left is None:
        return Call(profiles, tools)
    if tools:
        answer = min(left, max(p.max_tokens for p in profiles))
        # The next round's prompt holds at least this one's: if it could not be started
        # after this call, offer no tools, so the model answers within what is left.
        if left - answer < prompt_tokens(event, tools) + MIN_ANSWER_TOKENS:
            tools = []
            left = call_allowance(event.reserved_tokens, used, prompt_tokens(event, tools))
            assert left is not None
    if left < MIN_ANSWER_TOKENS:
        return None
    capped = [dataclasses.replace(p, max_tokens=min(p.max_tokens, left)) for p in profiles]
    return Call(capped, tools)


def exhausted_error(event: TurnContextualized) -> ErrorInfo:
    return ErrorInfo(
        code="turn_tokens_exhausted",
        message=f"the turn used the {event.reserved_tokens} tokens its budget reserved for "
        f"it ({spent(event.prior_usage)} in {event.tool_rounds} earlier model call(s)), and "
        "its next call could not fit; no answer was asked for. Ask for less at once, or ask "
        "an operator to raise the tenant's max_context_tokens or max_output_tokens.",
    )
