"""What tracing costs a stage per record: off (the default), and on.

`PYTHONPATH=. python -m bench.trace_overhead [--records N]` times, per record, what the
stage loop does for traces around a handler (gateway_runtime/tracing.py `stage_span`, and
encoding one output with the trace headers), against what it did before traces existed
(one `trace-id` header look-up, encoding with it). Tracing on is measured with the `jsonl`
exporter (a file write per span, the tests' exporter) and with `otlp` (spans queued for a
batch exporter's thread; the collector's address is closed, and the run is shorter than
one batch interval, so this is the cost on the event loop alone).
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway_runtime import tracing
from gateway_runtime.settings import CommonSettings
from schemas.codec import Codec, header
from schemas.events import TurnRequested

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class Record:
    topic: str = "soma.turn.requested"
    partition: int = 0
    offset: int = 0
    key: bytes | None = b"session-1"
    value: bytes | None = b""
    headers: list[tuple[str, bytes]] | None = None


def per_record_us(step: Callable[[int], None], records: int) -> float:
    """The best of 7 runs, in microseconds per record (the best: the machine is shared)."""
    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        for i in range(records):
            step(i)
        best = min(best, time.perf_counter() - started)
    return best / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args()
    codec = Codec()
    event = TurnRequested(event_id="e1", session_id="s1", message="hi", created_at_ms=1)
    headers = [*codec.encode(event, traceparent=TRACEPARENT).headers]
    records = [Record(offset=i) for i in range(args.records)]

    def before(i: int) -> None:  # what the stage loop did for traces before: one look-up
        header(headers, "trace-id")

    def span(i: int) -> None:  # what it does now
        with tracing.stage_span("policy", records[i], headers) as trace:
            pass
        trace.headers()

    rows = [
        ("encode an output, trace-id only", per_record_us(lambda i: codec.encode(event), 5000)),
        (
            "encode an output, + traceparent",
            per_record_us(lambda i: codec.encode(event, traceparent=TRACEPARENT), 5000),
        ),
        ("trace-id look-up (before traces)", per_record_us(before, args.records)),
        ("stage_span, tracing off", per_record_us(span, args.records)),
    ]
    with tempfile.TemporaryDirectory() as directory:
        with socket.socket() as closed:  # a port nothing listens on
            closed.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        for name, settings in [
            ("stage_span, tracing on, jsonl", dict(otel_traces_exporter="jsonl")),
            ("stage_span, tracing on, otlp (queued)", dict(otel_exporter_otlp_endpoint=endpoint)),
        ]:
            tracing.configure(CommonSettings(traces_jsonl_dir=Path(directory), **settings))
            # 7 runs of 250 spans stay within the batch queue (2048): none is dropped.
            rows.append((name, per_record_us(span, 250)))
            tracing.shutdown()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'per record':40} {'us':>8}")
    for name, us in rows:
        print(f"{name:40} {us:8.2f}")


if __name__ == "__main__":
    main()
