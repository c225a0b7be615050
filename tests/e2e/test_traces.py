"""One turn is one trace: the ingress and every stage, each process exporting its own spans.

A mesh of its own (its own sandbox) runs with `OTEL_TRACES_EXPORTER=jsonl`: every process
(ingress, policy, context, LLM, tools, persistence) appends its spans to a file of its
own, and the test joins the files, as a collector would.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from gateway_runtime.settings import CommonSettings
from testbed.mesh import Mesh, mesh_env, provision, start_mesh
from testbed.sandbox import open_sandbox
from tests.turns import profile, turn

Span = dict[str, Any]


@pytest.fixture(scope="module")
async def traced(settings: CommonSettings, fake_llm: str) -> AsyncIterator[tuple[Mesh, Path]]:
    async with open_sandbox("traces", settings) as sandbox:
        spans = sandbox.dir / "traces"
        env = mesh_env(
            sandbox, fake_llm + "/v1", OTEL_TRACES_EXPORTER="jsonl", TRACES_JSONL_DIR=str(spans)
        )
        mesh = Mesh(env=env, log_dir=sandbox.dir)
        try:
            mesh.operator_key = await provision(mesh.env)
            await start_mesh(mesh)
            yield mesh, spans
        finally:
            mesh.stop_all()
            print(f"traced mesh logs and spans: {sandbox.dir}")


def read_spans(directory: Path) -> list[Span]:
    spans = []
    for path in directory.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.endswith("}"):  # a line being written is not whole yet
                spans.append(json.loads(line))
    return spans


async def trace_of(directory: Path, turn_id: str, stages: list[str]) -> list[Span]:
    """The spans of the turn's trace, once a span of each of `stages` (a stage may be
    listed twice: two rounds) is on disk."""
    deadline = time.monotonic() + 30
    while True:
        spans = read_spans(directory)
        ids = {
            s["trace_id"] for s in spans if s["attributes"].get("messaging.message.id") == turn_id
        }
        assert len(ids) <= 1, f"the turn's records are in {len(ids)} traces"
        found = [s for s in spans if s["trace_id"] in ids]
        handled = sorted(s["attributes"].get("soma.stage", "") for s in found)
        if [s for s in handled if s] == sorted(stages):
            return found
        assert time.monotonic() < deadline, f"stages {handled}, expected {stages}"
        await asyncio.sleep(0.1)


def check_tree(
    spans: list[Span], root: tuple[str, str] = ("POST /v1/session/message", "SERVER")
) -> Span:
    """One root, the ingress's request; every other span's parent is in the trace."""
    ids = {s["span_id"] for s in spans}
    roots = [s for s in spans if s["parent_span_id"] not in ids]
    assert [(r["name"], r["kind"], r["service"]) for r in roots] == [(*root, "ingress")]
    assert all(s["status"] != "ERROR" for s in spans), spans
    return roots[0]


def by_stage(spans: list[Span], stage: str) -> list[Span]:
    return [s for s in spans if s["attributes"].get("soma.stage") == stage]


async def test_a_turn_is_one_trace_with_a_span_per_stage(traced: tuple[Mesh, Path]) -> None:
    mesh, directory = traced
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as client:
        events = await turn(client, message="hello traces")
    assert events[-1].type == "assistant.final"
    turn_id = events[-1].turn_id

    spans = await trace_of(directory, turn_id, ["policy", "context", "llm", "persistence"])
    check_tree(spans)
    ns = mesh.env["KAFKA_NAMESPACE"]
    (send,) = [s for s in spans if s["kind"] == "PRODUCER"]
    assert (send["name"], send["service"]) == (f"send {ns}.turn.requested", "ingress")
    chain = [send]
    for stage, service, topic in [
        ("policy", "policy_worker", "turn.requested"),
        ("context", "context_worker", "turn.authorized"),
        ("llm", "llm_worker", "turn.contextualized"),
        ("persistence", "persistence_worker", "turn.completed"),
    ]:
        (span,) = by_stage(spans, stage)
        assert (span["name"], span["kind"], span["service"]) == (
            f"process {ns}.{topic}",
            "CONSUMER",
            service,
        )
        assert span["parent_span_id"] == chain[-1]["span_id"]  # written by the stage before
        assert span["attributes"]["messaging.consumer.group.name"] == f"{ns}.{stage}"
        chain.append(span)
    (chat,) = [s for s in spans if s["kind"] == "CLIENT"]
    assert (chat["name"], chat["parent_span_id"]) == ("chat fake", chain[3]["span_id"])
    attributes = chat["attributes"]
    assert (attributes["gen_ai.operation.name"], attributes["gen_ai.provider.name"]) == (
        "chat",
        "openai",
    )
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == "fake"
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    kinds = sorted(s["kind"] for s in spans if s["kind"] != "INTERNAL")
    assert kinds == ["CLIENT", "CONSUMER", "CONSUMER", "CONSUMER", "CONSUMER", "PRODUCER", "SERVER"]
    # Beside them only FastAPI's own spans of the request (its dependencies, its endpoint).
    assert {s["service"] for s in spans if s["kind"] == "INTERNAL"} <= {"ingress"}
    timings = [(s["service"], s["name"], s["duration_ms"]) for s in spans]
    print("one turn's trace:", *sorted(timings, key=lambda t: t[0]), sep="\n  ")


async def test_a_tool_round_is_in_the_same_trace(traced: tuple[Mesh, Path], fake_llm: str) -> None:
    mesh, directory = traced
    await mesh.wait_group_members("tools")
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30) as client:
        await profile(client, mesh, "calc", "openai/fake:tool", fake_llm)
        events = await turn(client, "calc", message="what is 6*7?")
    assert events[-1].type == "assistant.final"

    stages = ["policy", "context", "llm", "tools", "llm", "persistence"]
    spans = await trace_of(directory, events[-1].turn_id, stages)
    check_tree(spans)
    first, second = sorted(by_stage(spans, "llm"), key=lambda s: s["start_ns"])
    (tools,) = by_stage(spans, "tools")
    assert tools["parent_span_id"] == first["span_id"]
    assert second["parent_span_id"] == tools["span_id"]
    chats = sorted((s for s in spans if s["kind"] == "CLIENT"), key=lambda s: s["start_ns"])
    assert [c["parent_span_id"] for c in chats] == [first["span_id"], second["span_id"]]
    finish = [c["attributes"]["gen_ai.response.finish_reasons"] for c in chats]
    assert finish == [["tool_calls"], ["stop"]]


async def test_each_turn_over_a_websocket_is_a_trace_of_its_own(traced: tuple[Mesh, Path]) -> None:
    mesh, directory = traced
    url = mesh.base_url.replace("http", "ws") + f"/v1/session/s-{uuid.uuid4().hex}/stream"
    turn_ids = []
    async with connect(url) as ws, asyncio.timeout(30):
        for message in ("first", "second"):
            await ws.send(json.dumps({"message": message}))
            frames = [json.loads(await ws.recv())]
            while frames[-1]["type"] not in ("assistant.final", "error"):
                frames.append(json.loads(await ws.recv()))
            assert frames[-1]["type"] == "assistant.final"
            turn_ids.append(frames[0]["event_id"])

    ns = mesh.env["KAFKA_NAMESPACE"]
    traces = set()
    for turn_id in turn_ids:
        spans = await trace_of(directory, turn_id, ["policy", "context", "llm", "persistence"])
        check_tree(spans, root=(f"send {ns}.turn.requested", "PRODUCER"))
        traces.add(spans[0]["trace_id"])
    assert len(traces) == 2
