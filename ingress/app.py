"""The ingress application factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway_runtime import tracing
from gateway_runtime.settings import IngressSettings
from ingress.body_limit import BodyLimitMiddleware
from ingress.deadline import AcceptDeadline
from ingress.errors import install_error_handlers
from ingress.host_check import HostCheckMiddleware
from ingress.metrics import refresh_gauges
from ingress.openapi_responses import install_openapi
from ingress.request_metrics import RequestMetrics
from ingress.request_span import RequestSpan
from ingress.resources import open_resources
from ingress.routes import (
    capsules,
    chat_completions,
    health,
    keys,
    model_profiles,
    models,
    requeue,
    responses,
    route,
    session,
    stream,
)

# Starting a turn answers within TURN_ACCEPT_DEADLINE_S (ingress/deadline.py).
TURN_PATHS = frozenset({"/v1/session/message", "/v1/session/action"})
# (Not the OpenAI routes: their answer is the turn's outcome, which takes longer than
# accepting it; they bound the acceptance with the same deadline inside the route.)


def create_app(settings: IngressSettings | None = None) -> FastAPI:
    settings = settings or IngressSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_resources(settings) as resources:
            app.state.resources = resources
            yield

    app = FastAPI(title="Soma Gateway", version="0.1.0", lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AcceptDeadline, paths=TURN_PATHS, deadline_s=settings.turn_accept_deadline_s)
    # Request latency (ingress/request_metrics.py), inside the SSE endpoint: not streams.
    app.add_middleware(RequestMetrics)
    # SSE ahead of the router (and inside the Host check): an idle stream's memory is
    # mostly the layers it is held in (ingress/routes/stream.py).
    app.add_middleware(stream.SessionEventsEndpoint)
    if tracing.enabled():  # a SERVER span per request, inside the Host check
        app.add_middleware(RequestSpan)
    if settings.allowed_hosts is not None:  # outermost: a foreign Host reaches nothing else
        app.add_middleware(
            HostCheckMiddleware,
            allowed=settings.allowed_hosts,
            check_origin=not settings.gateway_require_auth,  # with auth off: Origin too
        )
    install_error_handlers(app)
    install_openapi(app, auth_optional=not settings.gateway_require_auth)
    app.include_router(health.router)
    app.include_router(session.router)
    app.include_router(stream.router)
    app.include_router(model_profiles.router)
    app.include_router(route.router)
    app.include_router(keys.router)
    app.include_router(capsules.router)
    app.include_router(requeue.router)
    app.include_router(chat_completions.router)
    app.include_router(models.router)
    app.include_router(responses.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        await refresh_gauges(app.state.resources)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
