"""The Responses API: `POST /v1/responses`, `GET|DELETE /v1/responses/{id}`,
`POST /v1/responses/{id}/cancel`. One response = one turn through the mesh.

The turn is admitted as every turn is (keys, rate limits, the session claim, then the
policy stage's checks and budgets, the context stage's routing by `model`, the LLM stage's
breaker and fallbacks, persistence). The response's events are the turn's events in the
session's durable log, translated (ingress/openai/responses.py); its row
(ingress/openai/response_store.py) holds who owns it and, once it ended, its events.

- `background: true`: answered at once (`queued`); the turn runs in the mesh; the response
  is read with GET, followed with `GET ?stream=true&starting_after=N` (exactly the events
  after N, whichever replica serves it, across an ingress restart or an LLM worker's
  crash), cancelled, deleted.
- `stream: true` (not background): a turn the policy stage refuses is still an HTTP status
  (429 with Retry-After, 403, ...); then the events, keep-alive comments while idle.
- neither: the response object once the turn ended (an error that ended it: its HTTP
  status), within OPENAI_TURN_TIMEOUT_S (504; the turn goes on, GET reads it).
- `previous_response_id`: the new turn runs in the previous response's session, whose
  transcript the context stage puts before the new input (plus, for results of function
  calls the previous response made, the assistant message that made them). The previous
  response must have ended (400 otherwise); the context stage waits for its turn to be
  in the transcript (`after_turn_id`; the persistence stage writes it just after the
  answer), up to TRANSCRIPT_WAIT_S.
Stored responses are kept RESPONSES_RETENTION_S; `store: false` ones are never readable.
Who may read a response: its tenant's principals who may read its session (as for the
session API's events); anyone else gets 404.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ingress.deps import AdmissionDep, Principal, ResourcesDep, TurnsPrincipal, session_read_access
from ingress.idempotency import KEY_PATTERN
from ingress.openai import turn_errors
from ingress.openai.accept import accept_turn, check_idempotency_key
from ingress.openai.errors import OpenAIError
from ingress.openai.models import resolve_role
from ingress.openai.response_request import CreateResponse, echo, to_turn
from ingress.openai.response_runs import (
    Follow,
    Logged,
    current,
    finish,
    store_of,
    stream,
    watch,
)
from ingress.openai.response_store import StoredResponse
from ingress.openai.responses import (
    TERMINAL,
    ResponseHead,
    ResponseTranslator,
    response_id,
    turn_of,
)
from ingress.openapi_responses import errors, openai_turn_errors, sse
from ingress.resources import Resources
from ingress.turns import Accepted, NewTurn, cancel_turn

router = APIRouter(tags=["openai"])
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The events that settle a turn's fate (admitted or refused) before a stream starts.
DECISIVE = frozenset(
    {"turn.accepted", "assistant.delta", "assistant.final", "error", "turn.cancelled"}
)
ResponseIdPath = Annotated[str, Path(max_length=128)]
RESPONSE_EVENTS = sse(
    "`event: <type>` and `data: <the event>` per event (OpenAI's Responses API stream), "
    "`: keep-alive` comments while idle.",
    [
        "response.queued",
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "error",
    ],
)
RESPONSE_OBJECT = {"application/json": {"schema": {"type": "object"}}}
TURN_ERRORS = openai_turn_errors(
    s400="an invalid or unsupported parameter (`param` names it), a previous response not "
    "ended yet, or a context too long",
    s404="an unknown `model` or `previous_response_id`",
    s504="(not background) the turn did not end within OPENAI_TURN_TIMEOUT_S",
)
NOT_FOUND = errors(404, openai=True, s404="no response with that id that you may read")
log = logging.getLogger(__name__)


def not_found(rid: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(404, f"No response found with id '{rid}'.", code="not_found", param=param)


async def owned(
    res: Resources, principal: Principal, rid: str, param: str | None = None
) -> StoredResponse:
    """The stored response if the caller may read it (404 otherwise, whatever the reason)."""
    stored = await store_of(res).get(rid) if turn_of(rid) else None
    if stored is None or stored.tenant != principal.tenant:
        raise not_found(rid, param)
    try:
        await session_read_access(stored.session_id, res, principal)
    except HTTPException as exc:  # 404 as any unknown response; an outage's 503 stays
        if exc.status_code == 404:
            raise not_found(rid, param) from exc
        raise
    return stored


async def _previous(
    res: Resources, principal: Principal, rid: str
) -> tuple[str, list[dict[str, Any]], str | None]:
    """The previous response's session, the function calls it ended with, and the turn
    the new one continues (None: it left nothing in the transcript to wait for)."""
    previous = await owned(res, principal, rid, "previous_response_id")
    body = await current(res, previous)
    if body["status"] not in TERMINAL:
        raise OpenAIError(
            400,
            f"Previous response with id '{rid}' is still {body['status']}; wait until it ends.",
            code="invalid_value",
            param="previous_response_id",
        )
    # Its exchange is in the transcript once the persistence stage stored it: the new
    # turn's context stage waits for that (TRANSCRIPT_WAIT_S).
    after = previous.turn_id if body["status"] in ("completed", "incomplete") else None
    calls = [
        {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        for item in body["output"]
        if item.get("type") == "function_call"
    ]
    return previous.session_id, calls, after


@router.post(
    "/v1/responses",
    responses={
        200: {
            "description": "a response object, or (stream) its events",
            "content": {**RESPONSE_OBJECT, **RESPONSE_EVENTS},
        },
        **TURN_ERRORS,
    },
)
async def create_response(
    body: CreateResponse,
    res: ResourcesDep,
    admission: AdmissionDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", pattern=KEY_PATTERN.pattern)
    ] = None,
) -> Response:
    """Create a model response (OpenAI's Responses API), run as a turn of the mesh."""
    deadline = asyncio.get_running_loop().time() + res.settings.openai_turn_timeout_s
    principal = admission.principal
    check_idempotency_key(idempotency_key)
    session_id, earlier_calls, after_turn_id = None, None, None
    if body.previous_response_id:
        session_id, earlier_calls, after_turn_id = await _previous(
            res, principal, body.previous_response_id
        )
    turn_input = to_turn(body, earlier_calls)
    role = await resolve_role(res, principal, body.model)
    turn = NewTurn(
        session_id=session_id,
        message=turn_input.message,
        metadata={"model_role": role},
        api="responses",
        messages=turn_input.messages,
        generation=turn_input.generation,
        after_turn_id=after_turn_id,
    )
    lease = res.streams.open(principal) if body.stream or not body.background else None
    follow = None
    try:
        accepted = await accept_turn(res, admission, turn, idempotency_key)
        head = ResponseHead(
            id=response_id(accepted.event_id),
            turn_id=accepted.event_id,
            created_at=int(time.time()),
            background=bool(body.background),
            echo=echo(body),
        )
        stored = await _keep(res, principal, accepted, head, body)
        head = stored.head if stored is not None else head
        headers = {"X-Session-Id": accepted.session_id}
        if accepted.replayed:
            headers["Idempotent-Replayed"] = "true"
        if body.background and stored is not None:
            watch(res, stored)
        if lease is None:  # background, not streamed: the response as it starts (a
            # retried request's: as it is now)
            if accepted.replayed and stored is not None:
                return JSONResponse(await current(res, stored), headers=headers)
            return JSONResponse(ResponseTranslator(head).response(), headers=headers)
        follow = Follow(res, accepted.session_id, accepted.event_id, lease)
        lease = None  # the follow gives it back
        if not body.stream:
            return await _complete(res, head, follow, stored, deadline, headers)
        read = [] if body.background else await _decisive(res, follow, deadline)
        response = StreamingResponse(
            stream(
                res, head, follow, stored=stored, starting_after=-1, deadline=deadline, read=read
            ),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **headers},
        )
        follow = None  # the stream closes it
        return response
    finally:
        if lease is not None:
            res.streams.release(lease)
        if follow is not None:
            await follow.close()


