"""The bodies every error answer has, as models the OpenAPI document declares.

The gateway's own API answers every error, whoever raises it (a route, an auth denial,
request validation, a middleware: body limit, Host check, accept deadline; Starlette's
own 404 and 405), as `{"detail": {"code", "message"[, "errors"][, "retry_after_s"]}}`:
`code` is for a client's machine, `message` for a person. The OpenAI-compatible paths
(ingress/openai/errors.py) answer OpenAI's `{"error": {...}}` instead, since the clients
written for that API parse it. Declaring both here lets a generated client parse every
error the document promises, and the contract test (tests/security/test_fuzz.py) holds
the gateway to them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ValidationIssue(BaseModel):
    """One reason a request failed validation (FastAPI's own error entry, trimmed)."""

    loc: list[str | int] = Field(
        description="where: `body`, `query`, `path` or `header`, then names"
    )
    msg: str
    type: str = Field(description="pydantic's error type, e.g. `missing`, `string_too_long`")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(
        description="machine-readable, e.g. `invalid_request`, `missing_credentials`, "
        "`insufficient_scope`, `rate_limited`, `unavailable`, `not_found`"
    )
    message: str = Field(description="for a person")
    errors: list[ValidationIssue] | None = Field(
        None, description="validation errors (422 `invalid_request`), one per problem"
    )
    retry_after_s: int | None = Field(
        None, description="with 429 and most 503s: the Retry-After header's seconds"
    )


class ErrorResponse(BaseModel):
    """Every error of the gateway's own API."""

    detail: ErrorDetail


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="`invalid_request_error`, `authentication_error`, ...")
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """Every error of the OpenAI-compatible paths (/v1/chat/completions, /v1/responses*,
    /v1/models*), in OpenAI's shape."""

    error: OpenAIErrorBody
