"""OpenTelemetry traces: one turn is one trace, from the ingress through every stage.

Off unless the standard OTEL_* settings turn it on (docs/configuration.md): then no SDK is
imported, no provider installed, and the helpers here cost a few header look-ups. On,
each process sends its spans to the exporters OTEL_TRACES_EXPORTER names.

How a turn's trace travels: every Kafka record of the mesh carries the W3C `traceparent`
header of the span that wrote it, beside the `trace-id` header the logs already use (the
same 32 hex digits). The ingress opens a SERVER span per request (ingress/request_span.py)
and a PRODUCER span around the turn's record; each stage handles a record inside a
CONSUMER span whose parent is that record's `traceparent`, and writes the records it
produces with its own. A retry of a record is another span of the same trace (attribute
`soma.attempt`), and so is a replay of a dead letter, which keeps its headers. A record
that has only `trace-id` (written before traces existed) joins that trace id. A process
with tracing off passes the headers it received through unchanged, so the processes that
trace still see one trace.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from gateway_runtime.settings import CommonSettings
from schemas.codec import Headers, header

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

    from gateway_runtime.ports import ConsumedRecord

INSTRUMENTATION = "soma-gateway"
EXPORT_DELAY_MS = 5000  # the OpenTelemetry SDK's default batch delay, for a collector
SPAN_FILE_DELAY_MS = 200  # a file or the console: soon enough for a person to follow
_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class _Tracing:
    tracer: Tracer
    provider: TracerProvider
    namespace: str


_state: _Tracing | None = None  # set once per process by `configure`
# (topic, partition, offset) of the record this task handles, and how many tries so far.
_attempt: contextvars.ContextVar[tuple[tuple[str, int, int], int] | None] = contextvars.ContextVar(
    "soma_trace_attempt", default=None
)

# Set while a long-lived connection (a WebSocket) is handled: its turns are not its children.
_turns_are_roots: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "soma_turns_are_roots", default=False
)


@dataclass(frozen=True, slots=True)
class TraceHeaders:
    """What a record written now carries: `trace-id` (as before) and W3C `traceparent`.
    Both None: the codec starts a new trace id, as it did before traces existed."""

    trace_id: str | None = None
    traceparent: str | None = None

    def headers(self) -> dict[str, str | None]:
        """As `Codec.encode`'s keyword arguments."""
        return {"trace_id": self.trace_id, "traceparent": self.traceparent}


_NO_TRACE = TraceHeaders()


def exporters(settings: CommonSettings) -> list[str]:
    """The exporters the settings turn on; empty means tracing is off."""
    if settings.otel_sdk_disabled:
        return []
    if settings.otel_traces_exporter is None:  # unset: OTLP only where an endpoint is given
        endpoint = settings.otel_exporter_otlp_traces_endpoint
        return ["otlp"] if endpoint or settings.otel_exporter_otlp_endpoint else []
    names = [n.strip() for n in settings.otel_traces_exporter.split(",")]
    return [n for n in dict.fromkeys(names) if n and n != "none"]


def configure(settings: CommonSettings) -> bool:
    """Install the process's tracer provider if the settings turn tracing on; idempotent."""
    global _state
    names = exporters(settings)
    if _state is not None or not names:
        return _state is not None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    service = settings.otel_service_name or settings.service_name
    attributes: dict[str, Any] = _pairs(settings.otel_resource_attributes)
    attributes.update({"service.name": service, "service.instance.id": f"{service}-{os.getpid()}"})
    provider = TracerProvider(resource=Resource.create(attributes), sampler=_sampler(settings))
    for name in names:
        # Every exporter runs in the batch processor's thread: ending a span only queues
        # it, so no network or file write happens on the event loop.
        if name == "otlp":
            exporter: SpanExporter = _otlp_exporter(settings)
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:  # jsonl: on disk within SPAN_FILE_DELAY_MS (tests, a machine without a collector)
            from gateway_runtime.span_file import JsonLinesSpanExporter

            directory = settings.traces_jsonl_dir or settings.soma_home / "traces"
            exporter = JsonLinesSpanExporter(directory / f"{service}-{os.getpid()}.jsonl")
        delay = EXPORT_DELAY_MS if name == "otlp" else SPAN_FILE_DELAY_MS
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):  # once a process
        trace.set_tracer_provider(provider)  # for libraries that trace (LiteLLM's callbacks)
    _state = _Tracing(provider.get_tracer(INSTRUMENTATION), provider, settings.kafka_namespace)
    return True


def shutdown() -> None:
    """Flush and stop the exporters (at the end of the process); tracing is off after."""
    global _state
    if _state is not None:
        _state.provider.shutdown()
        _state = None


def flush() -> None:
    """Export every ended span now (the batch processors otherwise wait their delay)."""
    if _state is not None:
        _state.provider.force_flush()


