"""Session turns: post a message or an action, follow the session's events (SSE, WS).

A stream holds a lease of its principal's (ingress/streams.py): one over the cap is 429
`too_many_streams`, and a revocation of its key ends it with a last `error` event
`key_revoked` (no id, so a client's Last-Event-ID stays on the last real event).

The ingress writes nothing into a session's stream for a caller here: a refused turn is
an HTTP status, and the policy stage writes a turn's `error` events.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Header, HTTPException, Path, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ingress.auth.admission import Admission
from ingress.deadline import ACCEPT_DEADLINE
from ingress.deps import AdmissionDep, ResourcesDep
from ingress.idempotency import KEY_PATTERN
from ingress.openapi_responses import SESSION_SSE, errors
from ingress.resources import Resources
from ingress.turns import NewTurn, start_turn

router = APIRouter(prefix="/v1/session", tags=["session"])

SESSION_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
Action = Literal["summarize", "next_steps", "status_report"]
ACTIONS: tuple[str, ...] = get_args(Action)
# Last-Event-ID as the gateway issues it: `<ms>-<seq>` (Redis) or `pg-<n>` (fallback log).
EVENT_ID = r"^(?:[0-9]{1,20}-[0-9]{1,20}|pg-[0-9]{1,19})$"
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
    action: Action
    metadata: dict[
        Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=1024)]
    ] = Field(default_factory=dict, max_length=32)


class TurnAccepted(BaseModel):
    session_id: str
    event_id: str
    queued: bool = Field(
        False, description="Kafka is not answering: the turn waits in the outbox and starts then"
    )


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=KEY_PATTERN.pattern,
        description="retries with the same key (24 h) answer the same turn, never a second one",
    ),
]


def _deadline(request: Request, res: Resources) -> float:
    """When the answer is due (set by AcceptDeadline, else counted from now)."""
    due = request.scope.get("state", {}).get(ACCEPT_DEADLINE)
    return float(due) if due else time.monotonic() + res.settings.turn_accept_deadline_s


async def _start(
    request: Request,
    response: Response,
    res: Resources,
    admission: Admission,
    turn: NewTurn,
    idempotency_key: str | None,
) -> TurnAccepted:
    # (A malformed Idempotency-Key is a 422 already: the header's pattern, KEY_PATTERN.)
    accepted = await start_turn(
        res,
        admission,
        turn,
        deadline=_deadline(request, res),
        idempotency_key=idempotency_key,
    )
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return TurnAccepted(
        session_id=accepted.session_id, event_id=accepted.event_id, queued=accepted.queued
    )


DENIALS = errors(
    403,
    404,
    422,
    429,
    503,
    s403="the credentials lack the `turns` scope, or may read the session but not post to it",
    s404="the session belongs to another tenant, or to no one you may act for",
    s422="an invalid body or Idempotency-Key, or an Idempotency-Key used for another request",
    s429="a rate limit (RPM/TPM per key or tenant); see Retry-After",
    s503="neither Kafka nor the outbox took the turn in time (`accept_timeout`), or "
    "authorization or rate limiting cannot be decided now; see Retry-After",
)


@router.post("/message", status_code=202, response_model=TurnAccepted, responses=DENIALS)
async def post_message(
    body: MessageIn,
    request: Request,
    response: Response,
    res: ResourcesDep,
    admission: AdmissionDep,
    idempotency_key: IdempotencyKey = None,
) -> TurnAccepted:
    """Start a turn; follow it on the session's event stream."""
    turn = NewTurn(
        session_id=body.session_id,
        message=body.message,
        persona_id=body.persona_id,
        attachments=body.attachments,
        metadata=body.metadata,
    )
    return await _start(request, response, res, admission, turn, idempotency_key)


@router.post("/action", status_code=202, response_model=TurnAccepted, responses=DENIALS)
async def post_action(
    body: ActionIn,
    request: Request,
    response: Response,
    res: ResourcesDep,
    admission: AdmissionDep,
    idempotency_key: IdempotencyKey = None,
) -> TurnAccepted:
    """Run a session action (summarize, next_steps, status_report) as a turn."""
    turn = NewTurn(
        session_id=body.session_id,
        message="",
        action=body.action,
        persona_id=body.persona_id,
        metadata=body.metadata,
    )
    return await _start(request, response, res, admission, turn, idempotency_key)


def invalid_last_event_id() -> HTTPException:
    return HTTPException(
        400,
        detail={
            "code": "invalid_last_event_id",
            "message": "Last-Event-ID must be an id this stream sent: <ms>-<seq> or pg-<n>",
        },
    )


def closing_event(session_id: str, reason: str) -> bytes:
    """The last SSE event of a stream ended by the gateway (e.g. its key was revoked)."""
    payload = {
        "type": "error",
        "session_id": session_id,
        "turn_id": "",
        "ts": int(time.time() * 1000),
        "data": {
            "code": reason,
            "message": f"the gateway ended this stream: {reason}",
            "retryable": False,
        },
    }
    return f"event: error\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


STREAM_DENIALS = {
    200: {
        "description": "the session's events, then new ones as they come",
        "content": SESSION_SSE,
    },
    **errors(
        400,
        404,
        429,
        503,
        s400="a Last-Event-ID the gateway never issues (`invalid_last_event_id`)",
        s404="no session you may read",
        s429="the principal holds MAX_STREAMS_PER_PRINCIPAL streams already; see Retry-After",
        s503="authorization cannot be decided now; see Retry-After",
    ),
}


@router.get("/{session_id}/events", response_class=StreamingResponse, responses=STREAM_DENIALS)
async def session_events(
    session_id: SessionIdPath,
    last_event_id: Annotated[
        str | None, Header(pattern=EVENT_ID, description="resume after this event")
    ] = None,
) -> StreamingResponse:
    """Server-sent events of the session: every retained event, or those after Last-Event-ID."""
    # The operation's entry in the OpenAPI schema only: requests are served, ahead of the
    # router, by ingress.routes.stream.SessionEventsEndpoint (why: see that module).
    raise RuntimeError("GET /v1/session/{session_id}/events is served by SessionEventsEndpoint")
