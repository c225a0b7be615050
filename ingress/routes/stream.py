"""The session's event streams: `GET /v1/session/{session_id}/events` (SSE) and
`WS /v1/session/{session_id}/stream`.

SSE is served by `SessionEventsEndpoint`, a plain ASGI endpoint in front of FastAPI's
router (ingress/app.py mounts it just inside the Host check), because an idle stream is
held for hours by thousands of clients and FastAPI's per-request machinery (the routing
and middleware frames, dependency exit stacks, `StreamingResponse` and its task group)
was most of what each one cost: 37 KB of a client's memory at 10,000 clients, and a
task wake-up through several layers per event per client. The endpoint does what the
route did, with the same functions: the session id's pattern (422), the caller and its
`turns` scope (401/403), `can_read` on the session (404; 503 when it cannot be
decided), Last-Event-ID (400), the lease (429); errors are rendered by the app's own
exception handlers (ingress/errors.py), so they read as every other route's. Each wake
writes whatever events wait, in one chunk; one small task per stream waits for the
client's disconnect. The operation stays documented in the OpenAPI schema by its stub in
ingress/routes/session.py.

WebSocket, server → client: one JSON text frame per event, `{id, type, session_id,
turn_id, ts, data}` (the same events, ids and order as the SSE stream). Client → server:
`{"message": ..., "persona_id"?, "metadata"?}` or `{"action": ...}` starts a turn and is
answered with `{"type": "turn.requested", "event_id": ...}`; a bad frame is answered with
an `error` frame and the socket stays open. `?last_event_id=` resumes like Last-Event-ID
(one the gateway never issues: 400 before the handshake).

Limits: a client frame over WS_MAX_FRAME_BYTES closes the socket with 1009 (uvicorn
enforces it while reading, `ingress/__main__.py`; checked here too, whatever the server);
a binary frame with 1003. Every stream holds a lease of its principal's
(ingress/streams.py): over the cap the request (or handshake) is 429
`too_many_streams`, and a revocation of its key ends an SSE stream with a last `error`
event `key_revoked` and closes a socket with 1008 `key_revoked`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway_runtime.errors import DependencyUnavailable
from ingress.auth.admission import Admission
from ingress.auth.errors import Denied
from ingress.auth.sessions import SESSION_ID_PATTERN
from ingress.deps import (
    Principal,
    ResourcesDep,
    SessionReadAccess,
    current_principal,
    require_scope,
    session_read_access,
)
from ingress.events import valid_event_id
from ingress.hub import SessionEvent
from ingress.resources import Resources
from ingress.routes.session import (
    ACTIONS,
    SESSION_ID,
    ActionIn,
    MessageIn,
    SessionIdPath,
    closing_event,
    invalid_last_event_id,
)
from ingress.streams import StreamLease
from ingress.turns import NewTurn, start_turn

router = APIRouter(tags=["session"])

# ---- SSE ------------------------------------------------------------------------------

_PREFIX, _SUFFIX = "/v1/session/", "/events"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_turns_scope = require_scope("turns")
_SSE_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass every event on at once
    (b"content-type", b"text/event-stream; charset=utf-8"),
]
_RETRY = b"retry: 2000\n\n"
_KEEPALIVE = b": keep-alive\n\n"


class SessionEventsEndpoint:
    """`GET /v1/session/{session_id}/events`; every other request goes on to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session_id = _session_of(scope) if scope["type"] == "http" else None
        if session_id is None or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        res: Resources = scope["app"].state.resources  # set by the lifespan (app.py)
        try:
            principal, last_event_id = await _admit(scope, res, session_id)
            lease = res.streams.open(principal)  # the last check: _stream gives it back
        except (HTTPException, RequestValidationError, DependencyUnavailable) as exc:
            await _refuse(scope, receive, send, exc)
            return
        try:
            await _stream(res, session_id, last_event_id, lease, receive, send)
        finally:
            res.streams.release(lease)


def _session_of(scope: Scope) -> str | None:
    """The session id if the path is `/v1/session/<one segment>/events` (the segment
    may be anything: `_admit` checks it), as Starlette's router would match it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    session_id = path[len(_PREFIX) : -len(_SUFFIX)]
    return session_id if session_id and "/" not in session_id else None


async def _admit(scope: Scope, res: Resources, session_id: str) -> tuple[Principal, str | None]:
    """The caller, if it may follow the session, and its Last-Event-ID; checked with the
    route's dependencies, in the order FastAPI ran them (credentials, scope, the path,
    can_read, Last-Event-ID)."""
    conn = HTTPConnection(scope)
    principal = await _turns_scope(await current_principal(conn, res))
    if not _SESSION_ID.fullmatch(session_id):
        raise RequestValidationError(
            [
                {
                    "type": "string_pattern_mismatch",
                    "loc": ("path", "session_id"),
                    "msg": f"String should match pattern '{SESSION_ID_PATTERN}'",
                    "input": session_id,
                }
            ]
        )
    principal = await session_read_access(session_id, res, principal)
    last_event_id = conn.headers.get("last-event-id")
    if last_event_id is not None and not valid_event_id(last_event_id):
        raise invalid_last_event_id()
    return principal, last_event_id


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """The error response the app's exception handler for `exc` gives (ingress/errors.py;
    FastAPI's own for HTTPException), as any route's."""
    handlers = scope["app"].exception_handlers
    handler = next(handlers[kind] for kind in type(exc).__mro__ if kind in handlers)
    response = await handler(Request(scope, receive), exc)
    await response(scope, receive, send)


async def _stream(
    res: Resources,
    session_id: str,
    last_event_id: str | None,
    lease: StreamLease,
    receive: Receive,
    send: Send,
) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    await send({"type": "http.response.body", "body": _RETRY, "more_body": True})
    # The server tells of a client that left only through `receive`; the stream ends then.
    gone = asyncio.get_running_loop().create_task(_until_disconnect(receive, lease))
    try:
        events = res.events.follow(session_id, last_event_id, res.settings.sse_keepalive_s, lease)
        async with contextlib.aclosing(events):
            async for batch in events:
                await send({"type": "http.response.body", "body": _chunk(batch), "more_body": True})
                del batch  # (an idle stream would hold its last batch: a whole replay)
        if lease.reason is not None:
            last = closing_event(session_id, lease.reason)
            await send({"type": "http.response.body", "body": last, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        gone.cancel()


def _chunk(batch: list[SessionEvent]) -> bytes:
    """The batch's frames in one write; an empty batch is a keep-alive comment."""
    if len(batch) == 1:
        return batch[0].sse
    return b"".join([event.sse for event in batch]) if batch else _KEEPALIVE


