"""The Responses API's pure parts: turn events -> stream events and response objects, and
the request -> the turn's messages and generation parameters.

The stream events are checked against the official openai SDK: its stream accumulator
(`ResponseStreamState`, what `client.responses.stream()` runs) must rebuild the response
from them, and every event must parse as the SDK's own type.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from ingress.openai.errors import OpenAIError
from ingress.openai.response_request import CreateResponse, echo, input_messages, to_turn
from ingress.openai.responses import ResponseHead, response_id, translate, turn_of
from schemas.events import ChatMessage

TURN = "0123456789abcdef0123456789abcdef"
ANSWER = "".join(f"tok{i} " for i in range(20))


def head(background: bool = True) -> ResponseHead:
    body = CreateResponse(model="dialogue", input="hi", background=background)
    return ResponseHead(response_id(TURN), TURN, 1_700_000_000, background, echo(body))


def deltas(text: str, size: int = 7) -> list[tuple[str, dict[str, Any], str]]:
    return [
        ("assistant.delta", {"seq": n, "text": text[i : i + size]}, f"1700000000{n:03d}-0")
        for n, i in enumerate(range(0, len(text), size))
    ]


def final(text: str, **extra: Any) -> tuple[str, dict[str, Any], str]:
    data = {
        "text": text,
        "model": "openai/fake",
        "fallback": False,
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "cost_usd": 0.0},
        "finish_reason": "stop",
        "tool_calls": [],
        **extra,
    }
    return ("assistant.final", data, "1700000009000-0")


ACCEPTED: tuple[str, dict[str, Any], str] = ("turn.accepted", {}, "1700000000000-0")
RETRYING = ("turn.retrying", {"reason": "crash"}, "1700000005000-0")


def sdk_replay(events: list[dict[str, Any]]) -> tuple[ResponseStreamState[Any], list[Any]]:
    """Feed the events, as JSON on the wire, to the SDK's own stream accumulator."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    parsed = []
    for event in events:
        wire = json.loads(json.dumps(event))
        raw = construct_type(type_=ResponseStreamEvent, value=wire)
        assert type(raw).__name__ != "dict", wire["type"]
        parsed += state.handle_event(raw)  # type: ignore[arg-type]
    return state, parsed


def texts(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


def test_a_background_answer_streams_in_openai_order_and_the_sdk_rebuilds_it() -> None:
    events, translator = translate(head(), [ACCEPTED, *deltas(ANSWER), final(ANSWER)])
    kinds = [e["type"] for e in events]
    assert kinds[:5] == [
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "queued"
    assert texts(events) == ANSWER
    state, _ = sdk_replay(events)
    done = state._completed_response
    assert done is not None and done.status == "completed" and done.output_text == ANSWER
    assert done.usage is not None and done.usage.total_tokens == 30
    body = Response.model_validate(translator.response())  # every required field there
    assert body.output_text == ANSWER and body.id == f"resp_{TURN}"
    assert body.output[0].id == f"msg_{TURN}_0"


def test_the_same_log_always_gives_the_same_events() -> None:
    log = [ACCEPTED, *deltas(ANSWER), final(ANSWER)]
    first, _ = translate(head(), log)
    again, _ = translate(head(), log)
    assert first == again
    # every prefix of the log gives a prefix of the events: resuming anywhere is exact
    for n in range(len(log)):
        partial, _ = translate(head(), log[:n])
        assert first[: len(partial)] == partial


def test_a_foreground_response_starts_in_progress_without_queued() -> None:
    events, _ = translate(head(background=False), [ACCEPTED, *deltas("abc"), final("abc")])
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0]["response"]["status"] == "in_progress"


def test_a_retry_that_repeats_the_streamed_text_is_seamless() -> None:
    streamed = deltas(ANSWER[:30])
    log = [ACCEPTED, *streamed, RETRYING, *deltas(ANSWER), final(ANSWER)]
    events, translator = translate(head(), log)
    assert texts(events) == ANSWER  # nothing twice, nothing missing
    assert sum(e["type"] == "response.output_item.added" for e in events) == 1
    state, _ = sdk_replay(events)
    assert state._completed_response is not None
    assert state._completed_response.output_text == ANSWER
    assert translator.response()["output"][0]["status"] == "completed"


def test_a_retry_that_diverges_closes_the_message_incomplete_and_starts_another() -> None:
    log = [ACCEPTED, *deltas("Hello wor"), RETRYING, *deltas("Goodbye"), final("Goodbye")]
    events, translator = translate(head(), log)
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert [d["item"]["status"] for d in done] == ["incomplete", "completed"]
    assert [d["output_index"] for d in done] == [0, 1]
    output = translator.response()["output"]
    assert [o["id"] for o in output] == [f"msg_{TURN}_1"]  # the final attempt's only
    assert output[0]["content"][0]["text"] == "Goodbye"
    state, _ = sdk_replay(events)
    assert state._completed_response is not None
    assert state._completed_response.output_text == "Goodbye"


def test_a_final_shorter_than_what_was_streamed_is_a_divergence() -> None:
    log = [ACCEPTED, *deltas("abcdef"), RETRYING, *deltas("abc"), final("abc")]
    events, translator = translate(head(), log)
    assert translator.response()["output"][0]["content"][0]["text"] == "abc"
    assert translator.response()["output"][0]["id"] == f"msg_{TURN}_1"
    sdk_replay(events)


def test_tool_calls_become_function_call_items() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'},
    }
    log = [ACCEPTED, final("", finish_reason="tool_calls", tool_calls=[call])]
    events, translator = translate(head(), log)
    kinds = [e["type"] for e in events]
    assert "response.content_part.added" not in kinds  # no text, no message item
    assert kinds[3:7] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    [item] = translator.response()["output"]
    assert item == {
        "id": f"fc_{TURN}_0",
        "type": "function_call",
        "call_id": "call_1",
        "name": "calculator",
        "arguments": '{"expression": "6*7"}',
        "status": "completed",
    }
    state, _ = sdk_replay(events)
    assert state._completed_response is not None
    assert state._completed_response.output[0].type == "function_call"


