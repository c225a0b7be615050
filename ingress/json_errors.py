"""An error answered by an ASGI middleware, in the body the routes' errors have.

Middlewares (ingress/host_check.py, body_limit.py, deadline.py) answer before FastAPI
runs, so its exception handlers cannot render them: this sends the same
`{"detail": {"code", "message"[, "retry_after_s"]}}` (ingress/error_model.py) by hand;
on the OpenAI paths, OpenAI's `{"error": {...}}`, as their routes' errors.
"""

from __future__ import annotations

import json

from starlette.types import Scope, Send

from ingress.openai.errors import OpenAIError, is_openai_path


async def send_json_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    *,
    retry_after_s: int | None = None,
) -> None:
    """Answer the request with `status` and the error `code` (a client's machine reads
    it) and `message` (a person does); Retry-After too when `retry_after_s` is given."""
    detail: dict[str, object] = {"code": code, "message": message}
    headers = [(b"content-type", b"application/json")]
    if retry_after_s is not None:
        detail["retry_after_s"] = retry_after_s
        headers.append((b"retry-after", str(retry_after_s).encode()))
    if is_openai_path(scope.get("path", "")):
        body = json.dumps(OpenAIError(status, message, code=code).body()).encode()
    else:
        body = json.dumps({"detail": detail}).encode()
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
