"""Response tables for the OpenAPI document: every status an operation can answer, each
with the error body it has (ingress/error_model.py), and the security it accepts.

Routes declare what is theirs with `errors(...)` (a 404 for an unknown profile, a 409,
a 502 of the capsule registry). What every operation can answer, whoever it is, is added
to every operation by `finish_document`, because it comes from layers around the routes:
- 421 `host_not_allowed` (ingress/host_check.py, when GATEWAY_ALLOWED_HOSTS applies) and
  500 `internal_error` (ingress/errors.py), on every operation;
- 413 `body_too_large` (ingress/body_limit.py) on every method with a body;
- 401, 403, 429 (failed authentications, ingress/auth/throttle.py) and 503 (JWKS or
  OpenFGA unreachable) on every operation that takes credentials; /v1/health checks
  credentials when some are sent, so it has them too;
- 422 `invalid_request` with `errors` for request validation, in place of FastAPI's
  default `HTTPValidationError`; on the OpenAI paths a validation error is a 400 in
  OpenAI's shape (ingress/errors.py), so there is no 422 there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ingress.error_model import ErrorResponse, OpenAIErrorResponse
from ingress.openai.errors import is_openai_path
from schemas.stream_events import SESSION_EVENT_TYPES

DESCRIPTIONS: dict[int, str] = {
    400: "a request the gateway cannot take (the error's `code` says why)",
    401: "missing, bad or revoked credentials (WWW-Authenticate)",
    403: "the credentials lack the scope this needs, or policy refused it",
    404: "no such resource that the caller may see",
    409: "the resource's state does not allow this",
    413: "the request body exceeds MAX_BODY_BYTES (`body_too_large`)",
    421: "a Host this gateway does not answer for (`host_not_allowed`, GATEWAY_ALLOWED_HOSTS)",
    422: "the request does not match this document (`invalid_request`; `errors` lists why)",
    429: "a rate limit, a stream cap or too many failed authentications; see Retry-After",
    500: "an unexpected error (`internal_error`); see the gateway's log",
    502: "an upstream did not answer",
    503: "a dependency cannot be reached or cannot decide now; see Retry-After",
    504: "an upstream did not answer in time",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": 'the Bearer challenge (RFC 6750), e.g. `Bearer realm="soma"`',
        "required": True,
        "schema": {"type": "string"},
    }
}
SECURITY_SCHEMES: dict[str, Any] = {
    "ApiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key, `Authorization: Bearer sk_...` (POST /v1/keys makes one)",
    },
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "an API key in `X-API-Key` (when there is no Authorization header)",
    },
    "Jwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "a JWT of the configured issuer (JWT_ISSUER, JWKS or HS256)",
    },
}
SECURED: list[dict[str, list[str]]] = [{"ApiKey": []}, {"ApiKeyHeader": []}, {"Jwt": []}]
OPEN_PATHS = frozenset({"/v1/health"})  # anyone may ask; credentials sent are checked
BODY_METHODS = frozenset({"post", "put", "patch", "delete"})


def _ref(openai: bool) -> dict[str, str]:
    name = OpenAIErrorResponse.__name__ if openai else ErrorResponse.__name__
    return {"$ref": f"#/components/schemas/{name}"}


def error_entry(
    status: int, description: str | None = None, *, openai: bool = False
) -> dict[str, Any]:
    """One status's entry: its description, the error body and the headers it carries."""
    entry: dict[str, Any] = {
        "description": description or DESCRIPTIONS.get(status, "an error"),
        "content": {"application/json": {"schema": _ref(openai)}},
    }
    if status in (429, 503):
        entry["headers"] = dict(RETRY_AFTER)
    elif status == 401 and not openai:
        entry["headers"] = dict(WWW_AUTHENTICATE)
    return entry


def errors(*statuses: int, openai: bool = False, **described: str) -> dict[int | str, Any]:
    """A route's own error statuses for `responses=`; `described` overrides a status's
    description by name, e.g. `errors(404, 409, s404="no profile role/mode")`."""
    notes = {int(k.removeprefix("s")): v for k, v in described.items()}
    return {s: error_entry(s, notes.get(s), openai=openai) for s in statuses}


def openai_turn_errors(*, s400: str, s404: str, s504: str) -> dict[int | str, Any]:
    """The statuses a turn on an OpenAI-compatible path (chat completions, responses) can
    answer; the two differ only in what a 400, a 404 and a 504 mean."""
    return errors(
        400,
        401,
        403,
        404,
        429,
        500,
        502,
        503,
        504,
        openai=True,
        s400=s400,
        s401="missing, bad or revoked credentials (also a key revoked during the request)",
        s403="the key lacks `turns`, or policy refused the turn or the model",
        s404=s404,
        s429="a rate limit, the token budget or the stream cap; see Retry-After",
        s500="a stage failed the turn (`stage_failed`), or an unexpected error",
        s502="no model deployment answered, or it failed mid-answer",
        s503="the turn could not be accepted, or decided, now; see Retry-After",
        s504=s504,
    )


def sse(description: str, event_types: Iterable[str]) -> dict[str, Any]:
    """A `text/event-stream` content entry naming the event types the stream carries."""
    types = list(event_types)
    return {
        "text/event-stream": {
            "schema": {
                "type": "string",
                "description": description + " Event types: " + ", ".join(types) + ".",
            },
            "x-event-types": types,
        }
    }


SESSION_SSE = sse(
    "Server-sent events, `event: <type>`, `id: <event id>`, `data: {type, session_id,"
    " turn_id, ts, data}` (docs/events.md); `: keep-alive` comments while idle.",
    SESSION_EVENT_TYPES,
)


def _common(method: str, path: str, op: Mapping[str, Any]) -> list[int]:
    statuses = [421, 500]
    if method in BODY_METHODS:
        statuses.append(413)
    statuses += [401, 403, 429, 503]  # credentials (when sent, for an open route)
    if "422" in op.get("responses", {}) or op.get("parameters") or op.get("requestBody"):
        statuses.append(400 if is_openai_path(path) else 422)
    return statuses


def finish_document(document: dict[str, Any], *, auth_optional: bool) -> dict[str, Any]:
    """The document FastAPI built, completed: the error models, the statuses every
    operation shares, the security schemes and each operation's security."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (ErrorResponse, OpenAIErrorResponse):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, item in document.get("paths", {}).items():
        openai = is_openai_path(path)
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            if openai:
                responses.pop("422", None)
            elif "422" in responses:
                responses["422"] = error_entry(422, responses["422"].get("description"))
            for status in _common(method, path, op):
                if str(status) not in responses:
                    responses[str(status)] = error_entry(status, openai=openai)
            for code, entry in responses.items():
                # A route's own error status, described but not given a body yet:
                if code.isdigit() and code[0] in "45" and "content" not in entry:
                    entry.update(error_entry(int(code), entry.get("description"), openai=openai))
            if path in OPEN_PATHS:
                op["security"] = [{}, *SECURED]
            else:
                op["security"] = ([{}] if auth_optional else []) + SECURED
    return document


def install_openapi(app: FastAPI, *, auth_optional: bool) -> None:
    """`app.openapi()` answers the finished document (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = finish_document(document, auth_optional=auth_optional)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
