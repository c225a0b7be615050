"""`POST /v1/responses`'s body, and what of it becomes the turn.

The input (a string, or a list of input items) becomes the turn's chat messages exactly
as the chat completions API would carry them: `instructions` a leading system message,
messages with their role (content a string or input_text/output_text parts),
`function_call` items an assistant message's `tool_calls`, `function_call_output` items
tool messages. Function tools become chat tools in the turn's generation parameters
(their calls end the turn; the client runs them and sends the results). What the gateway
does not do (built-in tools, reasoning, images and files, stored prompts, conversations,
logprobs) is refused with 400 and the `param` that asked for it, never silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ingress.openai.errors import OpenAIError
from schemas.events import ChatMessage

_ROLES = frozenset({"user", "system", "developer", "assistant"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
# Accepted and without effect here: they change nothing a client can observe.
IGNORED = ("service_tier", "prompt_cache_key", "prompt_cache_retention", "safety_identifier")

Key = Annotated[str, Field(max_length=64)]
Value = Annotated[str, Field(max_length=512)]


class CreateResponse(BaseModel):
    """The request body (fields this gateway knows; any other is 400 with its name)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = Field(None, max_length=128)
    background: bool | None = None
    stream: bool | None = None
    store: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    metadata: dict[Key, Value] | None = Field(None, max_length=16)
    user: str | None = Field(None, max_length=256)
    parallel_tool_calls: bool | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    text: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    stream_options: dict[str, Any] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    # Known, not supported: 400 when set.
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    conversation: str | dict[str, Any] | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
    context_management: list[dict[str, Any]] | None = None
    background_options: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TurnInput:
    """What the turn carries: the conversation, the user's last words, the model call's
    parameters (ingress/turns.py NewTurn)."""

    messages: list[ChatMessage]
    message: str
    generation: dict[str, Any]


def bad(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, code=code, param=param)


def unsupported(body: CreateResponse) -> None:
    """400 for a field this gateway does not do (a client must not think it was applied)."""
    refused = {
        "include": "`include` is not supported here",
        "reasoning": "reasoning models and `reasoning` are not supported here",
        "prompt": "stored prompts (`prompt`) are not supported here; send `input`",
        "conversation": "`conversation` is not supported here; use `previous_response_id`",
        "max_tool_calls": "`max_tool_calls` is not supported here",
        "context_management": "`context_management` is not supported here",
        "background_options": "`background_options` is not supported here",
    }
    for name, message in refused.items():
        if getattr(body, name):
            raise bad(name, message, "unsupported_parameter")
    if body.top_logprobs:
        raise bad("top_logprobs", "logprobs are not supported here", "unsupported_parameter")
    if body.background and body.store is False:
        raise bad("store", "background responses must be stored: `store` cannot be false")


# ---- input -----------------------------------------------------------------------------


