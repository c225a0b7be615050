"""The errors ASGI middlewares answer themselves (ingress/json_errors.py) have the body and
headers of the routes' errors: here the accept deadline's 503 (ingress/deadline.py), which
the mesh tests cannot provoke without hanging Kafka, Postgres and OpenFGA at once."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from ingress.deadline import RETRY_AFTER_S, AcceptDeadline
from ingress.json_errors import send_json_error


async def _hangs(scope: Scope, receive: Receive, send: Send) -> None:
    """A turn route whose dependencies do not answer."""
    await asyncio.Event().wait()


async def test_a_missed_accept_deadline_is_a_503_with_retry_after() -> None:
    app = AcceptDeadline(_hangs, paths=frozenset({"/v1/session/message"}), deadline_s=0.05)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw"
    ) as client:
        r = await client.post("/v1/session/message", json={"message": "hi"})
    assert r.status_code == 503
    assert r.headers["retry-after"] == str(RETRY_AFTER_S)
    assert r.headers["content-length"] == str(len(r.content))
    detail = r.json()["detail"]
    assert detail["code"] == "accept_timeout" and detail["retry_after_s"] == RETRY_AFTER_S
    assert "Idempotency-Key" in detail["message"]


async def test_send_json_error_without_retry_after() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send_json_error(scope, send, 421, "host_not_allowed", "not here")

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw"
    ) as client:
        r = await client.get("/")
    assert r.status_code == 421 and "retry-after" not in r.headers
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": {"code": "host_not_allowed", "message": "not here"}}


async def test_send_json_error_on_an_openai_path_has_openais_shape() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send_json_error(scope, send, 413, "body_too_large", "too big")

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw"
    ) as client:
        r = await client.post("/v1/chat/completions", content=b"{}")
    assert r.status_code == 413
    assert r.json() == {
        "error": {
            "message": "too big",
            "type": "invalid_request_error",
            "param": None,
            "code": "body_too_large",
        }
    }
