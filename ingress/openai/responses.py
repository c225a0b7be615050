"""A turn's events as the Responses API's stream events and response object.

Pure and deterministic: the same head (the response's fixed fields, chosen when it was
created) and the same turn events always give the same stream events, with the same
`sequence_number`s (an event's index in the stream) and item ids (derived from the turn
id). Nothing here reads a clock or a counter of its own. So a client that lost its stream
resumes with `starting_after=N` anywhere, on any ingress replica, after any restart: the
turn's durable log is translated again from its start and the events up to N skipped.

The stream of one response:
  response.created (+ response.queued when background), response.in_progress (the policy
  stage admitted the turn), then per text answer: response.output_item.added (a message),
  response.content_part.added, response.output_text.delta..., response.output_text.done,
  response.content_part.done, response.output_item.done; per tool call the model made:
  response.output_item.added (a function_call), response.function_call_arguments.delta,
  .done, response.output_item.done; and one terminal event: response.completed,
  response.incomplete (the answer hit max_output_tokens), or response.failed (an error,
  or, with the response's status `cancelled`, a cancellation).

A retried attempt (`turn.retrying`: an LLM worker died mid-answer and another runs the
turn again) stays one coherent answer: while the new attempt's text is a prefix of what
the open message already streamed, nothing is sent; once it goes beyond, only the new
suffix is; if it diverges, the open message is finished as `incomplete` and a new message
item (the next output_index) carries the attempt's text from its start. The response's
final `output` holds the final attempt's items only.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Statuses after which a response changes no more.
TERMINAL = frozenset({"completed", "failed", "incomplete", "cancelled"})
_REDIS_ID = re.compile(r"([0-9]{1,20})-[0-9]{1,20}")
# The gateway's error codes as ResponseError codes (the SDK's list); others: server_error.
_ERROR_CODES = {
    "rate_limited": "rate_limit_exceeded",
    "budget_exhausted": "rate_limit_exceeded",
    "context_length_exceeded": "invalid_prompt",
}


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What a response is from its creation on: its id, turn and the request's fields
    that every response object echoes (model, instructions, tools, metadata, ...)."""

    id: str
    turn_id: str
    created_at: int
    background: bool
    echo: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "turn_id": self.turn_id,
            "created_at": self.created_at,
            "background": self.background,
            "echo": self.echo,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ResponseHead:
        return cls(
            id=str(value["id"]),
            turn_id=str(value["turn_id"]),
            created_at=int(value["created_at"]),
            background=bool(value["background"]),
            echo=dict(value.get("echo") or {}),
        )


def response_id(turn_id: str) -> str:
    """A response's id: its turn's (so a retried POST's Idempotency-Key finds it)."""
    return f"resp_{turn_id}"


def turn_of(response_id_: str) -> str | None:
    """The turn id inside a response id (None: not one this gateway issues)."""
    prefix, _, turn_id = response_id_.partition("_")
    return turn_id if prefix == "resp" and re.fullmatch(r"[0-9a-f]{32}", turn_id) else None