def _text(content: Any, param: str) -> str:
    """A message's content: a string, or text parts (others: 400 naming the part)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(param, "content must be a string or a list of content parts")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS:
            raise bad(
                f"{param}[{j}].type",
                f"content part type {kind!r} is not supported here; only text parts",
                "unsupported_parameter",
            )
        texts.append(str(part.get("text") or ""))
    return "".join(texts)


def _call(item: dict[str, Any], param: str) -> dict[str, Any]:
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise bad(param, "a function_call item needs `call_id` and `name`")
    arguments = item.get("arguments")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else ""},
    }


def input_messages(
    items: str | list[dict[str, Any]], earlier_calls: list[dict[str, Any]] | None = None
) -> list[ChatMessage]:
    """The input as chat messages. `earlier_calls`: the function calls of the previous
    response, whose assistant message goes before results given for them (the session's
    transcript keeps the text of a conversation, not its tool calls)."""
    if isinstance(items, str):
        return [ChatMessage("user", items)]
    out: list[ChatMessage] = []
    calls: list[dict[str, Any]] = []  # consecutive function_call items, one message
    known = {i.get("call_id") for i in items if i.get("type") == "function_call"}

    def flush() -> None:
        if not calls:
            return
        text = ""
        if out and out[-1].role == "assistant" and out[-1].tool_calls_json is None:
            text = out.pop().content  # the text the calls came with
        out.append(ChatMessage("assistant", text, tool_calls_json=json.dumps(list(calls))))
        calls.clear()

    for i, item in enumerate(items):
        param = f"input[{i}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "function_call":
            calls.append(_call(item, param))
            continue
        flush()
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise bad(f"{param}.role", f"role {role!r} is not one of {sorted(_ROLES)}")
            out.append(ChatMessage(str(role), _text(item.get("content"), f"{param}.content")))
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad(f"{param}.call_id", "a function_call_output item needs `call_id`")
            if call_id not in known and earlier_calls:
                known |= {c["id"] for c in earlier_calls}
                calls.extend(earlier_calls)
                flush()
            output = _text(item.get("output"), f"{param}.output")
            out.append(ChatMessage("tool", output, tool_call_id=call_id))
        else:
            raise bad(
                f"{param}.type",
                f"input item type {kind!r} is not supported here",
                "unsupported_parameter",
            )
    flush()
    if not out:
        raise bad("input", "input must hold at least one item")
    return out


def last_user_text(messages: list[ChatMessage]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "user"), "")


# ---- tools and generation ---------------------------------------------------------------


def chat_tools(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Responses function tools as chat tools, and as the response object echoes them."""
    chat, echo = [], []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            raise bad(
                f"tools[{i}].type",
                f"tool type {kind!r} is not supported here; only `function` tools",
                "unsupported_parameter",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise bad(f"tools[{i}].name", "a function tool needs a `name`")
        function: dict[str, Any] = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        chat.append({"type": "function", "function": function})
        echo.append(
            {
                "type": "function",
                "name": name,
                "description": tool.get("description"),
                "parameters": tool.get("parameters"),
                "strict": tool.get("strict", True),
            }
        )
    return chat, echo


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": str(choice["name"])}}
    raise bad(
        "tool_choice",
        "tool_choice must be auto, none, required or {type: function, name}",
        "unsupported_parameter",
    )


def response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """`text.format` as the chat API's `response_format` (None: plain text)."""
    fmt = (text or {}).get("format") or {"type": "text"}
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise bad("text.format.type", f"text format {kind!r} is not supported here")


def generation(body: CreateResponse, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The model call's parameters (the turn's `generation`)."""
    out: dict[str, Any] = {}
    if body.max_output_tokens is not None:
        out["max_tokens"] = body.max_output_tokens
    for name in ("temperature", "top_p", "user"):
        if getattr(body, name) is not None:
            out[name] = getattr(body, name)
    if tools:
        out["tools"] = tools
        if body.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = body.parallel_tool_calls
    if body.tool_choice is not None:
        out["tool_choice"] = chat_tool_choice(body.tool_choice)
    if (fmt := response_format(body.text)) is not None:
        out["response_format"] = fmt
    return out


def to_turn(body: CreateResponse, earlier_calls: list[dict[str, Any]] | None = None) -> TurnInput:
    """The turn a request asks for (400s for what cannot be done)."""
    unsupported(body)
    messages = input_messages(body.input, earlier_calls)
    if body.instructions:
        messages = [ChatMessage("system", body.instructions), *messages]
    tools, _ = chat_tools(body.tools or [])
    return TurnInput(messages, last_user_text(messages), generation(body, tools))


def echo(body: CreateResponse) -> dict[str, Any]:
    """The request's fields every response object of it repeats."""
    _, tools = chat_tools(body.tools or [])
    return {
        "model": body.model,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": None,
        "metadata": dict(body.metadata or {}),
        "parallel_tool_calls": True
        if body.parallel_tool_calls is None
        else body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.store is not False,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": {"format": (body.text or {}).get("format") or {"type": "text"}},
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": tools,
        "top_logprobs": 0,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "truncation": body.truncation or "disabled",
        "user": body.user,
    }
