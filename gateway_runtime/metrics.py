"""Prometheus metrics shared by the stages (the ingress adds its own HTTP ones)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

STAGE_EVENTS = Counter(
    "soma_stage_events_total", "Events a stage finished, by outcome", ["stage", "outcome"]
)
STAGE_SECONDS = Histogram(
    "soma_stage_handle_seconds",
    "Time a stage spent on one event, retries included",
    ["stage"],
    # Fine below 50 ms: the benchmark reads a stage's own time from here (bench/).
    buckets=(
        *(ms / 1000 for ms in (0.5, 1, 1.5, 2, 3, 4, 5, 6.5, 8, 10, 12.5, 15, 20, 25, 30, 40)),
        *(0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    ),
)
STAGE_RETRIES = Counter("soma_stage_retries_total", "Retried handler attempts", ["stage"])
DEAD_LETTERS = Counter(
    "soma_dead_letters_total", "Events sent to the dead-letter topic", ["stage", "error_type"]
)
DEAD_LETTER_FAILURES = Counter(
    "soma_dead_letter_failures_total",
    "Failed tries to write a dead letter (its partition's commits wait meanwhile)",
    ["stage"],
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on a side port (workers have no HTTP server of their own)."""
    if port:
        start_http_server(port, addr=host)
