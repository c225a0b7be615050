"""`POST /v1/chat/completions`'s body, checked, and what of it becomes the turn.

The request body (`ChatCompletionRequest`) is checked the way OpenAI checks it, and what
this gateway cannot honour is refused up front with the parameter named (400), never
silently dropped: a client asking for `n=2`, logprobs or an image would otherwise get an
answer that is not what it asked for. Parameters set to null are treated as absent, as
OpenAI does. The messages become the turn's `ChatMessage`s as the client sent them (text
parts joined), the generation parameters its `generation` (turns.NewTurn).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ingress.openai.errors import OpenAIError
from schemas.events import ChatMessage

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
ROLES = ("system", "developer", "user", "assistant", "tool")
# Content parts a model of this gateway cannot take (they are text-only): 400 naming them.
MEDIA_PARTS = ("image_url", "input_audio", "file", "input_image", "input_file")

# ---- the request ------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # nothing to obfuscate here: accepted, ignored


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class ChatCompletionRequest(BaseModel):
    """The body of POST /v1/chat/completions: OpenAI's parameters. Unknown ones are 400
    (as OpenAI answers), known ones this gateway cannot honour too (`unsupported`)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    # Checked message by message in `chat_messages` (its errors name the part).
    messages: list[Any] = Field(min_length=1, max_length=2048)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(None, max_length=256)
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
    # Known to OpenAI, and refused here unless absent, null or their neutral value.
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    functions: Any = None
    function_call: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    # Known to OpenAI, with no effect on the answer: accepted and ignored.
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def _unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, code="unsupported_parameter", param=param)


def _invalid(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, code=code, param=param)


def check_supported(req: ChatCompletionRequest) -> None:
    """400 for a parameter this gateway cannot honour, or an inconsistent one."""
    for name, value in (req.model_extra or {}).items():
        if value is not None:
            raise OpenAIError(
                400,
                f"Unrecognized request argument supplied: {name}",
                code="unknown_parameter",
                param=name,
            )
    if req.n not in (None, 1):
        raise _unsupported("n", "n must be 1: this gateway returns one choice per request")
    if req.logprobs:
        raise _unsupported("logprobs", "logprobs are not supported by this gateway")
    if req.top_logprobs:
        raise _unsupported("top_logprobs", "top_logprobs are not supported by this gateway")
    if req.logit_bias:
        raise _unsupported("logit_bias", "logit_bias is not supported by this gateway")
    if req.modalities is not None and req.modalities != ["text"]:
        raise _unsupported("modalities", "only the text modality is supported")
    refused = {
        "audio": "audio output is not supported: the models here answer in text",
        "prediction": "predicted outputs are not supported by this gateway",
        "functions": "`functions` is not supported: use `tools`",
        "function_call": "`function_call` is not supported: use `tool_choice`",
        "reasoning_effort": "reasoning_effort is not supported by this gateway's models",
        "verbosity": "verbosity is not supported by this gateway's models",
        "web_search_options": "web search is not supported by this gateway",
    }
    for name, message in refused.items():
        if getattr(req, name) is not None:
            raise _unsupported(name, message)
    if isinstance(req.stop, list) and len(req.stop) > 4:
        raise _invalid("stop", "stop holds at most 4 sequences")
    _check_tool_choice(req)
    _check_response_format(req.response_format)


def _check_tool_choice(req: ChatCompletionRequest) -> None:
    choice = req.tool_choice
    if choice is None or choice == "none":
        return
    if not req.tools:
        raise _invalid("tool_choice", "tool_choice is only allowed when tools are specified")
    if isinstance(choice, str):
        if choice not in ("auto", "required"):
            raise _invalid("tool_choice", "tool_choice must be none, auto, required or a function")
        return
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise _unsupported(
            "tool_choice",
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
        )
    if name not in {t.function.name for t in req.tools}:
        raise _invalid("tool_choice", f"tool_choice names {name!r}, which is not in tools")


def _check_response_format(value: dict[str, Any] | None) -> None:
    if value is None:
        return
    kind = value.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise _invalid(
            "response_format.type", "response_format.type must be text, json_object or json_schema"
        )
    if kind == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise _invalid(
                "response_format.json_schema", "json_schema needs an object with a `name`"
            )


