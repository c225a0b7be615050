"""The LLM stage's logic: TurnContextualized in, TurnCompleted (or ToolRequested) out.

Deltas go to the client through the fan-out as they arrive. When the model fails, the
turn ends as `failed` with an actionable error event (what failed, whether a fallback was
tried, when to retry); a stream cut mid-answer is reported as an error, never as a
finished answer. If a crash made this turn run before, the client is told
(`turn.retrying`) that earlier partial output is void; the end of a turn (final answer or
error) is published once per turn whatever happens, and a rerun after it only repeats it.

When the tenant allows tools, the model is offered them (see `tool_requests.py`); an
answer that ends in tool calls goes to the tool dispatcher as `ToolRequested`, which puts
the turn back here with the results, one tool round later. A turn of the OpenAI API
(`request.api`) is offered only the client's own tools, with the client's generation
parameters (`client_request.py`), and its tool calls end it: the client runs them.

A client may cancel a turn of the Responses API (ingress/turns.py `cancel_turn`): the
stage looks for its `turn.cancelled` before the call and every CANCEL_CHECK_S while it
streams, and ends the turn as `cancelled`.

Every call keeps within the tokens the policy stage reserved for the turn
(`allowance.py`): each deployment is asked for at most what is left after the earlier
rounds and this prompt; a turn whose next call cannot fit ends as `turn_tokens_exhausted`.
The usage of every round is added up in the turn's `TurnCompleted`, which settles it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway_runtime.errors import AllDeploymentsFailed, InvalidEvent, ProviderError
from gateway_runtime.ports import Answering, Attempts, Fanout, Output, Router
from gateway_runtime.redis_keys import RedisKeys
from gateway_runtime.tokens import estimate_tokens
from llm_worker.allowance import exhausted_error, plan_call, prompt_tokens
from llm_worker.client_request import client_tools, wire_tool_calls, with_generation
from llm_worker.deltas import DeltaCoalescer
from llm_worker.genai_span import chat_span
from llm_worker.tool_requests import (
    ToolOffer,
    attempt_key,
    tool_call_data,
    tool_requested,
    total_usage,
)
from schemas.events import (
    ErrorInfo,
    Event,
    ModelProfile,
    ToolCall,
    TurnCompleted,
    TurnContextualized,
    Usage,
)
from schemas.topics import Topics

log = logging.getLogger(__name__)
CANCEL_CHECK_S = 0.25


def provider_error_info(exc: ProviderError, tried_fallback: bool) -> ErrorInfo:
    """What the client is told: which deployments failed and how (their profile names and
    the upstreams' status), never an upstream's body or address (those are in the log)."""
    retry_after = 30.0 if exc.status in (429, 503) else 10.0
    if isinstance(exc, AllDeploymentsFailed):
        what = "no model deployment answered" + (
            " (fallbacks were tried)" if tried_fallback else " (no fallback is configured)"
        )
        code, detail = "llm_unavailable", str(exc)  # the attempts, client-safe
    else:
        what = "the model failed in the middle of its answer; the partial answer is void"
        code, detail = "llm_stream_interrupted", exc.public
    return ErrorInfo(
        code=code,
        message=f"{what}: {detail}. Retry the message in about {retry_after:.0f} s.",
        retryable=True,
        retry_after_s=retry_after,
    )


@dataclass(slots=True)
class _Answer:
    """What the model has said so far; kept when it fails, for the usage and the model."""

    model: str
    fallback: bool = False
    parts: list[str] = field(default_factory=list)
    usage: Usage | None = None
    calls: tuple[ToolCall, ...] = ()
    finish: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass
class LLMHandler:
    topics: Topics
    keys: RedisKeys
    router: Router
    fanout: Fanout
    attempts: Attempts
    tools: ToolOffer | None = None
    delta_window_s: float = 0.0  # DELTA_COALESCE_MS (llm_worker/deltas.py)
    stage: str = "llm"

    @property
    def input_topic(self) -> str:
        return self.topics.contextualized.name

    async def handle(self, event: Event) -> Sequence[Output]:
        if not isinstance(event, TurnContextualized):
            raise InvalidEvent(f"llm stage expects TurnContextualized, got {type(event).__name__}")
        sid, tid = event.request.session_id, event.request.event_id
        if await self.attempts.begin(attempt_key(event)) > 1:
            replayed = await self._replay_ended(event)
            if replayed is not None:  # the client already has the outcome: repeat it, not the call
                return [replayed]
            await self.fanout.publish(
                sid,
                tid,
                "turn.retrying",
                {"reason": "an earlier attempt was interrupted; discard its partial output"},
            )
        request = event.request
        if request.api is None:
            call = plan_call(event, self.tools.for_turn(event) if self.tools else [])
        else:  # the client's tools: a further round is a new turn, so they are never dropped
            call = plan_call(event, [])
        if call is None:
            return [await self._failed(event, exhausted_error(event), event.prior_usage)]
        tools, profiles = call.tools, call.profiles
        if request.api is not None:
            tools = client_tools(request)
            profiles = [with_generation(p, request.generation) for p in profiles]
        if request.api == "responses" and await self._cancelled(tid):
            return [await self._failed(event, _CANCELLED, event.prior_usage)]
        answer = _Answer(model=event.profile.model)
        try:
            with chat_span(profiles[0], sid, answer):  # a span when tracing is on
                await self._stream(event, profiles, tools, answer)
        except _Cancelled:
            usage = total_usage(event.prior_usage, answer.usage)
            return [await self._failed(event, _CANCELLED, usage, answer.model)]
        except ProviderError as exc:
            log.warning("model failed: %s", exc)
            error = provider_error_info(exc, tried_fallback=bool(event.fallbacks))
            # A stream cut after its first tokens was still billed for them.
            partial = answer.usage or (
                _estimate_usage(event, tools, answer.text) if answer.parts else None
            )
            usage = total_usage(event.prior_usage, partial)
            return [await self._failed(event, error, usage, answer.model, exc.status)]
        usage = total_usage(
            event.prior_usage, answer.usage or _estimate_usage(event, tools, answer.text)
        )
        returned = request.api is not None and bool(answer.calls)  # the client runs them
        if tools and answer.calls and answer.finish == "tool_calls" and not returned:
            return [await self._request_tools(event, answer, usage)]
        await self.fanout.publish(
            sid,
            tid,
            "assistant.final",
            {
                "text": answer.text,
                "model": answer.model,
                "fallback": answer.fallback,
                "usage": asdict(usage),
                "finish_reason": "tool_calls" if returned else (answer.finish or "stop"),
                "tool_calls": wire_tool_calls(answer.calls) if returned else [],
            },
            once_key=self.keys.turn_ended(tid),
        )
        return [self._completed(event, "completed", answer.text, usage, None, answer.model)]

    async def _failed(
        self,
        event: TurnContextualized,
        error: ErrorInfo,
        usage: Usage | None,
        model: str = "",
        upstream_status: int | None = None,
    ) -> Output:
        sid, tid = event.request.session_id, event.request.event_id
        data = {**asdict(error), "upstream_status": upstream_status}
        await self.fanout.publish(sid, tid, "error", data, once_key=self.keys.turn_ended(tid))
        return self._completed(event, "failed", "", usage, error, model or event.profile.model)

    async def _stream(
        self,
        event: TurnContextualized,
        profiles: list[ModelProfile],
        tools: list[dict[str, Any]],
        answer: _Answer,
    ) -> None:
        sid, tid = event.request.session_id, event.request.event_id

        async def send(seq: int, text: str) -> None:
            await self.fanout.publish(sid, tid, "assistant.delta", {"seq": seq, "text": text})

        deltas = DeltaCoalescer(send, self.delta_window_s)
        cancellable = event.request.api == "responses"
        check_at = time.monotonic() + CANCEL_CHECK_S
        try:
            async for item in self.router.stream(profiles, event.messages, tools):
                if cancellable and time.monotonic() >= check_at:
                    if await self._cancelled(tid):
                        raise _Cancelled
                    check_at = time.monotonic() + CANCEL_CHECK_S
                if isinstance(item, Answering):
                    answer.model, answer.fallback = item.profile.model, item.fallback
                    continue
                if item.text:
                    answer.parts.append(item.text)
                    await deltas.add(item.text)
                answer.usage = item.usage or answer.usage
                answer.calls = item.tool_calls or answer.calls
                answer.finish = item.finish_reason or answer.finish
        except BaseException:
            with contextlib.suppress(Exception):  # the stream's own error is the one to raise
                await deltas.close()
            raise
        await deltas.close()

    async def _cancelled(self, turn_id: str) -> bool:
        return await self.fanout.recorded(self.keys.turn_cancelled(turn_id)) is not None

    async def _request_tools(
        self, event: TurnContextualized, answer: _Answer, usage: Usage
    ) -> Output:
        sid, tid = event.request.session_id, event.request.event_id
        data = tool_call_data(event, answer.calls, answer.text, answer.model, usage)
        once = self.keys.tool_calls(tid, event.tool_rounds)
        if await self.fanout.publish(sid, tid, "tool.call", data, once_key=once) is None:
            # An earlier run of this round published its calls: the client saw those.
            data = (await self.fanout.recorded(once) or {}).get("data", data)
        return Output(self.topics.tool_requested.name, tool_requested(event, data))

    async def _replay_ended(self, event: TurnContextualized) -> Output | None:
        turn_id = event.request.event_id
        ended = await self.fanout.recorded(self.keys.turn_ended(turn_id))
        if ended is not None:
            return self._replay(event, ended)
        requested = await self.fanout.recorded(self.keys.tool_calls(turn_id, event.tool_rounds))
        if requested is not None:
            return Output(self.topics.tool_requested.name, tool_requested(event, requested["data"]))
        return None

    def _replay(self, event: TurnContextualized, ended: dict[str, Any]) -> Output:
        data = ended["data"]
        if ended["type"] == "assistant.final":
            usage = Usage(**data["usage"])
            return self._completed(event, "completed", data["text"], usage, None, data["model"])
        error = ErrorInfo(**{k: v for k, v in data.items() if k in ErrorInfo.__dataclass_fields__})
        # The earlier rounds' usage still counts (this round's, if any, is not known here).
        return self._completed(event, "failed", "", event.prior_usage, error, event.profile.model)

    def _completed(
        self,
        event: TurnContextualized,
        status: str,
        answer: str,
        usage: Usage | None,
        error: ErrorInfo | None,
        model: str,
    ) -> Output:
        completed = TurnCompleted(
            request=event.request,
            principal=event.principal,
            status=status,
            completed_at_ms=int(time.time() * 1000),
            usage=usage or Usage(),
            answer=answer,
            model=model,
            reserved_tokens=event.reserved_tokens,
            error=error,
        )
        return Output(self.topics.completed.name, completed)


class _Cancelled(Exception):
    """The client cancelled the turn while the model was answering."""


_CANCELLED = ErrorInfo(code="cancelled", message="the client cancelled this response")


def _estimate_usage(event: TurnContextualized, tools: list[dict[str, Any]], answer: str) -> Usage:
    """The call's usage when the upstream reports none: what it was sent and answered."""
    return Usage(prompt_tokens(event, tools), estimate_tokens(answer))
