"""The ingress's request latency: `http_server_request_duration_seconds`, after the
OpenTelemetry HTTP metric `http.server.request.duration` (its name, buckets and labels).

A plain ASGI middleware (no per-request objects beyond a closure) that times each HTTP
request from its arrival to the last byte of its response. `http_route` is the route's
template (`/v1/session/{session_id}/events`), never the raw path: a scan of made-up paths
must not grow the label set, so a request no route matched is `other`, and a method
outside the standard ones is `_OTHER`. The SSE endpoint sits in front of this middleware
(ingress/app.py): a stream's duration is how long a client stayed, not a latency.
"""

from __future__ import annotations

import time

from prometheus_client import Histogram
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_SECONDS = Histogram(
    "http_server_request_duration_seconds",
    "Time from a request's arrival to the end of its response (ingress)",
    ["http_request_method", "http_route", "http_response_status_code"],
    # OpenTelemetry's advice for http.server.request.duration
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10),
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "PATCH"})
UNMATCHED = "other"


def route_of(scope: Scope) -> str:
    """The template of the route that served the request (Starlette's router leaves the
    route in the scope), or `other`."""
    route = scope.get("route")
    if isinstance(route, BaseRoute):
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
    return UNMATCHED


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before it answers

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            method = scope.get("method", "")
            REQUEST_SECONDS.labels(
                method if method in METHODS else "_OTHER", route_of(scope), str(status)
            ).observe(time.perf_counter() - started)