async def _until_disconnect(receive: Receive, lease: StreamLease) -> None:
    message: Message = await receive()  # a GET's (empty) body first
    while message["type"] != "http.disconnect":
        message = await receive()
    lease.client_gone()


# ---- WebSocket ------------------------------------------------------------------------


async def _send_events(
    ws: WebSocket, res: Resources, session_id: str, last_event_id: str | None, lease: StreamLease
) -> None:
    keepalive_s = res.settings.sse_keepalive_s
    async for batch in res.events.follow(session_id, last_event_id, keepalive_s, lease):
        for event in batch:  # (an empty batch is a keep-alive tick: WebSocket pings itself)
            await ws.send_text(event.ws_text())
    if lease.reason is not None:  # the receive loop then sees the client's close
        await ws.close(code=1008, reason=lease.reason)


async def _receive_frames(ws: WebSocket, res: Resources, principal: Principal, sid: str) -> None:
    """Turns from the client's frames, until it leaves or breaks a limit."""
    limit = res.settings.ws_max_frame_bytes
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        frame = message.get("text")
        if frame is None:
            await ws.close(code=1003, reason="text frames only")
            return
        if len(frame) > limit or len(frame.encode()) > limit:
            await ws.close(code=1009, reason=f"a frame may hold {limit} bytes at most")
            return
        await _start_turn(ws, res, principal, sid, frame)


def _turn_frame(frame: str, session_id: str) -> MessageIn | ActionIn:
    """A client's frame as the body POST /v1/session/message|action would take."""
    raw = json.loads(frame)
    if not isinstance(raw, dict):
        raise ValueError("a frame must be a JSON object")
    raw["session_id"] = session_id
    if "action" in raw and raw["action"] not in ACTIONS:
        raise ValueError(f"unknown action {raw['action']!r}; one of {', '.join(ACTIONS)}")
    body: MessageIn | ActionIn = (
        ActionIn.model_validate(raw) if "action" in raw else MessageIn.model_validate(raw)
    )
    return body


async def _start_turn(
    ws: WebSocket, res: Resources, principal: Principal, session_id: str, frame: str
) -> None:
    try:
        body = _turn_frame(frame, session_id)
    except (ValueError, ValidationError) as exc:
        message = str(exc).splitlines()[0][:300]
        await ws.send_json(
            {"type": "error", "data": {"code": "invalid_request", "message": message}}
        )
        return
    try:
        # The same way in as POST /v1/session/message, with the same deadline.
        turn = NewTurn(
            session_id=session_id,
            message=getattr(body, "message", ""),
            action=getattr(body, "action", None),
            persona_id=body.persona_id,
            attachments=list(getattr(body, "attachments", [])),
            metadata=body.metadata,
        )
        within = res.settings.turn_accept_deadline_s
        async with asyncio.timeout(within):
            accepted = await start_turn(
                res, Admission(principal, res.auth), turn, deadline=time.monotonic() + within
            )
    except Denied as exc:
        await ws.send_json({"type": "error", "data": exc.detail})
        return
    except (DependencyUnavailable, TimeoutError) as exc:
        await ws.send_json(
            {
                "type": "error",
                "data": {
                    "code": "unavailable",
                    "message": str(exc) or "the turn could not be accepted in time",
                    "retryable": True,
                },
            }
        )
        return
    await ws.send_json(
        {
            "type": "turn.requested",
            "session_id": session_id,
            "event_id": accepted.event_id,
            "queued": accepted.queued,
        }
    )


@router.websocket("/v1/session/{session_id}/stream")
async def session_stream(
    ws: WebSocket,
    session_id: SessionIdPath,
    res: ResourcesDep,
    principal: SessionReadAccess,
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
) -> None:
    if last_event_id is not None and not valid_event_id(last_event_id):
        raise invalid_last_event_id()  # before the handshake: an HTTP 400
    lease = res.streams.open(principal)  # 429 before the handshake
    try:
        await ws.accept()
        sender = asyncio.create_task(_send_events(ws, res, session_id, last_event_id, lease))
        try:
            await _receive_frames(ws, res, principal, session_id)
        except WebSocketDisconnect:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await sender
    finally:
        res.streams.release(lease)


__all__ = ["SESSION_ID", "router"]