def _usage(data: dict[str, Any]) -> dict[str, Any]:
    usage = data.get("usage") or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_error(data: dict[str, Any]) -> dict[str, Any]:
    """A turn's `error` data as a response's `error` (`type`: the gateway's own code)."""
    code = str(data.get("code") or "server_error")
    return {
        "code": _ERROR_CODES.get(code, "server_error"),
        "message": str(data.get("message") or code),
        "param": None,
        "type": code,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponseTranslator:
    """Feed it a turn's events in log order; it returns each one's stream events.

    `start()` gives the first events (before any turn event); `feed` the events each turn
    event adds; `response()` the response object as it stands. After the terminal event
    (`done`), further turn events are ignored.
    """

    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self.status = "queued" if head.background else "in_progress"
        self.done = False
        self._seq = 0
        self._out: list[dict[str, Any]] = []
        self._items: dict[int, dict[str, Any]] = {}  # by output_index
        self._current: list[int] = []  # the items of the attempt running now
        self._open: int | None = None  # the message item text goes to
        self._emitted = ""  # the open item's text so far
        self._attempt = ""  # the running attempt's text so far
        self._in_progress = False
        self._usage: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None
        self._incomplete: dict[str, Any] | None = None
        self._completed_at: int | None = None

    # ---- the response object ------------------------------------------------------------

    def response(self) -> dict[str, Any]:
        """The response object now (its output: the running attempt's items)."""
        body: dict[str, Any] = {
            **self.head.echo,
            "id": self.head.id,
            "object": "response",
            "created_at": self.head.created_at,
            "status": self.status,
            "background": self.head.background,
            "error": copy.deepcopy(self._error),
            "incomplete_details": copy.deepcopy(self._incomplete),
            "output": [copy.deepcopy(self._items[i]) for i in self._current],
            "usage": copy.deepcopy(self._usage),
        }
        if self._completed_at is not None:
            body["completed_at"] = self._completed_at
        return body

    # ---- stream events ------------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> None:
        self._out.append({"type": kind, "sequence_number": self._seq, **fields})
        self._seq += 1

    def _take(self) -> list[dict[str, Any]]:
        out, self._out = self._out, []
        return out

    def start(self) -> list[dict[str, Any]]:
        self._emit("response.created", response=self.response())
        if self.head.background:
            self._emit("response.queued", response=self.response())
        return self._take()

    def feed(self, kind: str, data: dict[str, Any], event_id: str = "") -> list[dict[str, Any]]:
        """The stream events turn event `kind` (with `data`, at log id `event_id`) adds."""
        if self.done:
            return []
        if kind == "turn.accepted":
            self._progress()
        elif kind == "turn.retrying":
            self._attempt = ""
            self._current = [self._open] if self._open is not None else []
        elif kind == "assistant.delta":
            self._progress()
            self._attempt += str(data.get("text") or "")
            self._follow(self._attempt, final=False)
        elif kind == "assistant.final":
            self._final(data, event_id)
        elif kind == "error":
            if data.get("code") == "cancelled":
                self._end("cancelled", event_id)
            else:
                self._error = response_error(data)
                self._end("failed", event_id)
        elif kind == "turn.cancelled":  # the turn's later events are void
            self._end("cancelled", event_id)
        return self._take()

    def _progress(self) -> None:
        if not self._in_progress:
            self._in_progress = True
            self.status = "in_progress"
            self._emit("response.in_progress", response=self.response())

    def _index(self) -> int:
        return len(self._items)

    def _open_message(self) -> None:
        index = self._index()
        item: dict[str, Any] = {
            "id": f"msg_{self.head.turn_id}_{index}",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        self._items[index] = item
        self._current.append(index)
        self._open, self._emitted = index, ""
        self._emit("response.output_item.added", output_index=index, item=copy.deepcopy(item))
        self._emit(
            "response.content_part.added",
            item_id=item["id"],
            output_index=index,
            content_index=0,
            part=_text_part(""),
        )
        item["content"] = [_text_part("")]

    def _delta(self, text: str) -> None:
        assert self._open is not None
        item = self._items[self._open]
        self._emitted += text
        item["content"][0]["text"] = self._emitted
        self._emit(
            "response.output_text.delta",
            item_id=item["id"],
            output_index=self._open,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _close_message(self, status: str) -> None:
        """Finish the open message item with `status` (completed or incomplete)."""
        if self._open is None:
            return
        index, item = self._open, self._items[self._open]
        self._emit(
            "response.output_text.done",
            item_id=item["id"],
            output_index=index,
            content_index=0,
            text=self._emitted,
            logprobs=[],
        )
        self._emit(
            "response.content_part.done",
            item_id=item["id"],
            output_index=index,
            content_index=0,
            part=_text_part(self._emitted),
        )
        item["status"] = status
        self._emit("response.output_item.done", output_index=index, item=copy.deepcopy(item))
        self._open, self._emitted = None, ""

    def _follow(self, text: str, *, final: bool) -> None:
        """Make the open message say `text`, the running attempt's text so far (the
        retry rule in the module docstring); `final`: `text` is the whole answer."""
        if self._open is None:
            if text:
                self._open_message()
                self._delta(text)
            return
        if text == self._emitted or (not final and self._emitted.startswith(text)):
            return  # a retry repeating what the client has already
        if text.startswith(self._emitted):
            self._delta(text[len(self._emitted) :])
            return
        diverged = self._open
        self._close_message("incomplete")
        self._current.remove(diverged)
        if text:
            self._open_message()
            self._delta(text)

    def _final(self, data: dict[str, Any], event_id: str) -> None:
        self._progress()
        self._follow(str(data.get("text") or ""), final=True)
        length = data.get("finish_reason") == "length"
        self._close_message("incomplete" if length else "completed")
        for call in data.get("tool_calls") or []:
            self._tool_call(call)
        self._usage = _usage(data)
        if length:
            self._incomplete = {"reason": "max_output_tokens"}
        self._end("incomplete" if length else "completed", event_id)

    def _tool_call(self, call: dict[str, Any]) -> None:
        index = self._index()
        function = call.get("function") or {}
        arguments = str(function.get("arguments") or "")
        item: dict[str, Any] = {
            "id": f"fc_{self.head.turn_id}_{index}",
            "type": "function_call",
            "call_id": str(call.get("id") or f"call_{self.head.turn_id}_{index}"),
            "name": str(function.get("name") or ""),
            "arguments": "",
            "status": "in_progress",
        }
        self._items[index] = item
        self._current.append(index)
        self._emit("response.output_item.added", output_index=index, item=copy.deepcopy(item))
        self._emit(
            "response.function_call_arguments.delta",
            item_id=item["id"],
            output_index=index,
            delta=arguments,
        )
        self._emit(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=index,
            arguments=arguments,
        )
        item["arguments"], item["status"] = arguments, "completed"
        self._emit("response.output_item.done", output_index=index, item=copy.deepcopy(item))

    def _end(self, status: str, event_id: str) -> None:
        self._close_message("incomplete")  # (after a final: already closed)
        self.status, self.done = status, True
        if status == "completed" and (match := _REDIS_ID.fullmatch(event_id)):
            self._completed_at = int(match[1]) // 1000
        kind = {
            "completed": "response.completed",
            "incomplete": "response.incomplete",
        }.get(status, "response.failed")
        self._emit(kind, response=self.response())


def translate(
    head: ResponseHead, events: Iterable[tuple[str, dict[str, Any], str]]
) -> tuple[list[dict[str, Any]], ResponseTranslator]:
    """Every stream event of a response whose turn logged `events` ((type, data, id) in
    log order), and the translator (its `response()`, `status`, `done`) after them."""
    translator = ResponseTranslator(head)
    out = translator.start()
    for kind, data, event_id in events:
        out += translator.feed(kind, data, event_id)
    return out, translator


def sse_frame(event: dict[str, Any]) -> bytes:
    """One stream event as an SSE frame: `event: <type>` and the event as `data`."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()
