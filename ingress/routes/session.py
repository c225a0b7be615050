"""Session turns: post a message or an action, follow the session's events (SSE, WS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ingress.auth.admission import Admission
from ingress.deps import AdmissionDep, ResourcesDep, SessionReadAccess
from ingress.events import valid_event_id
from ingress.resources import Resources
from ingress.turns import request_turn

router = APIRouter(prefix="/v1/session", tags=["session"])

SESSION_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
ACTIONS = ("summarize", "next_steps", "status_report")
SessionIdPath = Annotated[str, Path(pattern=SESSION_ID)]


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    session_id: str | None = Field(None, pattern=SESSION_ID)
    persona_id: str | None = Field(None, min_length=1, max_length=128)
    message: str = Field(min_length=1, max_length=32_000)
    attachments: list[Annotated[str, Field(max_length=2048)]] = Field(
        default_factory=list, max_length=16
    )
    metadata: dict[
        Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=1024)]
    ] = Field(default_factory=dict, max_length=32)


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    session_id: str | None = Field(None, pattern=SESSION_ID)
    persona_id: str | None = Field(None, min_length=1, max_length=128)
    action: str = Field(min_length=1, max_length=64)
    metadata: dict[
        Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=1024)]
    ] = Field(default_factory=dict, max_length=32)


class TurnAccepted(BaseModel):
    session_id: str
    event_id: str


async def _request_turn(
    res: Resources,
    admission: Admission,
    body: MessageIn | ActionIn,
    message: str,
    action: str | None,
) -> TurnAccepted:
    # Rate limits and the session claim first: a refused turn is never published.
    session_id = await admission.admit(body.session_id, body.persona_id, message)
    event = await request_turn(
        res,
        admission.principal,
        session_id=session_id,
        message=message,
        action=action,
        persona_id=body.persona_id,
        attachments=getattr(body, "attachments", None),
        metadata=body.metadata,
    )
    return TurnAccepted(session_id=event.session_id, event_id=event.event_id)


DENIALS: dict[int | str, dict[str, str]] = {
    401: {"description": "missing, bad or revoked credentials (WWW-Authenticate)"},
    403: {"description": "the credentials lack the `turns` scope"},
    404: {"description": "the session belongs to another tenant"},
    429: {"description": "a rate limit (RPM/TPM per key or tenant); see Retry-After"},
    503: {"description": "authorization or rate limiting cannot be decided now"},
}


@router.post("/message", status_code=202, response_model=TurnAccepted, responses=DENIALS)
async def post_message(body: MessageIn, res: ResourcesDep, admission: AdmissionDep) -> TurnAccepted:
    """Start a turn; follow it on the session's event stream."""
    return await _request_turn(res, admission, body, body.message, None)


@router.post("/action", status_code=202, response_model=TurnAccepted, responses=DENIALS)
async def post_action(body: ActionIn, res: ResourcesDep, admission: AdmissionDep) -> TurnAccepted:
    """Run a session action (summarize, next_steps, status_report) as a turn."""
    if body.action not in ACTIONS:
        raise HTTPException(
            400,
            detail={
                "code": "unknown_action",
                "message": f"unknown action {body.action!r}; one of {', '.join(ACTIONS)}",
            },
        )
    return await _request_turn(res, admission, body, "", body.action)


@router.get("/{session_id}/events", response_class=StreamingResponse, responses=DENIALS)
async def session_events(
    session_id: SessionIdPath,
    res: ResourcesDep,
    principal: SessionReadAccess,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events of the session: every retained event, or those after Last-Event-ID."""
    if last_event_id is not None and not valid_event_id(last_event_id):
        raise HTTPException(
            400,
            detail={
                "code": "invalid_last_event_id",
                "message": "Last-Event-ID must be an id this stream sent",
            },
        )

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        async for item in res.events.follow(
            session_id, last_event_id, res.settings.sse_keepalive_s
        ):
            if item is None:
                yield b": keep-alive\n\n"
            else:
                yield item.sse

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