async def _keep(
    res: Resources,
    principal: Principal,
    accepted: Accepted,
    head: ResponseHead,
    body: CreateResponse,
) -> StoredResponse | None:
    """The response's row (None: `store: false`); a retried request's row as it was."""
    if body.store is False:
        return None
    store = store_of(res)
    status = "queued" if head.background else "in_progress"
    await store.insert(
        tenant=principal.tenant,
        principal=principal.subject,
        session_id=accepted.session_id,
        head=head,
        status=status,
    )
    if accepted.replayed and (earlier := await store.get(head.id)) is not None:
        return earlier
    return StoredResponse(
        head.id,
        principal.tenant,
        principal.subject,
        accepted.session_id,
        head.turn_id,
        head,
        status,
        None,
    )


def _timed_out(res: Resources, head: ResponseHead) -> OpenAIError:
    return turn_errors.ingress_error(
        "timeout",
        f"the response did not end within {res.settings.openai_turn_timeout_s:g}s; it goes "
        f"on: GET /v1/responses/{head.id} reads it (unless store was false)",
    )


def _refused(data: dict[str, Any]) -> OpenAIError:
    error = turn_errors.turn_error(data)
    if error.param == "messages":
        error.param = "input"
    return error


async def _decisive(res: Resources, follow: Follow, deadline: float) -> list[Logged]:
    """The turn's events up to the first that settles its fate, before any byte is sent:
    a refusal is the HTTP status a client expects."""
    read: list[Logged] = []
    while True:
        try:
            event = await follow.next(deadline)
        except TimeoutError:
            raise OpenAIError(504, "the turn was not admitted in time", code="timeout") from None
        except StopAsyncIteration:
            raise turn_errors.ingress_error(
                "stream_ended", "the gateway ended this request"
            ) from None
        if event is None:
            continue
        read.append((event.type, event.data, event.id))
        if event.type == "error":
            raise _refused(event.data)
        if event.type in DECISIVE:
            return read


