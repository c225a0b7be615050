"""Denials as HTTP answers: a machine-readable code and a message for a person.

`Denied` is an HTTPException, so FastAPI renders it as
`{"detail": {"code", "message"[, "retry_after_s"]}}` with its status and headers; the
WebSocket route can catch it and send the same detail as an `error` frame.
"""

from __future__ import annotations

import math

from fastapi import HTTPException


class Denied(HTTPException):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        detail: dict[str, object] = {"code": code, "message": message}
        all_headers = dict(headers or {})
        if retry_after is not None:
            seconds = max(1, math.ceil(retry_after))
            detail["retry_after_s"] = seconds
            all_headers["Retry-After"] = str(seconds)
        super().__init__(status, detail=detail, headers=all_headers or None)
        self.code = code
        self.message = message


def unauthenticated(code: str, message: str) -> Denied:
    challenge = f'Bearer realm="soma", error="invalid_token", error_description="{code}"'
    if code == "missing_credentials":
        challenge = 'Bearer realm="soma"'
    return Denied(401, code, message, headers={"WWW-Authenticate": challenge})


def forbidden(code: str, message: str) -> Denied:
    return Denied(403, code, message)


def not_found(code: str, message: str) -> Denied:
    return Denied(404, code, message)


def unavailable(code: str, message: str, retry_after: float = 5) -> Denied:
    return Denied(503, code, message, retry_after=retry_after)
