"""`WS /v1/session/{session_id}/stream`: the session's events, and turns started over it.

Server → client: one JSON text frame per event, `{id, type, session_id, turn_id, ts,
data}` (the same events, ids and order as the SSE stream). Client → server:
`{"message": ..., "persona_id"?, "metadata"?}` or `{"action": ...}` starts a turn and is
answered with `{"type": "turn.requested", "event_id": ...}`; a bad frame is answered with
an `error` frame and the socket stays open. `?last_event_id=` resumes like Last-Event-ID
(one the gateway never issues: 400 before the handshake).

Limits: a client frame over WS_MAX_FRAME_BYTES closes the socket with 1009 (uvicorn
enforces it while reading, `ingress/__main__.py`; checked here too, whatever the server);
a binary frame with 1003. The socket holds a lease of its principal's
(ingress/streams.py): over the cap the handshake is 429 `too_many_streams`, and a
revocation of its key closes it with 1008 `key_revoked`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from gateway_runtime.errors import DependencyUnavailable
from ingress.auth.admission import Admission
from ingress.auth.errors import Denied
from ingress.deps import Principal, ResourcesDep, SessionReadAccess
from ingress.events import valid_event_id
from ingress.resources import Resources
from ingress.routes.session import (
    ACTIONS,
    SESSION_ID,
    ActionIn,
    MessageIn,
    SessionIdPath,
    invalid_last_event_id,
)
from ingress.streams import StreamLease
from ingress.turns import NewTurn, start_turn

router = APIRouter(tags=["session"])


async def _send_events(
    ws: WebSocket, res: Resources, session_id: str, last_event_id: str | None, lease: StreamLease
) -> None:
    keepalive_s = res.settings.sse_keepalive_s
    async for item in res.events.follow(session_id, last_event_id, keepalive_s, lease):
        if item is not None:
            await ws.send_text(item.ws_text())
    if lease.closed.done():  # the receive loop then sees the client's close
        await ws.close(code=1008, reason=lease.closed.result())


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
    body: MessageIn | ActionIn = (
        ActionIn.model_validate(raw) if "action" in raw else MessageIn.model_validate(raw)
    )
    if isinstance(body, ActionIn) and body.action not in ACTIONS:
        raise ValueError(f"unknown action {body.action!r}; one of {', '.join(ACTIONS)}")
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
