"""Token estimates, and what a turn may spend before the model says what it did spend.

Three stages agree on one bound, so that a budget cannot be dodged by what the policy
stage does not see (the transcript, memories, tool definitions, tool rounds):
- the policy stage reserves `TurnCosts.ceiling`: every model call the turn may make (1,
  or 1 + MAX_TOOL_ROUNDS when the tenant may use a tool) x (the most one prompt may hold
  + the tenant's `max_output_tokens`, the cap every call asks for at most);
- the context stage builds the prompt within that bound (`context_room`: memories and
  transcript fill what the system prompt, the user's message and the window leave, at
  most the tenant's `max_context_tokens`);
- the LLM stage never starts a call that could take the turn past its reservation
  (`call_allowance`, from what the earlier rounds really used), so tool rounds that grow
  the prompt end the turn instead of overspending.
Estimates are about 4 characters a token (English) plus a few tokens a message for the
chat format; the ledger settles on what the upstream reports.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway_runtime.ports import Tenant
from schemas.events import ChatMessage
from schemas.tools import ToolDefinition

MESSAGE_OVERHEAD_TOKENS = 4  # role and separators of one chat message
# The most an action's prompt (context_worker/prompts.py) may estimate at; a unit test
# checks every prompt fits, so the policy stage need not import the context stage.
ACTION_PROMPT_TOKENS = 64
# A call that may answer in fewer tokens than this is not started: the turn ends instead.
MIN_ANSWER_TOKENS = 8


def estimate_tokens(text: str) -> int:
    """A cheap upper-ish estimate (about 4 characters a token for English)."""
    return len(text) // 4 + 1


def turn_estimate(message: str, max_output_tokens: int) -> int:
    """The ingress's tokens-per-minute charge of a request: its message and the most its
    answer may use (a rate, not the budget reservation: that is `TurnCosts.ceiling`)."""
    return estimate_tokens(message) + max_output_tokens


def asked_text(message: str, messages: Sequence[ChatMessage]) -> str:
    """What a turn asks with, for its tokens-per-minute charge: the message, or the whole
    conversation an OpenAI API turn sends."""
    return "\n".join(m.content for m in messages) if messages else message


def estimate_messages(messages: Iterable[ChatMessage]) -> int:
    """A prompt's messages, as the chat format sends them."""
    return sum(
        estimate_tokens(m.content)
        + (estimate_tokens(m.tool_calls_json) if m.tool_calls_json else 0)
        + MESSAGE_OVERHEAD_TOKENS
        for m in messages
    )


def estimate_json(value: Any) -> int:
    """What a JSON parameter of the call (the tool definitions) adds to its prompt."""
    return estimate_tokens(json.dumps(value, separators=(",", ":")))


def context_room(*, window: int, max_context: int, output: int, fixed: int) -> int:
    """Tokens of memories and transcript a prompt may carry beside its `fixed` part (the
    system prompt and the user's message): what the window leaves after the answer, at
    most `max_context` (0 = no tenant limit)."""
    room = window - output - fixed
    if max_context > 0:
        room = min(room, max_context)
    return max(0, room)


def call_allowance(reserved: int, spent: int, prompt: int) -> int | None:
    """The most tokens the next model call of a turn may answer in, within what the turn
    reserved: `spent` by its earlier rounds, `prompt` for this call. None: the turn has
    no reservation to keep to (its persona has no budget)."""
    if reserved <= 0:
        return None
    return reserved - spent - prompt


@dataclass(frozen=True, slots=True)
class TurnCeiling:
    """The most a turn may spend: `calls` model calls of at most `prompt_tokens` in and
    `output_tokens` out each."""

    calls: int
    prompt_tokens: int
    output_tokens: int

    @property
    def tokens(self) -> int:
        return self.calls * (self.prompt_tokens + self.output_tokens)


class TurnCosts:
    """What the policy stage reserves for a turn; one per process.

    `context_window_tokens` and `max_tool_rounds` are the settings the context and LLM
    stages build and run turns with (`TurnShapeSettings`); `tools` the definitions the
    LLM stage offers (`schemas/tools/`).
    """

    def __init__(
        self,
        tools: Mapping[str, ToolDefinition],
        *,
        context_window_tokens: int,
        max_tool_rounds: int,
    ) -> None:
        self._tools = dict(sorted(tools.items()))
        self._window = context_window_tokens
        self._max_tool_rounds = max_tool_rounds
        self._offer_tokens: dict[tuple[str, ...], int] = {}  # by allow-list

    def tool_tokens(self, tenant: Tenant) -> int:
        """The tool definitions the tenant's turns are offered, as prompt tokens."""
        key = tuple(tenant.tools_allow)
        tokens = self._offer_tokens.get(key)
        if tokens is None:
            offer = [d.openai() for n, d in self._tools.items() if tenant.tool_allowed(n)]
            tokens = estimate_json(offer) if offer else 0
            self._offer_tokens[key] = tokens
        return tokens

    def ceiling(self, tenant: Tenant, message: str, action: str | None) -> TurnCeiling:
        user = ACTION_PROMPT_TOKENS if action else estimate_tokens(message)
        fixed = estimate_tokens(tenant.system_prompt) + user + 2 * MESSAGE_OVERHEAD_TOKENS
        output = tenant.max_output_tokens
        room = context_room(
            window=self._window, max_context=tenant.max_context_tokens, output=output, fixed=fixed
        )
        tools = self.tool_tokens(tenant)
        calls = 1 + self._max_tool_rounds if tools else 1
        return TurnCeiling(calls, fixed + room + tools, output)