def generation(req: ChatCompletionRequest) -> dict[str, Any]:
    """The generation parameters the model call carries (NewTurn.generation)."""
    out: dict[str, Any] = {}
    for name in (
        "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
        "user", "response_format",
    ):  # fmt: skip
        value = getattr(req, name)
        if value is not None:
            out[name] = value
    caps = [v for v in (req.max_tokens, req.max_completion_tokens) if v is not None]
    if caps:
        out["max_tokens"] = min(caps)
    if req.tools:
        out["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
        if req.tool_choice is not None:
            out["tool_choice"] = req.tool_choice
        if req.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = req.parallel_tool_calls
    return out


def session_of(header: str | None, metadata: dict[str, str] | None) -> str | None:
    """The session the turn joins: `X-Session-Id`, else `metadata.session_id`; None is a
    new one-off session."""
    value, param = header, "X-Session-Id"
    if value is None and metadata:
        value, param = metadata.get("session_id"), "metadata.session_id"
    if value is None:
        return None
    if not SESSION_ID.fullmatch(value):
        raise _invalid(
            param, "a session id is 1 to 128 characters: letters, digits and . _ : - (not first)"
        )
    return value


# ---- the messages -----------------------------------------------------------------------


def _text(content: Any, param: str, allowed: tuple[str, ...]) -> str:
    """The text of string content or of content parts (joined by newlines)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(param, "content must be a string or an array of content parts")
    texts = []
    for j, part in enumerate(content):
        where = f"{param}.{j}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in MEDIA_PARTS:
            raise _unsupported(
                f"{where}.type", f"{kind} content is not supported: the models here take text only"
            )
        if kind not in allowed:
            raise _invalid(
                f"{where}.type", f"content parts here are of type {' or '.join(allowed)}"
            )
        assert isinstance(part, dict)
        text = part.get(kind)  # {"type": "text", "text": ...}, {"type": "refusal", "refusal": ...}
        if not isinstance(text, str):
            raise _invalid(f"{where}.{kind}", f"a {kind} part needs a string `{kind}`")
        texts.append(text)
    return "\n".join(texts)


def _tool_calls(value: Any, param: str) -> str:
    """An assistant message's `tool_calls`, checked, as the JSON the turn carries."""
    if not isinstance(value, list) or not value:
        raise _invalid(param, "tool_calls must be a non-empty array")
    calls = []
    for j, call in enumerate(value):
        where = f"{param}.{j}"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("id"), str):
            raise _invalid(where, "a tool call needs an `id`")
        if call.get("type", "function") != "function" or not isinstance(function, dict):
            raise _unsupported(f"{where}.type", "only function tool calls are supported")
        name, arguments = function.get("name"), function.get("arguments", "")
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise _invalid(f"{where}.function", "a function call needs a name and arguments")
        calls.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        )
    return json.dumps(calls, separators=(",", ":"))


def chat_message(raw: Any, i: int) -> ChatMessage:
    """One message of the request as the turn carries it; 400 naming what is wrong."""
    param = f"messages.{i}"
    if not isinstance(raw, dict):
        raise _invalid(param, "a message must be an object")
    role = raw.get("role")
    if role == "function":
        raise _unsupported(f"{param}.role", "function messages are not supported: use tool")
    if role not in ROLES:
        raise _invalid(f"{param}.role", f"role must be one of {', '.join(ROLES)}")
    content = raw.get("content")
    if role == "assistant":
        if raw.get("audio") is not None:
            raise _unsupported(f"{param}.audio", "audio is not supported by this gateway")
        calls = raw.get("tool_calls")
        calls_json = _tool_calls(calls, f"{param}.tool_calls") if calls is not None else None
        if content is None and calls_json is None and raw.get("refusal") is None:
            raise _invalid(f"{param}.content", "an assistant message needs content or tool_calls")
        text = "" if content is None else _text(content, f"{param}.content", ("text", "refusal"))
        if not text and isinstance(raw.get("refusal"), str):
            text = raw["refusal"]
        return ChatMessage(role="assistant", content=text, tool_calls_json=calls_json)
    if content is None:
        raise _invalid(f"{param}.content", f"a {role} message needs content")
    text = _text(content, f"{param}.content", ("text",))
    if role == "tool":
        call_id = raw.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(f"{param}.tool_call_id", "a tool message needs its tool_call_id")
        return ChatMessage(role="tool", content=text, tool_call_id=call_id)
    return ChatMessage(role=role, content=text)


def chat_messages(raw: list[Any]) -> list[ChatMessage]:
    return [chat_message(m, i) for i, m in enumerate(raw)]


def user_text(messages: list[ChatMessage]) -> str:
    """The last user message's text (the session transcript's user line); without one,
    the last message's."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return messages[-1].content if messages else ""