def enabled() -> bool:
    return _state is not None


def tracer() -> Tracer | None:
    """The process's tracer, or None when tracing is off."""
    return _state.tracer if _state is not None else None


def stage_span(
    stage: str, record: ConsumedRecord, headers: Headers
) -> contextlib.AbstractContextManager[TraceHeaders]:
    """One try at handling `record` (a CONSUMER span, child of the record's writer);
    gives the trace headers of the records it produces. Off: the record's own."""
    if _state is None:
        passed_on = TraceHeaders(header(headers, "trace-id"), header(headers, "traceparent"))
        return contextlib.nullcontext(passed_on)
    return _stage_span(_state, stage, record, headers)


@contextlib.contextmanager
def _stage_span(
    state: _Tracing, stage: str, record: ConsumedRecord, headers: Headers
) -> Iterator[TraceHeaders]:
    where = (record.topic, record.partition, record.offset)
    previous = _attempt.get()
    attempt = previous[1] + 1 if previous is not None and previous[0] == where else 1
    _attempt.set((where, attempt))
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.consumer.group.name": f"{state.namespace}.{stage}",
        "messaging.message.id": header(headers, "event-id") or "",
        "messaging.kafka.message.key": (record.key or b"").decode("utf-8", "replace"),
        "soma.stage": stage,
        "soma.attempt": attempt,
        "soma.tenant": header(headers, "tenant") or "",
    }
    with state.tracer.start_as_current_span(
        f"process {record.topic}",
        context=parent_context(headers),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        yield _headers_of(span)


def producer_span(
    topic: str, message_id: str, key: str
) -> contextlib.AbstractContextManager[TraceHeaders]:
    """A PRODUCER span around writing a record that starts a turn (the ingress's), child
    of the current span (the request's) if any; gives the record's trace headers."""
    if _state is None:
        return contextlib.nullcontext(_NO_TRACE)
    return _producer_span(_state, topic, message_id, key)


@contextlib.contextmanager
def _producer_span(
    state: _Tracing, topic: str, message_id: str, key: str
) -> Iterator[TraceHeaders]:
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": topic,
        "messaging.message.id": message_id,
        "messaging.kafka.message.key": key,
    }
    parent, links = None, []
    if _turns_are_roots.get():  # a trace of its own, linked to the connection's span
        current = trace.get_current_span().get_span_context()
        parent, links = Context(), [trace.Link(current)] if current.is_valid else []
    with state.tracer.start_as_current_span(
        f"send {topic}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes, links=links
    ) as span:
        yield _headers_of(span)


@contextlib.contextmanager
def turns_start_traces() -> Iterator[None]:
    """Within it, each turn started is a trace of its own (its PRODUCER span the root, with
    a link to the current span): for a WebSocket, which lives long and starts many turns."""
    token = _turns_are_roots.set(True)
    try:
        yield
    finally:
        _turns_are_roots.reset(token)


def parent_context(headers: Headers) -> Context:
    """The context a record's handling continues: its `traceparent`, else its legacy
    `trace-id` (under a remote parent of a random id), else a new trace."""
    value = header(headers, "traceparent")
    if value:
        context = _PROPAGATOR.extract({"traceparent": value})
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    legacy = header(headers, "trace-id") or ""
    if len(legacy) == 32 and set(legacy) <= set("0123456789abcdef") and legacy.strip("0"):
        parent = SpanContext(
            int(legacy, 16),
            random.getrandbits(64) | 1,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(NonRecordingSpan(parent), Context())
    return Context()


def traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _headers_of(span: trace.Span) -> TraceHeaders:
    context = span.get_span_context()
    if not context.is_valid:
        return TraceHeaders()
    return TraceHeaders(f"{context.trace_id:032x}", traceparent(context))


def _pairs(text: str | None) -> dict[str, Any]:
    """`key=value,key=value` (values URL-encoded), as OTEL_* lists are written."""
    pairs: dict[str, Any] = {}
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


def _sampler(settings: CommonSettings) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    ratio = sampling.TraceIdRatioBased(settings.otel_traces_sampler_arg)
    return {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(ratio),
    }[settings.otel_traces_sampler]


def _otlp_exporter(settings: CommonSettings) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = settings.otel_exporter_otlp_traces_endpoint
    if endpoint is None:  # the generic endpoint is the collector's base URL
        base = settings.otel_exporter_otlp_endpoint or "http://localhost:4318"
        endpoint = base.rstrip("/") + "/v1/traces"
    secret = settings.otel_exporter_otlp_traces_headers or settings.otel_exporter_otlp_headers
    headers = _pairs(secret.get_secret_value()) if secret else {}
    return OTLPSpanExporter(endpoint=endpoint, headers=headers)
