"""`POST /v1/chat/completions`: one chat completion = one turn through the mesh.

The turn is admitted exactly as `POST /v1/session/message` admits one (keys, rate limits,
the session claim; then the policy stage's OpenFGA/OPA checks and budgets, the context
stage's profile routing and fallbacks, the LLM stage's breaker, persistence), with the
request's `model` resolved to a profile role (ingress/openai/models.py) and its messages
and generation parameters carried as they came (ingress/openai/chat.py).

The answer is the turn's outcome, read from the session's durable log:
- streamed: the response starts with the model's first token, so a turn that fails
  before it (refused by policy, budget or rate; no deployment answering) is still an
  HTTP status (429 with Retry-After, 403, 502, ...) as OpenAI clients expect; from then
  on chunks, keep-alive comments while idle, `data: [DONE]` at the end, or one
  `data: {"error": ...}` frame if the turn fails mid-way.
- not streamed: one `chat.completion` once `assistant.final` is in, or the error.
Either way the wait is bounded by OPENAI_TURN_TIMEOUT_S (504; the turn goes on and is
stored). `X-Session-Id` (response header) names the session, so the client can continue
it; without one in the request the turn runs in a new session of its own.

The follow holds a stream lease of the principal's (ingress/streams.py), as session
event streams do: it counts against MAX_STREAMS_PER_PRINCIPAL and ends (401
`key_revoked`) when the key is revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ingress.deps import AdmissionDep, ResourcesDep
from ingress.idempotency import KEY_PATTERN
from ingress.openai import chat, chat_request, turn_errors
from ingress.openai.accept import accept_turn, check_idempotency_key
from ingress.openai.chat import ChatTranslator
from ingress.openai.chat_request import ChatCompletionRequest
from ingress.openai.errors import OpenAIError
from ingress.openai.models import resolve_role
from ingress.openai.turn_events import TurnEvent, turn_events
from ingress.openapi_responses import openai_turn_errors, sse
from ingress.resources import Resources
from ingress.streams import StreamLease
from ingress.turns import Accepted, NewTurn
from schemas.events import ChatMessage

log = logging.getLogger(__name__)
router = APIRouter(tags=["openai"])

# The events after which a streamed answer starts: the model has begun to answer, or the
# turn has failed. Until then a failure (a refusal by policy, budget or rate; no model
# deployment answering) is still an HTTP status with Retry-After, as OpenAI's clients
# expect and retry on; only a failure after the first token is an error frame.
DECISIVE = frozenset({"assistant.delta", "assistant.final", "error", "turn.cancelled"})
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Events = AsyncIterator[TurnEvent | None]


class _Follow:
    """A started turn, its events and the lease they hold; `close` gives both back."""

    def __init__(
        self, res: Resources, accepted: Accepted, events: Events, lease: StreamLease
    ) -> None:
        self.res = res
        self.accepted = accepted
        self.events = events
        self.lease = lease
        self._closed = False

    async def next(self, deadline: float) -> TurnEvent | None:
        """The next event or tick; an OpenAIError past `deadline` (the loop's clock: 504)
        or when the follow ended early (the lease was closed: e.g. 401 key_revoked)."""
        try:
            async with asyncio.timeout_at(deadline):
                return await anext(self.events)
        except TimeoutError:
            raise timed_out(self.res) from None
        except StopAsyncIteration:
            raise self.ended_early() from None

    def ended_early(self) -> OpenAIError:
        reason = self.lease.reason or "stream_ended"
        if reason == "key_revoked":
            return turn_errors.ingress_error(reason, "the API key was revoked during the request")
        return turn_errors.ingress_error(reason, f"the gateway ended this request: {reason}")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self.res.streams.release(self.lease)


def timed_out(res: Resources) -> OpenAIError:
    return turn_errors.ingress_error(
        "timeout",
        f"the turn did not end within {res.settings.openai_turn_timeout_s:g}s; it goes on and "
        "its answer is stored in the session (X-Session-Id)",
    )


def _new_turn(
    body: ChatCompletionRequest, role: str, session_id: str | None, messages: list[ChatMessage]
) -> NewTurn:
    metadata = {**(body.metadata or {}), "model_role": role}
    return NewTurn(
        session_id=session_id,
        message=chat_request.user_text(messages),
        metadata=metadata,
        api="chat.completions",
        messages=messages,
        generation=chat_request.generation(body),
    )


@router.post(
    "/v1/chat/completions",
    responses={
        200: {
            "description": "a chat.completion, or (stream) chat.completion.chunk events",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                **sse(
                    "`data: <chat.completion.chunk>` lines, `: keep-alive` comments while idle, "
                    "`data: [DONE]` at the end; a turn failing mid-way: one "
                    '`data: {"error": ...}` instead.',
                    ["chat.completion.chunk", "error"],
                ),
            },
        },
        **openai_turn_errors(
            s400="an invalid or unsupported parameter (`param` names it), or a context too long",
            s404="an unknown `model` (`model_not_found`), or a session not yours",
            s504="the turn did not end within OPENAI_TURN_TIMEOUT_S (`timeout`)",
        ),
    },
)
async def chat_completions(
    body: ChatCompletionRequest,
    res: ResourcesDep,
    admission: AdmissionDep,
    x_session_id: Annotated[str | None, Header(alias="X-Session-Id")] = None,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", pattern=KEY_PATTERN.pattern)
    ] = None,
) -> Response:
    """Create a chat completion (OpenAI's API), run as a turn of the mesh."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + res.settings.openai_turn_timeout_s
    created = int(time.time())
    chat_request.check_supported(body)
    check_idempotency_key(idempotency_key)
    messages = chat_request.chat_messages(body.messages)
    session_id = chat_request.session_of(x_session_id, body.metadata)
    role = await resolve_role(res, admission.principal, body.model)
    lease = res.streams.open(admission.principal)  # 429 too_many_streams before the turn
    try:
        turn = _new_turn(body, role, session_id, messages)
        accepted = await accept_turn(res, admission, turn, idempotency_key)
    except BaseException:
        res.streams.release(lease)
        raise
    events = turn_events(
        res,
        accepted.session_id,
        accepted.event_id,
        keepalive_s=res.settings.sse_keepalive_s,
        lease=lease,
    )
    follow = _Follow(res, accepted, events, lease)
    translator = ChatTranslator(
        f"chatcmpl-{accepted.event_id}", created, body.model, body.include_usage
    )
    headers = {"X-Session-Id": accepted.session_id}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    handed_over = False  # to the streaming response, which closes the follow itself
    try:
        if not body.stream:
            return await _complete(follow, translator, deadline, headers)
        first = await _decisive(follow, deadline)
        if first.type in ("error", "turn.cancelled"):
            error = translator.feed(first)[-1]
            assert isinstance(error, OpenAIError)
            raise error
        response = StreamingResponse(
            _stream(follow, translator, first, deadline),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **headers},
        )
        handed_over = True
        return response
    finally:
        if not handed_over:
            await follow.close()


async def _decisive(follow: _Follow, deadline: float) -> TurnEvent:
    """The turn's first event that settles whether it runs (before any byte is sent)."""
    while True:
        event = await follow.next(deadline)
        if event is not None and event.type in DECISIVE:
            return event


async def _complete(
    follow: _Follow,
    translator: ChatTranslator,
    deadline: float,
    headers: dict[str, str],
) -> JSONResponse:
    while True:
        event = await follow.next(deadline)
        if event is None:
            continue
        if event.type == "assistant.final":
            return JSONResponse(translator.completion(event.data), headers=headers)
        if event.type in ("error", "turn.cancelled"):
            error = translator.feed(event)[-1]
            assert isinstance(error, OpenAIError)
            raise error


async def _stream(
    follow: _Follow,
    translator: ChatTranslator,
    first: TurnEvent,
    deadline: float,
) -> AsyncIterator[bytes]:
    try:
        for frame in translator.feed(first):
            yield chat.sse(frame)
        while not translator.done:
            try:
                event = await follow.next(deadline)
            except OpenAIError as error:  # timed out, or the gateway ended the request
                yield chat.sse(error)
                return
            if event is None:
                yield chat.KEEPALIVE
                continue
            frames = translator.feed(event)
            if frames:
                yield b"".join(chat.sse(f) for f in frames)  # one write per event
        if not translator.failed:
            yield chat.DONE
    finally:
        with contextlib.suppress(Exception):
            await follow.close()
