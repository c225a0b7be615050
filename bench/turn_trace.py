"""What one turn's trace looks like: its spans, when each starts and how long it takes.

`PYTHONPATH=. python -m bench.turn_trace [--turns N]` starts a mesh in a sandbox of its
own (bench/run.py's stack: the fake upstream, 50 ms to the first of 20 tokens) with
`OTEL_TRACES_EXPORTER=jsonl` in every process, sends N turns one after another (the first
few warm the caches and are left out), joins each turn's spans from the processes' files
as a collector would, and prints the median start (from the request's) and duration of
each span: the table in docs/operations.md ("Traces"). `--show` prints one turn's spans.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.run import open_stack

Span = dict[str, Any]
WARMUP = 3


def read_spans(directory: Path) -> list[Span]:
    return [
        json.loads(line)
        for path in directory.glob("*.jsonl")
        for line in path.read_text().splitlines()
        if line.endswith("}")
    ]


async def one_turn(client: httpx.AsyncClient, directory: Path) -> list[Span]:
    """Post a turn; its spans, once the persistence stage's is on disk."""
    answer = await client.post(
        "/v1/session/message", json={"session_id": f"trace-{uuid.uuid4().hex}", "message": "hi"}
    )
    answer.raise_for_status()
    turn_id = answer.json()["event_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = read_spans(directory)
        mine = [s for s in spans if s["attributes"].get("messaging.message.id") == turn_id]
        if any(s["attributes"].get("soma.stage") == "persistence" for s in mine):
            trace_id = mine[0]["trace_id"]
            return [s for s in spans if s["trace_id"] == trace_id]
        await asyncio.sleep(0.05)
    raise TimeoutError(f"turn {turn_id}: no persistence span within 30 s")


def label(span: Span, namespace: str) -> str:
    return str(span["name"]).replace(f"{namespace}.", "")


async def measure(turns: int, show: bool) -> None:
    directory = Path(tempfile.mkdtemp(prefix="soma-traces-"))
    stack = await open_stack(
        purpose="traces", OTEL_TRACES_EXPORTER="jsonl", TRACES_JSONL_DIR=str(directory)
    )
    namespace = stack.mesh.env["KAFKA_NAMESPACE"]
    try:
        async with httpx.AsyncClient(base_url=stack.mesh.base_url, timeout=30) as client:
            traces = [await one_turn(client, directory) for _ in range(turns)]
    finally:
        await stack.close()
    rows: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for spans in traces[WARMUP:]:
        root = min(s["start_ns"] for s in spans)
        for s in spans:
            key = (s["service"], label(s, namespace), s["kind"])
            rows.setdefault(key, []).append(((s["start_ns"] - root) / 1e6, s["duration_ms"]))
    print(f"{len(traces) - WARMUP} turns (after {WARMUP} to warm up); spans in {directory}")
    print("| span | service | kind | starts at (ms) | takes (ms) |\n|---|---|---|---:|---:|")
    for (service, name, kind), values in sorted(rows.items(), key=lambda r: _median(r[1], 0)):
        start, took = _median(values, 0), _median(values, 1)
        print(f"| `{name}` | {service} | {kind} | {start:.1f} | {took:.1f} |")
    if show:
        for s in sorted(traces[-1], key=lambda s: s["start_ns"]):
            print(json.dumps(s))


def _median(values: list[tuple[float, float]], index: int) -> float:
    return statistics.median(v[index] for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=23)
    parser.add_argument("--show", action="store_true")
    args = parser.parse_args()
    asyncio.run(measure(args.turns, args.show))


if __name__ == "__main__":
    main()