def test_length_is_incomplete_with_max_output_tokens() -> None:
    events, translator = translate(
        head(), [ACCEPTED, *deltas("abc"), final("abc", finish_reason="length")]
    )
    assert events[-1]["type"] == "response.incomplete"
    body = translator.response()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    sdk_replay(events)


def test_an_error_fails_the_response_and_closes_the_open_message() -> None:
    error = {"code": "llm_stream_interrupted", "message": "cut", "retryable": True}
    events, translator = translate(head(), [ACCEPTED, *deltas("abc"), ("error", error, "1-0")])
    assert events[-1]["type"] == "response.failed"
    assert events[-2]["item"]["status"] == "incomplete"
    body = translator.response()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "server_error"
    assert body["error"]["type"] == "llm_stream_interrupted"
    sdk_replay(events)


def test_a_refusal_before_admission_fails_without_in_progress() -> None:
    error = {"code": "budget_exhausted", "message": "no budget", "retryable": False}
    events, translator = translate(head(), [("error", error, "1-0")])
    assert [e["type"] for e in events] == [
        "response.created",
        "response.queued",
        "response.failed",
    ]
    assert translator.response()["error"]["code"] == "rate_limit_exceeded"


def test_a_cancelled_turn_ignores_what_follows() -> None:
    log = [
        ACCEPTED,
        *deltas("abc"),
        ("turn.cancelled", {"reason": "client"}, "2-0"),
        *deltas("def"),
        ("error", {"code": "cancelled", "message": "cancelled"}, "3-0"),
    ]
    events, translator = translate(head(), log)
    assert translator.status == "cancelled" and translator.done
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "cancelled"
    assert texts(events) == "abc"
    sdk_replay(events)


def test_item_ids_come_from_the_turn_id() -> None:
    assert turn_of(response_id(TURN)) == TURN
    assert turn_of("resp_nothex") is None
    assert turn_of("msg_" + TURN) is None


# ---- the request ------------------------------------------------------------------------


def test_input_items_become_chat_messages() -> None:
    items: list[dict[str, Any]] = [
        {"role": "user", "content": "what is 6*7?"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Let me see"}],
        },
        {"type": "function_call", "call_id": "c1", "name": "calc", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "calc", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "function_call_output", "call_id": "c2", "output": "42"},
        {"role": "user", "content": [{"type": "input_text", "text": "thanks"}]},
    ]
    messages = input_messages(items)
    assert [m.role for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    assistant = messages[1]
    assert assistant.content == "Let me see"
    assert assistant.tool_calls_json is not None
    assert [c["id"] for c in json.loads(assistant.tool_calls_json)] == ["c1", "c2"]
    assert messages[2] == ChatMessage("tool", "42", tool_call_id="c1")


def test_results_of_the_previous_responses_calls_get_their_assistant_message() -> None:
    earlier = [{"id": "c9", "type": "function", "function": {"name": "calc", "arguments": "{}"}}]
    messages = input_messages(
        [{"type": "function_call_output", "call_id": "c9", "output": "42"}], earlier
    )
    assert [m.role for m in messages] == ["assistant", "tool"]
    assert json.loads(messages[0].tool_calls_json or "[]") == earlier


def test_the_turn_carries_instructions_tools_and_generation() -> None:
    body = CreateResponse(
        model="dialogue",
        input="hello",
        instructions="be brief",
        max_output_tokens=50,
        temperature=0.2,
        tools=[{"type": "function", "name": "calc", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "calc"},
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
    )
    turn = to_turn(body)
    assert turn.messages == [ChatMessage("system", "be brief"), ChatMessage("user", "hello")]
    assert turn.message == "hello"
    assert turn.generation == {
        "max_tokens": 50,
        "temperature": 0.2,
        "tools": [
            {"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}
        ],
        "parallel_tool_calls": False,
        "tool_choice": {"type": "function", "function": {"name": "calc"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
    }
    assert echo(body)["tools"][0]["strict"] is True


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"background": True, "store": False}, "store"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "reasoning"}]}, "input[0].type"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
    ],
)
def test_what_is_not_supported_is_400_with_its_param(fields: dict[str, Any], param: str) -> None:
    body = CreateResponse.model_validate({"model": "dialogue", "input": "hi", **fields})
    with pytest.raises(OpenAIError) as refused:
        to_turn(body)
    assert refused.value.status == 400 and refused.value.param == param