async def _complete(
    res: Resources,
    head: ResponseHead,
    follow: Follow,
    stored: StoredResponse | None,
    deadline: float,
    headers: dict[str, str],
) -> JSONResponse:
    """The response object once the turn ended (its error: an HTTP error)."""
    translator = ResponseTranslator(head)
    translator.start()
    logged: list[Logged] = []
    while not translator.done:
        try:
            event = await follow.next(deadline)
        except (TimeoutError, StopAsyncIteration):
            if stored is not None:
                watch(res, stored)
            raise _timed_out(res, head) from None
        if event is None:
            continue
        logged.append((event.type, event.data, event.id))
        translator.feed(event.type, event.data, event.id)
    if stored is not None:
        await finish(res, translator, logged)
    kind, data, _ = logged[-1]
    if translator.status == "failed" and kind == "error":
        raise _refused(data)
    return JSONResponse(translator.response(), headers=headers)


@router.get(
    "/v1/responses/{response_id}",
    responses={
        200: {
            "description": "the response object, or (stream=true) its events to its end",
            "content": {**RESPONSE_OBJECT, **RESPONSE_EVENTS},
        },
        **NOT_FOUND,
    },
)
async def get_response(
    response_id: ResponseIdPath,
    res: ResourcesDep,
    principal: TurnsPrincipal,
    stream_: Annotated[bool, Query(alias="stream")] = False,
    starting_after: Annotated[int | None, Query(ge=-1)] = None,
) -> Response:
    """The response now; `stream=true`: its events (after `starting_after`) to its end."""
    stored = await owned(res, principal, response_id)
    if not stream_:
        return JSONResponse(await current(res, stored))
    lease = res.streams.open(principal)
    follow = None
    if stored.events is None:
        follow = Follow(res, stored.session_id, stored.turn_id, lease)
    else:
        res.streams.release(lease)
    deadline = asyncio.get_running_loop().time() + res.settings.responses_retention_s
    return StreamingResponse(
        stream(
            res,
            stored.head,
            follow,
            stored=stored,
            starting_after=-1 if starting_after is None else starting_after,
            deadline=deadline,
        ),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


@router.post(
    "/v1/responses/{response_id}/cancel",
    responses={
        200: {"description": "the response object", "content": RESPONSE_OBJECT},
        **NOT_FOUND,
        **errors(400, openai=True, s400="not a background response (`invalid_value`)"),
    },
)
async def cancel_response(
    response_id: ResponseIdPath, res: ResourcesDep, principal: TurnsPrincipal
) -> JSONResponse:
    """Cancel a background response that has not ended (one that ended: as it is)."""
    stored = await owned(res, principal, response_id)
    if not stored.head.background:
        raise OpenAIError(
            400,
            "Only responses created with background: true can be cancelled.",
            code="invalid_value",
        )
    body = await current(res, stored)
    if body["status"] in TERMINAL:
        return JSONResponse(body)
    await cancel_turn(res, stored.session_id, stored.turn_id)
    await store_of(res).mark_cancelled(stored.id)
    return JSONResponse(await current(res, dataclasses.replace(stored, status="cancelled")))


@router.delete(
    "/v1/responses/{response_id}",
    responses={200: {"description": "deleted", "content": RESPONSE_OBJECT}, **NOT_FOUND},
)
async def delete_response(
    response_id: ResponseIdPath, res: ResourcesDep, principal: TurnsPrincipal
) -> JSONResponse:
    """Delete a response (one still running is cancelled first: nobody can read it)."""
    stored = await owned(res, principal, response_id)
    if stored.events is None and stored.status in ("queued", "in_progress"):
        await cancel_turn(res, stored.session_id, stored.turn_id)
    if not await store_of(res).delete(stored.id):
        raise not_found(response_id)
    return JSONResponse({"id": stored.id, "object": "response", "deleted": True})
