"""The chat completions translation, without a mesh: request checks, messages, errors,
routing by `model`, and turn events -> chunks / completion (ingress/openai/chat.py,
ingress/openai/models.py). The same paths run through a real mesh in
tests/e2e/test_openai_chat.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway_runtime.ports import StoredProfile, Tenant
from ingress.openai import chat, chat_request, turn_errors
from ingress.openai.chat import ChatTranslator
from ingress.openai.chat_request import ChatCompletionRequest
from ingress.openai.errors import OpenAIError
from ingress.openai.models import match, roles_of
from ingress.openai.turn_events import TurnEvent, decode
from schemas.events import ChatMessage

USER = [{"role": "user", "content": "hi"}]


def request(**body: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "dialogue", "messages": USER, **body})


def refused(**body: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        req = request(**body)
        chat_request.check_supported(req)
        chat_request.chat_messages(req.messages)
    return caught.value


# ---- the request ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tool_choice": "auto"}, "tool_choice"),  # no tools
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                        ],
                    }
                ]
            },
            "messages.0.content.1.type",
        ),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages.0.tool_call_id"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ],
)
def test_what_cannot_be_honoured_is_400_naming_the_parameter(
    body: dict[str, Any], param: str
) -> None:
    error = refused(**body)
    assert (error.status, error.param, error.type) == (400, param, "invalid_request_error")
    assert error.body()["error"]["message"]


def test_null_and_neutral_values_are_accepted() -> None:
    req = request(
        n=1,
        logprobs=False,
        top_logprobs=None,
        audio=None,
        modalities=["text"],
        prediction=None,
        unknown_but_null=None,
        store=False,
        service_tier="auto",
        stream_options={"include_usage": True},
    )
    chat_request.check_supported(req)
    assert chat_request.generation(req) == {}
    assert not req.include_usage  # only when streaming
    assert request(stream=True, stream_options={"include_usage": True}).include_usage


def test_generation_parameters_are_carried_and_max_tokens_is_the_smaller_cap() -> None:
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
    req = request(
        temperature=0.2,
        top_p=0.9,
        max_tokens=100,
        max_completion_tokens=40,
        stop="END",
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        user="u-1",
        response_format={"type": "json_object"},
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "calculator"}},
        parallel_tool_calls=False,
    )
    chat_request.check_supported(req)
    assert chat_request.generation(req) == {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 40,
        "stop": "END",
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "user": "u-1",
        "response_format": {"type": "json_object"},
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "calculator"}},
        "parallel_tool_calls": False,
    }


def test_tool_choice_must_name_an_offered_tool() -> None:
    tools = [{"type": "function", "function": {"name": "calculator"}}]
    error = refused(tools=tools, tool_choice={"type": "function", "function": {"name": "rm"}})
    assert error.param == "tool_choice"


def test_messages_are_carried_as_sent() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}
    messages = chat_request.chat_messages(
        [
            {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "name": "ann", "content": [{"type": "text", "text": "6*7?"}]},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "assistant", "content": "42."},
            {"role": "user", "content": "thanks"},
        ]
    )
    assert messages == [
        ChatMessage("developer", "be brief"),
        ChatMessage("user", "6*7?"),
        ChatMessage("assistant", "", tool_calls_json=json.dumps([call], separators=(",", ":"))),
        ChatMessage("tool", "42", tool_call_id="call_1"),
        ChatMessage("assistant", "42."),
        ChatMessage("user", "thanks"),
    ]
    assert chat_request.user_text(messages) == "thanks"


def test_the_session_comes_from_the_header_else_metadata() -> None:
    assert chat_request.session_of(None, None) is None
    assert chat_request.session_of("s-1", {"session_id": "s-2"}) == "s-1"
    assert chat_request.session_of(None, {"session_id": "s-2"}) == "s-2"
    with pytest.raises(OpenAIError) as caught:
        chat_request.session_of(None, {"session_id": "../etc"})
    assert caught.value.param == "metadata.session_id"


def test_metadata_has_openai_limits() -> None:
    with pytest.raises(ValueError):
        request(metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(ValueError):
        request(metadata={"k": "v" * 513})


# ---- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "code", "retry_after"),
    [
        ({"code": "budget_exhausted", "retry_after_s": 3600.5}, 429, "insufficient_quota", "3601"),
        ({"code": "rate_limited", "retry_after_s": 12}, 429, "rate_limit_exceeded", "12"),
        ({"code": "rate_limited"}, 429, "rate_limit_exceeded", "60"),
        ({"code": "model_not_allowed"}, 403, "model_not_allowed", None),
        ({"code": "context_length_exceeded"}, 400, "context_length_exceeded", None),
        ({"code": "llm_unavailable", "retry_after_s": 30}, 502, "llm_unavailable", "30"),
        ({"code": "policy_unavailable", "retry_after_s": 5}, 503, "policy_unavailable", "5"),
        ({"code": "stage_failed"}, 500, "stage_failed", None),
        ({"code": "something_new"}, 500, "server_error", None),
    ],
)
def test_turn_errors_map_to_openai_statuses(
    data: dict[str, Any], status: int, code: str, retry_after: str | None
) -> None:
    error = turn_errors.turn_error({"message": "m", **data})
    assert (error.status, error.code) == (status, code)
    assert (error.headers or {}).get("Retry-After") == retry_after
    assert error.type == {
        429: "rate_limit_error",
        403: "permission_error",
        400: "invalid_request_error",
    }.get(status, "server_error")


# ---- routing by model -------------------------------------------------------------------


def test_model_names_a_role_or_a_model_a_profile_serves() -> None:
    profiles = [
        StoredProfile("summary", "local", "openai/qwen2.5-0.5b-instruct"),
        StoredProfile("dialogue", "local", "openai/fake", fallbacks=["summary"]),
        StoredProfile("cheap", "local", "openai/fake"),
    ]
    roles = roles_of(profiles)
    assert [r.role for r in roles] == ["dialogue", "cheap", "summary"]
    assert roles[0].models == ("openai/fake", "openai/qwen2.5-0.5b-instruct")
    assert match(roles, "summary").role == "summary"  # type: ignore[union-attr]
    assert match(roles, "openai/fake").role == "dialogue"  # type: ignore[union-attr]
    assert match(roles, "qwen2.5-0.5b-instruct").role == "summary"  # type: ignore[union-attr]
    assert match(roles, "gpt-4o") is None
    only_qwen = Tenant("t", models_allow=["openai/qwen*"])
    assert [r.role for r in roles if r.usable_by(only_qwen)] == ["dialogue", "summary"]
    # The default role exists before any profile is stored (the context stage's default).
    assert [r.role for r in roles_of([])] == ["dialogue"]


# ---- turn events -> chunks --------------------------------------------------------------


def ev(kind: str, **data: Any) -> TurnEvent:
    return TurnEvent(kind, data, "1-0")


FINAL = {
    "text": "Hello there",
    "model": "openai/fake",
    "fallback": False,
    "usage": {"prompt_tokens": 10, "completion_tokens": 3, "cost_usd": 0.0},
    "finish_reason": "stop",
    "tool_calls": [],
}


def streamed(events: list[TurnEvent], include_usage: bool = False) -> list[Any]:
    t = ChatTranslator("chatcmpl-t1", 1700000000, "dialogue", include_usage)
    out: list[Any] = []
    for event in events:
        out.extend(t.feed(event))
    assert t.done
    return out


def text_of(chunks: list[Any]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if isinstance(c, dict) and c["choices"]
    )


def test_a_stream_is_role_deltas_finish_and_usage() -> None:
    chunks = streamed(
        [
            ev("turn.accepted"),
            ev("assistant.delta", seq=0, text="Hello"),
            ev("assistant.delta", seq=1, text=" there"),
            ev("assistant.final", **FINAL),
        ],
        include_usage=True,
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(chunks) == "Hello there"
    assert all(c["id"] == "chatcmpl-t1" and c["model"] == "dialogue" for c in chunks)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    assert all(c["usage"] is None for c in chunks[:-1])


def test_a_retry_after_a_crash_streams_only_the_new_text() -> None:
    chunks = streamed(
        [
            ev("turn.accepted"),
            ev("assistant.delta", seq=0, text="Hello"),
            ev("turn.retrying", reason="llm worker crashed"),
            ev("assistant.delta", seq=0, text="Hel"),
            ev("assistant.delta", seq=1, text="lo th"),
            ev("assistant.delta", seq=2, text="ere"),
            ev("assistant.final", **FINAL),
        ]
    )
    assert text_of(chunks) == "Hello there"
    assert "usage" not in chunks[-1]


def test_a_retry_that_says_something_else_ends_with_an_error_frame() -> None:
    chunks = streamed(
        [
            ev("assistant.delta", seq=0, text="Hello"),
            ev("turn.retrying", reason="llm worker crashed"),
            ev("assistant.delta", seq=0, text="Goodbye"),
        ]
    )
    assert isinstance(chunks[-1], OpenAIError)
    assert chunks[-1].code == "llm_stream_interrupted"
    assert chat.sse(chunks[-1]).startswith(b'data: {"error":')


def test_text_missing_from_the_deltas_comes_from_the_final() -> None:
    chunks = streamed([ev("assistant.delta", seq=0, text="Hel"), ev("assistant.final", **FINAL)])
    assert text_of(chunks) == "Hello there"


def test_tool_calls_stream_as_one_delta_and_finish_with_tool_calls() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'},
    }
    final = {**FINAL, "text": "", "finish_reason": "tool_calls", "tool_calls": [call]}
    chunks = streamed([ev("turn.accepted"), ev("assistant.final", **final)])
    assert chunks[1]["choices"][0]["delta"] == {"tool_calls": [{"index": 0, **call}]}
    assert chunks[2]["choices"][0]["finish_reason"] == "tool_calls"
    completion = ChatTranslator("chatcmpl-t1", 1, "dialogue", False).completion(final)
    message = completion["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"] == [call]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"


def test_a_turn_error_mid_stream_is_the_last_frame() -> None:
    chunks = streamed(
        [
            ev("turn.accepted"),
            ev("assistant.delta", seq=0, text="Hel"),
            ev("error", code="llm_stream_interrupted", message="cut", retry_after_s=10),
        ]
    )
    assert text_of(chunks) == "Hel"
    assert isinstance(chunks[-1], OpenAIError) and chunks[-1].status == 502


def test_the_completion_object() -> None:
    out = ChatTranslator("chatcmpl-t1", 1700000000, "dialogue", False).completion(FINAL)
    assert out == {
        "id": "chatcmpl-t1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "dialogue",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello there",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }


def test_only_the_turns_own_events_are_decoded() -> None:
    payload = {"type": "assistant.delta", "session_id": "s", "turn_id": "t1", "ts": 1}
    mine = json.dumps({**payload, "data": {"seq": 0, "text": "x"}})
    assert decode("5-0", mine, "t1") == TurnEvent("assistant.delta", {"seq": 0, "text": "x"}, "5-0")
    assert decode("5-0", mine, "t2") is None
    assert decode("5-0", "not json", "t1") is None
