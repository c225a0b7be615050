"""A SERVER span per HTTP request, the root of a turn's trace (gateway_runtime/tracing.py).

Installed only when tracing is on (ingress/app.py), so it costs nothing otherwise. FastAPI
from 0.16x opens such a span itself once a tracer provider is set (with child spans for
dependencies and the endpoint): then this one stands aside, and it only opens its own
under an older FastAPI. A client that sends a W3C `traceparent` gets the turn in its own
trace. The span is named `<method> <route>` (`POST /v1/session/message`) with the HTTP
semantic conventions' attributes; a 5xx answer marks it as an error.

A WebSocket connection lives long and starts many turns: each turn started over it is a
trace of its own, rooted at the ingress's PRODUCER span (linked to the connection's span,
FastAPI's), instead of every turn of the connection gathering in one trace.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway_runtime import tracing
from ingress.request_metrics import UNMATCHED, route_of

_PROPAGATOR = TraceContextTextMapPropagator()
_CARRIED = (b"traceparent", b"tracestate")


class RequestSpan:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = tracing.tracer()
        if tracer is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            with tracing.turns_start_traces():
                await self.app(scope, receive, send)
            return
        if trace.get_current_span().get_span_context().is_valid:  # FastAPI's own span
            await self.app(scope, receive, send)
            return
        carrier = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in _CARRIED}
        method = scope["method"]
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
        }
        with tracer.start_as_current_span(
            method,
            context=_PROPAGATOR.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:

            async def send_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                route = route_of(scope)
                if route != UNMATCHED:
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")
