from __future__ import annotations

import io
import itertools
import json

import fastavro
import pytest

from schemas.codec import AVRO_DIR, Codec, DecodeError, load_schemas
from schemas.events import (
    ChatMessage,
    ErrorInfo,
    ModelProfile,
    TurnCompleted,
    TurnContextualized,
    TurnRequested,
    Usage,
    to_avro,
)

codec = Codec()


def _request(**overrides: object) -> TurnRequested:
    fields = dict(event_id="e1", session_id="s1", message="hi", created_at_ms=1700000000000)
    fields.update(overrides)
    return TurnRequested(**fields)  # type: ignore[arg-type]


def test_round_trip_of_every_event_type() -> None:
    request = _request(metadata={"k": "v"}, attachments=["a"], principal="p", action=None)
    events = [
        request,
        TurnContextualized(
            request=request,
            principal="p",
            messages=[ChatMessage("user", "hi")],
            profile=ModelProfile(model="openai/x", base_url="http://h"),
        ),
        TurnCompleted(
            request=request,
            principal="p",
            status="failed",
            completed_at_ms=1,
            usage=Usage(1, 2, 0.5),
            error=ErrorInfo("llm_unavailable", "down", True, 5.0),
        ),
    ]
    for event in events:
        record = codec.encode(event, trace_id="t")
        assert record.key == b"s1"
        assert dict(record.headers)["schema"] == event.SCHEMA.encode()
        assert codec.decode(record.value, record.headers) == event


def test_data_written_with_v1_reads_with_v2_defaults() -> None:
    v1 = codec.schema("soma.events.TurnRequested", 1)
    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf,
        v1,
        {
            "event_id": "e",
            "session_id": "s",
            "tenant": "t",
            "persona_id": None,
            "message": "m",
            "attachments": [],
            "metadata": {},
            "created_at_ms": 5,
        },
    )
    headers = [("schema", b"soma.events.TurnRequested"), ("schema-version", b"1")]
    event = codec.decode(buf.getvalue(), headers)
    assert isinstance(event, TurnRequested)
    assert (event.message, event.tenant, event.principal, event.action) == ("m", "t", None, None)


def test_each_schema_version_reads_the_previous_ones_data() -> None:
    """Compatibility rule for every schema under schemas/avro: new fields need defaults."""
    schemas = load_schemas()
    by_name: dict[str, list[int]] = {}
    for name, version in schemas:
        by_name.setdefault(name, []).append(version)
    checked = 0
    for name, versions in by_name.items():
        versions.sort()
        for old, new in itertools.pairwise(versions):
            old_schema, new_schema = schemas[(name, old)], schemas[(name, new)]
            old_fields = {f["name"] for f in old_schema["fields"]}
            for field in new_schema["fields"]:
                if field["name"] not in old_fields:
                    assert "default" in field, f"{name} v{new}: {field['name']} needs a default"
            checked += 1
    assert checked >= 1


def test_every_schema_file_is_valid_json_with_docs() -> None:
    files = sorted(AVRO_DIR.glob("*.avsc"))
    assert len(files) >= 5
    for path in files:
        raw = json.loads(path.read_text())
        records = raw if isinstance(raw, list) else [raw]
        assert all(r.get("doc") or r["name"] in {"Usage"} for r in records), path


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"x", [], "missing"),
        (b"x", [("schema", b"soma.events.Nope"), ("schema-version", b"1")], "unknown schema"),
        (b"x", [("schema", b"soma.events.TurnRequested"), ("schema-version", b"a")], "unknown"),
        (
            b"\xff\xff\xff",
            [("schema", b"soma.events.TurnRequested"), ("schema-version", b"2")],
            "cannot read",
        ),
        (None, [("schema", b"soma.events.TurnRequested"), ("schema-version", b"2")], "empty"),
    ],
)
def test_undecodable_records_raise_decode_error(
    value: bytes | None, headers: list[tuple[str, bytes]], reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason):
        codec.decode(value, headers)


def test_turn_contextualized_v2_data_reads_as_v3_with_tool_defaults() -> None:
    """v3 renamed the message type (ChatMessageV2, aliased to ChatMessage) and added fields."""
    v2 = codec.schema("soma.events.TurnContextualized", 2)
    record = to_avro(
        TurnContextualized(
            request=_request(),
            principal="p",
            messages=[ChatMessage("user", "hi")],
            profile=ModelProfile(model="m"),
            fallbacks=[ModelProfile(model="f")],
        )
    )
    for key in ("tool_rounds", "prior_usage"):
        del record[key]
    record["messages"] = [{"role": "user", "content": "hi"}]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v2, record)
    headers = [("schema", b"soma.events.TurnContextualized"), ("schema-version", b"2")]
    event = codec.decode(buf.getvalue(), headers)
    assert isinstance(event, TurnContextualized)
    assert event.messages == [ChatMessage("user", "hi", tool_call_id=None, tool_calls_json=None)]
    assert (event.tool_rounds, event.prior_usage) == (0, None)
    assert [p.model for p in event.fallbacks] == ["f"]


def test_records_embed_the_newest_version_of_a_versioned_record() -> None:
    """ToolRequested embeds TurnContextualized: v3, even though v1 resolves first."""
    schema = codec.schema("soma.events.ToolRequested")
    embedded = schema["__named_schemas"]["soma.events.TurnContextualized"]
    assert "tool_rounds" in {f["name"] for f in embedded["fields"]}


def test_an_openai_api_turn_round_trips_through_every_record_that_embeds_it() -> None:
    request = _request(
        api="chat.completions",
        messages=[
            ChatMessage("system", "be brief"),
            ChatMessage("assistant", "", tool_calls_json='[{"id":"c1"}]'),
            ChatMessage("tool", "42", tool_call_id="c1"),
        ],
        generation_json='{"temperature": 0, "tools": [{"type": "function"}]}',
    )
    completed = TurnCompleted(
        request=request, principal="p", status="completed", completed_at_ms=1, usage=Usage()
    )
    for event in (request, completed):
        record = codec.encode(event)
        decoded = codec.decode(record.value, record.headers)
        assert decoded == event
    assert request.client_tools and request.generation["temperature"] == 0


def test_records_written_before_turn_requested_v3_still_read() -> None:
    """TurnCompleted v1 embeds TurnRequested v2 (its `embeds` pin): its bytes read as they
    were written, and the v3 fields take their defaults."""
    v1 = codec.schema("soma.events.TurnCompleted", 1)
    record = {
        "request": {
            "event_id": "e1",
            "session_id": "s1",
            "tenant": "t",
            "persona_id": None,
            "message": "hi",
            "attachments": [],
            "metadata": {},
            "created_at_ms": 1,
            "principal": "p",
            "action": None,
        },
        "principal": "p",
        "status": "completed",
        "answer": "yes",
        "model": "m",
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "cost_usd": None},
        "reserved_tokens": 0,
        "error": None,
        "completed_at_ms": 2,
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v1, record)
    headers = [("schema", b"soma.events.TurnCompleted"), ("schema-version", b"1")]
    event = codec.decode(buf.getvalue(), headers)
    assert isinstance(event, TurnCompleted)
    assert (event.answer, event.request.message, event.request.tenant) == ("yes", "hi", "t")
    assert (event.request.api, event.request.messages, event.request.generation) == (None, [], {})
