"""A turn's `error` event as OpenAI's error: the status and code a client acts on.

The policy, context and LLM stages end a refused or failed turn with an `error` event
(docs/events.md); an OpenAI client reads the HTTP status (its SDK maps it to an exception
class and retries 429 and 5xx after `Retry-After`), so each of the gateway's codes has
its status here; an unknown code is 500 `server_error`.
"""

from __future__ import annotations

import math
from typing import Any

from ingress.openai.errors import OpenAIError

# The codes a turn can end with (policy, context and LLM stages): status and OpenAI code.
_STATUS: dict[str, tuple[int, str]] = {
    "budget_exhausted": (429, "insufficient_quota"),
    "request_exceeds_budget": (429, "insufficient_quota"),
    "rate_limited": (429, "rate_limit_exceeded"),
    "too_many_streams": (429, "rate_limit_exceeded"),
    "forbidden": (403, "forbidden"),
    "denied": (403, "forbidden"),
    "not_allowed": (403, "forbidden"),
    "principal_unknown": (403, "forbidden"),
    "unauthenticated": (401, "invalid_api_key"),
    "key_revoked": (401, "invalid_api_key"),
    "unknown_tenant": (403, "unknown_tenant"),
    "model_not_allowed": (403, "model_not_allowed"),
    "context_length_exceeded": (400, "context_length_exceeded"),
    "turn_tokens_exhausted": (400, "turn_tokens_exhausted"),
    "authz_unavailable": (503, "authz_unavailable"),
    "policy_unavailable": (503, "policy_unavailable"),
    "rate_limiter_unavailable": (503, "rate_limiter_unavailable"),
    "llm_unavailable": (502, "llm_unavailable"),
    "llm_stream_interrupted": (502, "llm_stream_interrupted"),
    "stage_failed": (500, "stage_failed"),
    "cancelled": (500, "cancelled"),
    "timeout": (504, "timeout"),
}


def turn_error(data: dict[str, Any]) -> OpenAIError:
    """A turn's `error` event (or one of the ingress's own, same shape) as OpenAI's error,
    with Retry-After when the turn said when to try again (always on a 429)."""
    code = str(data.get("code") or "server_error")
    status, openai_code = _STATUS.get(code, (500, "server_error"))
    message = str(data.get("message") or code)
    retry_after = data.get("retry_after_s")
    headers = None
    if isinstance(retry_after, int | float) and retry_after > 0:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
    elif status == 429:
        headers = {"Retry-After": "60"}
    elif status == 503:
        headers = {"Retry-After": "5"}
    param = "messages" if code == "context_length_exceeded" else None
    return OpenAIError(status, message, code=openai_code, param=param, headers=headers)


def ingress_error(code: str, message: str) -> OpenAIError:
    return turn_error({"code": code, "message": message})
