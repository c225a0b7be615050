"""Maps errors to HTTP responses: the one place that does."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gateway_runtime.errors import DependencyUnavailable

log = logging.getLogger(__name__)


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
    message = "; ".join(_describe(e) for e in errors)
    return JSONResponse(
        status_code=422,
        content={"detail": {"code": "invalid_request", "message": message, "errors": errors}},
    )


async def _unavailable(request: Request, exc: DependencyUnavailable) -> JSONResponse:
    log.warning("dependency unavailable: %s", exc)
    return JSONResponse(
        status_code=503,
        content={"detail": {"code": "unavailable", "message": str(exc)[:300]}},
        headers={"Retry-After": "5"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return JSONResponse(
        status_code=500,
        content={"detail": {"code": "internal_error", "message": "internal error; see logs"}},
    )


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types every handler as taking `Exception`; these take the subclass they
    # are registered for, which is what Starlette hands them.
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(DependencyUnavailable, _unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
