"""The event types a session's stream carries (SSE `event:` field, WebSocket `type`).

Written by the ingress (`turn.queued`), the policy stage (`turn.accepted`, `error`), the
LLM stage (`turn.retrying`, `assistant.delta`, `tool.call`, `assistant.final`, `error`),
the tool dispatcher (`tool.result`) and the cancel path (`turn.cancelled`); docs/events.md
describes each one's data. The OpenAPI document (its SSE operation) and
schemas/asyncapi.yaml list them; the gateway itself may end a stream with a last `error`
(e.g. `key_revoked`).
"""

from __future__ import annotations

SESSION_EVENT_TYPES = (
    "turn.queued",
    "turn.accepted",
    "turn.retrying",
    "assistant.delta",
    "tool.call",
    "tool.result",
    "assistant.final",
    "turn.cancelled",
    "error",
)
# The OpenAI paths stream OpenAI's own events: chat.completion.chunk objects as `data:`
# lines ending with `data: [DONE]` (/v1/chat/completions), and the Responses API's typed
# events, `event: response.*` (/v1/responses).
