"""A turn's events as chat completion chunks, or as one chat completion.

`ChatTranslator` turns the events of the turn (ingress/openai/turn_events.py) into
`chat.completion.chunk`s, or one `chat.completion`. It is pure: the route does the I/O.
When an llm worker crashes mid-answer the turn runs again (`turn.retrying`) and its
deltas start over; the translator passes on only text beyond what the client already has,
so a deterministic model's retry is seamless. If the new attempt says something else,
what was streamed cannot be taken back: the stream ends with an error frame
(`llm_stream_interrupted`) rather than glue two answers together. A non-streamed answer
is `assistant.final.text`, the final attempt's whole text, so it never sees a retry.
"""

from __future__ import annotations

import json
from typing import Any

from ingress.openai.errors import OpenAIError
from ingress.openai.turn_errors import ingress_error, turn_error
from ingress.openai.turn_events import TurnEvent


def usage_of(final: dict[str, Any]) -> dict[str, int]:
    usage = final.get("usage") or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def tool_calls_of(final: dict[str, Any]) -> list[dict[str, Any]]:
    calls = final.get("tool_calls") or []
    return [
        {
            "id": str(c.get("id", "")),
            "type": "function",
            "function": {
                "name": str((c.get("function") or {}).get("name", "")),
                "arguments": str((c.get("function") or {}).get("arguments", "")),
            },
        }
        for c in calls
        if isinstance(c, dict)
    ]


def finish_reason_of(final: dict[str, Any], calls: list[dict[str, Any]]) -> str:
    if calls:
        return "tool_calls"
    reason = final.get("finish_reason")
    return reason if reason in ("stop", "length", "tool_calls", "content_filter") else "stop"


class ChatTranslator:
    """A turn's events -> chat completion chunks (`feed`) or one completion (`completion`).

    `feed` returns the chunks to send for one event; once it returns an `OpenAIError`
    (the last item) or the turn's final chunks, `done` is true and the stream ends
    (`data: [DONE]` only after a final answer, as OpenAI does).
    """

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self.id = completion_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self.done = False
        self.failed = False
        self._sent = ""  # the text the client has
        self._attempt = ""  # the current attempt's text so far
        self._started = False
        self._cancelled = False

    # -- streaming --

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            out["usage"] = None
        return out

    def start(self) -> list[dict[str, Any]]:
        """The first chunk: the assistant's role (sent once the turn is admitted)."""
        if self._started:
            return []
        self._started = True
        return [self.chunk({"role": "assistant", "content": ""})]

    def _fail(self, error: OpenAIError) -> list[dict[str, Any] | OpenAIError]:
        self.done = self.failed = True
        return [error]

    def _advance(self, text: str) -> str | None:
        """What of `text` (the attempt's text so far) the client lacks: "" while it is a
        prefix of what was sent; None when it diverges from it."""
        if len(text) <= len(self._sent):
            return "" if self._sent.startswith(text) else None
        if not text.startswith(self._sent):
            return None
        new = text[len(self._sent) :]
        self._sent = text
        return new

    def _diverged(self) -> list[dict[str, Any] | OpenAIError]:
        return self._fail(
            ingress_error(
                "llm_stream_interrupted",
                "the model was restarted after a worker crash and its new answer differs "
                "from the text already streamed, which is void; send the request again",
            )
        )

    def feed(self, event: TurnEvent) -> list[dict[str, Any] | OpenAIError]:
        if self.done or self._cancelled:
            return []
        out: list[dict[str, Any] | OpenAIError] = []
        if event.type in ("turn.accepted", "assistant.delta", "assistant.final"):
            out.extend(self.start())
        if event.type == "turn.retrying":
            self._attempt = ""
        elif event.type == "assistant.delta":
            self._attempt += str(event.data.get("text", ""))
            new = self._advance(self._attempt)
            if new is None:
                return out + self._diverged()
            if new:
                out.append(self.chunk({"content": new}))
        elif event.type == "assistant.final":
            new = self._advance(str(event.data.get("text") or ""))
            if new is None:
                return out + self._diverged()
            if new:
                out.append(self.chunk({"content": new}))
            out.extend(self._final_chunks(event.data))
            self.done = True
        elif event.type == "error":
            return out + self._fail(turn_error(event.data))
        elif event.type == "turn.cancelled":
            self._cancelled = True
            return out + self._fail(ingress_error("cancelled", "the turn was cancelled"))
        return out

    def _final_chunks(self, final: dict[str, Any]) -> list[dict[str, Any] | OpenAIError]:
        calls = tool_calls_of(final)
        out: list[dict[str, Any] | OpenAIError] = []
        if calls:
            out.append(self.chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}))
        out.append(self.chunk({}, finish_reason_of(final, calls)))
        if self.include_usage:
            out.append(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": usage_of(final),
                }
            )
        return out

    # -- not streaming --

    def completion(self, final: dict[str, Any]) -> dict[str, Any]:
        """The `chat.completion` object of the turn's `assistant.final`."""
        calls = tool_calls_of(final)
        text = str(final.get("text") or "")
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not calls else None,
            "refusal": None,
            "annotations": [],
        }
        if calls:
            message["tool_calls"] = calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason_of(final, calls),
                }
            ],
            "usage": usage_of(final),
        }


def sse(payload: dict[str, Any] | OpenAIError) -> bytes:
    """One `data:` frame: a chunk, or an error (`{"error": {...}}`, the stream's last)."""
    body = payload.body() if isinstance(payload, OpenAIError) else payload
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
