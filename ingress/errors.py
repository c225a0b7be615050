"""Maps errors to HTTP responses: the one place that does."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from gateway_runtime.errors import DependencyUnavailable
from ingress.openai.errors import OpenAIError, from_detail, is_openai_path

log = logging.getLogger(__name__)
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
    message = "; ".join(_describe(e) for e in errors)
    if is_openai_path(request.url.path):
        first = errors[0]["loc"] if errors else []
        param = ".".join(str(p) for p in first if p != "body") or None
        return OpenAIError(400, message, code="invalid_request", param=param).response()
    return JSONResponse(
        status_code=422,
        content={"detail": {"code": "invalid_request", "message": message, "errors": errors}},
    )


async def _unavailable(request: Request, exc: DependencyUnavailable) -> JSONResponse:
    log.warning("dependency unavailable: %s", exc)
    if is_openai_path(request.url.path):
        return OpenAIError(
            503, str(exc)[:300], code="unavailable", headers={"Retry-After": "5"}
        ).response()
    return JSONResponse(
        status_code=503,
        content={"detail": {"code": "unavailable", "message": str(exc)[:300]}},
        headers={"Retry-After": "5"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    if is_openai_path(request.url.path):
        return OpenAIError(500, "internal error; see logs", code="internal_error").response()
    return JSONResponse(
        status_code=500,
        content={"detail": {"code": "internal_error", "message": "internal error; see logs"}},
    )


def _slug(status: int) -> str:
    """Starlette's own errors (404 of an unknown path, 405) carry a reason phrase only:
    their code is the phrase as a name, `not_found`, `method_not_allowed`."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


def _allowed_methods(request: Request) -> str | None:
    """Every method the path is served for. Starlette's 405 names those of the first
    route whose path matched; FastAPI makes a route per method, so that is one of them.
    (Asked of the router per method: FastAPI nests the routers it includes.)"""
    routes = request.app.router.routes
    methods = [
        method
        for method in HTTP_METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]
    return ", ".join(methods) or None


async def _http(request: Request, exc: HTTPException) -> Response:
    """Denials and other HTTP errors: OpenAI's shape on its paths, the gateway's elsewhere
    (ingress/error_model.py), whatever the detail was raised with (a string too)."""
    if exc.status_code == 405 and (allow := _allowed_methods(request)):
        exc.headers = {**(exc.headers or {}), "Allow": allow}
    if exc.status_code in (204, 304):  # no body allowed
        return await http_exception_handler(request, exc)
    detail: Any = exc.detail
    if not (isinstance(detail, dict) and "code" in detail and "message" in detail):
        detail = {"code": _slug(exc.status_code), "message": str(detail)}
    if is_openai_path(request.url.path):
        return from_detail(exc.status_code, detail, dict(exc.headers or {})).response()
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


async def _openai(request: Request, exc: OpenAIError) -> JSONResponse:
    return exc.response()


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types every handler as taking `Exception`; these take the subclass they
    # are registered for, which is what Starlette hands them.
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(OpenAIError, _openai)  # type: ignore[arg-type]
    app.add_exception_handler(DependencyUnavailable, _unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
