"""Traces: off unless OTEL_* says so; a record's `traceparent` is continued by the stage
that handles it and carried on by what it writes; GenAI and HTTP spans' attributes.

Spans are read back from the `jsonl` exporter's file: the code path the e2e test and an
operator without a collector use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway_runtime import tracing
from gateway_runtime.errors import ProviderError
from gateway_runtime.settings import CommonSettings
from ingress.request_span import RequestSpan
from llm_worker.genai_names import provider_and_model
from llm_worker.genai_span import chat_span
from schemas.codec import Codec, header
from schemas.events import ModelProfile, ToolCall, TurnRequested, Usage

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@dataclass
class Record:
    topic: str = "soma.turn.requested"
    partition: int = 3
    offset: int = 42
    key: bytes | None = b"session-1"
    value: bytes | None = b""
    headers: list[tuple[str, bytes]] | None = None


@dataclass
class Answer:
    model: str = "openai/fake"
    fallback: bool = False
    usage: Usage | None = None
    calls: tuple[ToolCall, ...] = ()
    finish: str | None = None


@pytest.fixture
def spans(tmp_path: Path) -> Iterator[Path]:
    """Tracing on (the jsonl exporter) for one test; yields the directory of span files."""
    settings = CommonSettings(
        otel_traces_exporter="jsonl", traces_jsonl_dir=tmp_path, service_name="unit"
    )
    assert tracing.configure(settings)
    yield tmp_path
    tracing.shutdown()


def read(directory: Path) -> list[dict[str, Any]]:
    tracing.flush()  # ended spans wait in the batch processor's queue
    return [json.loads(line) for p in directory.glob("*.jsonl") for line in p.open()]


def test_tracing_is_off_unless_the_otel_settings_turn_it_on() -> None:
    assert tracing.exporters(CommonSettings()) == []
    assert tracing.exporters(CommonSettings(otel_traces_exporter="none")) == []
    endpoint = CommonSettings(otel_exporter_otlp_endpoint="http://collector:4318")
    assert tracing.exporters(endpoint) == ["otlp"]
    both = CommonSettings(otel_traces_exporter="console, jsonl,console")
    assert tracing.exporters(both) == ["console", "jsonl"]
    disabled = CommonSettings(otel_traces_exporter="otlp", otel_sdk_disabled=True)
    assert tracing.exporters(disabled) == []
    assert not tracing.configure(CommonSettings()) and not tracing.enabled()
    with pytest.raises(ValidationError, match="unknown exporter"):
        CommonSettings(otel_traces_exporter="zipkin")


def test_off_a_stage_passes_the_records_trace_headers_on_unchanged() -> None:
    headers = [("trace-id", TRACE.encode()), ("traceparent", TRACEPARENT.encode())]
    with tracing.stage_span("policy", Record(), headers) as trace:
        assert (trace.trace_id, trace.traceparent) == (TRACE, TRACEPARENT)
    with tracing.producer_span("soma.turn.requested", "e1", "s1") as trace:
        assert trace == tracing.TraceHeaders()  # the codec starts a trace id, as before


def test_the_codec_writes_traceparent_beside_a_matching_trace_id() -> None:
    codec = Codec()
    event = TurnRequested(event_id="e1", session_id="s1", message="hi", created_at_ms=1)
    record = codec.encode(event, traceparent=TRACEPARENT)
    assert header(record.headers, "traceparent") == TRACEPARENT
    assert header(record.headers, "trace-id") == TRACE
    plain = codec.encode(event, trace_id="abc")  # as before traces: no traceparent
    assert header(plain.headers, "trace-id") == "abc"
    assert header(plain.headers, "traceparent") is None
    assert codec.decode(record.value, record.headers) == event


def test_a_stage_span_continues_the_records_trace_and_its_outputs_carry_it(
    spans: Path,
) -> None:
    headers = [("event-id", b"e1"), ("tenant", b"t1"), ("traceparent", TRACEPARENT.encode())]
    with tracing.stage_span("policy", Record(), headers) as trace:
        assert trace.trace_id == TRACE
        assert trace.traceparent is not None
        assert trace.traceparent.startswith(f"00-{TRACE}-") and trace.traceparent.endswith("-01")
    (span,) = read(spans)
    assert span["name"] == "process soma.turn.requested"
    assert (span["kind"], span["trace_id"], span["parent_span_id"]) == ("CONSUMER", TRACE, PARENT)
    assert trace.traceparent.split("-")[2] == span["span_id"]  # the outputs' parent
    assert span["service"] == "unit"
    assert span["attributes"] == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "soma.turn.requested",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 42,
        "messaging.consumer.group.name": "soma.policy",
        "messaging.message.id": "e1",
        "messaging.kafka.message.key": "session-1",
        "soma.stage": "policy",
        "soma.attempt": 1,
        "soma.tenant": "t1",
    }


def test_each_try_of_a_record_is_a_span_of_the_same_trace(spans: Path) -> None:
    headers = [("traceparent", TRACEPARENT.encode())]
    with pytest.raises(TimeoutError), tracing.stage_span("llm", Record(offset=7), headers):
        raise TimeoutError("redis")
    with tracing.stage_span("llm", Record(offset=7), headers):
        pass
    with tracing.stage_span("llm", Record(offset=8), headers):  # the next record
        pass
    first, second, other = read(spans)
    assert [s["attributes"]["soma.attempt"] for s in (first, second, other)] == [1, 2, 1]
    assert (first["status"], second["status"]) == ("ERROR", "UNSET")
    assert {s["trace_id"] for s in (first, second, other)} == {TRACE}


def test_a_record_with_only_the_legacy_trace_id_joins_that_trace(spans: Path) -> None:
    with tracing.stage_span("context", Record(), [("trace-id", TRACE.encode())]) as trace:
        assert trace.trace_id == TRACE
    with tracing.stage_span("context", Record(offset=1), [("trace-id", b"not-hex")]) as fresh:
        assert fresh.trace_id not in (None, TRACE)
    legacy, new = read(spans)
    assert legacy["trace_id"] == TRACE and new["parent_span_id"] is None


def test_the_model_call_is_a_genai_client_span(spans: Path) -> None:
    profile = ModelProfile(model="anthropic/claude-x", max_tokens=64, temperature=0.2)
    answer = Answer(model="openai/fake")
    with tracing.producer_span("soma.turn.requested", "e1", "s1") as trace:
        with chat_span(profile, "s1", answer):
            answer.usage, answer.finish, answer.fallback = Usage(12, 7), "stop", True
        with pytest.raises(ProviderError), chat_span(profile, "s1", Answer()):
            raise ProviderError("http://10.0.0.7/v1 said 503", status=503)
    ok, failed, producer = read(spans)
    assert (ok["name"], ok["kind"], ok["trace_id"]) == ("chat claude-x", "CLIENT", trace.trace_id)
    assert ok["parent_span_id"] == producer["span_id"]
    assert ok["attributes"] == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-x",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.stream": True,
        "gen_ai.output.type": "text",
        "gen_ai.conversation.id": "s1",
        "soma.model_role": "dialogue",
        "gen_ai.response.model": "fake",
        "soma.fallback": True,
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.response.finish_reasons": ["stop"],
    }
    assert (failed["status"], failed["attributes"]["error.type"]) == ("ERROR", "503")
    assert "10.0.0.7" not in json.dumps(failed)  # a provider's URL stays in the log
    assert (producer["name"], producer["kind"]) == ("send soma.turn.requested", "PRODUCER")
    assert provider_and_model("bedrock/titan") == ("aws.bedrock", "titan")
    assert provider_and_model("gpt-4o") == ("openai", "gpt-4o")


async def test_a_request_is_a_server_span_named_by_its_route(spans: Path) -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi", status_code=202)

    app = RequestSpan(Starlette(routes=[Route("/v1/session/{sid}/hello", hello)]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        answer = await client.get("/v1/session/s1/hello", headers={"traceparent": TRACEPARENT})
    assert answer.status_code == 202
    (span,) = read(spans)
    assert (span["name"], span["kind"]) == ("GET /v1/session/{sid}/hello", "SERVER")
    assert (span["trace_id"], span["parent_span_id"]) == (TRACE, PARENT)
    assert span["attributes"]["http.response.status_code"] == 202
    assert span["attributes"]["http.route"] == "/v1/session/{sid}/hello"


async def test_a_request_span_stands_aside_for_fastapis_own(spans: Path) -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = RequestSpan(Starlette(routes=[Route("/hello", hello)]))
    tracer = tracing.tracer()
    assert tracer is not None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        with tracer.start_as_current_span("GET /hello (FastAPI's)"):
            assert (await c.get("/hello")).status_code == 200
    assert [s["name"] for s in read(spans)] == ["GET /hello (FastAPI's)"]


def test_turns_over_a_websocket_are_traces_of_their_own_linked_to_it(spans: Path) -> None:
    tracer = tracing.tracer()
    assert tracer is not None
    with tracer.start_as_current_span("WS /v1/session/{id}/stream") as connection:
        with tracing.turns_start_traces():
            with tracing.producer_span("soma.turn.requested", "e1", "s1") as first:
                pass
            with tracing.producer_span("soma.turn.requested", "e2", "s1") as second:
                pass
        with tracing.producer_span("soma.turn.requested", "e3", "s1") as inside:
            pass
    ws = connection.get_span_context()
    assert len({first.trace_id, second.trace_id, f"{ws.trace_id:032x}"}) == 3
    assert inside.trace_id == f"{ws.trace_id:032x}"  # elsewhere, a child as before
    one, two, _, _ = read(spans)
    assert one["parent_span_id"] is None and two["parent_span_id"] is None
    assert one["links"] == [{"trace_id": f"{ws.trace_id:032x}", "span_id": f"{ws.span_id:016x}"}]
