"""Errors in OpenAI's shape on OpenAI's paths.

Clients generated for, or written against, the OpenAI API parse
`{"error": {"message", "type", "param", "code"}}`; the openai SDK maps the status to its
exception classes (400 BadRequestError, 401 AuthenticationError, 403 PermissionDenied,
404 NotFound, 429 RateLimitError, 5xx InternalServerError). So every error a route under
`OPENAI_PATHS` answers (validation, auth denials, dependency outages) takes that shape,
with the same status and headers (Retry-After, WWW-Authenticate) the gateway's own shape has.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

OPENAI_PATHS = ("/v1/chat/completions", "/v1/models", "/v1/responses")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def is_openai_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPENAI_PATHS)


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


class OpenAIError(Exception):
    """An error a route answers in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or error_type(status)
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_detail(status: int, detail: Any, headers: dict[str, str] | None = None) -> OpenAIError:
    """The gateway's own `{"code", "message"}` detail (or a plain string) in OpenAI's shape."""
    if isinstance(detail, dict):
        message = str(detail.get("message") or detail.get("code") or "error")
        code = detail.get("code")
        param = detail.get("param")
    else:
        message, code, param = str(detail), None, None
    if status == 429 and code in ("budget_exhausted", "insufficient_quota"):
        code = "insufficient_quota"
    return OpenAIError(
        400 if status == 422 else status,
        message,
        code=str(code) if code is not None else None,
        param=str(param) if param is not None else None,
        headers=headers,
    )
