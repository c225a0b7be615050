"""The LLM stage's logic: TurnContextualized in, TurnCompleted out.

Deltas go to the client through the fan-out as they arrive. A provider failure ends the
turn as `failed` with an actionable error event; a stream cut mid-answer is reported as
an error, never as a finished answer. If a crash made this turn run before, the client
is told (`turn.retrying`) that earlier partial output is void; the final answer is
published once per turn whatever happens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway_runtime.errors import InvalidEvent
from gateway_runtime.fanout import FanoutPublisher
from gateway_runtime.stage import Output
from llm_worker.attempts import TurnAttempts
from llm_worker.model import ChatModel, ProviderError
from schemas.events import ErrorInfo, Event, TurnCompleted, TurnContextualized, Usage
from schemas.topics import Topics

log = logging.getLogger(__name__)


def provider_error_info(exc: ProviderError, model: str) -> ErrorInfo:
    if exc.mid_stream:
        what = f"the model {model} failed in the middle of its answer; the partial answer is void"
    else:
        what = f"the model {model} could not be reached or refused the request"
    retry_after = 30.0 if exc.status in (429, 503) else 5.0
    return ErrorInfo(
        code="llm_stream_interrupted" if exc.mid_stream else "llm_unavailable",
        message=f"{what} ({exc}). Retry the message in about {retry_after:.0f} s.",
        retryable=True,
        retry_after_s=retry_after,
    )


@dataclass
class LLMHandler:
    topics: Topics
    model: ChatModel
    fanout: FanoutPublisher
    attempts: TurnAttempts
    stage: str = "llm"

    @property
    def input_topic(self) -> str:
        return self.topics.contextualized.name

    async def handle(self, event: Event) -> Sequence[Output]:
        if not isinstance(event, TurnContextualized):
            raise InvalidEvent(f"llm stage expects TurnContextualized, got {type(event).__name__}")
        request, profile = event.request, event.profile
        sid, tid = request.session_id, request.event_id
        if await self.attempts.begin(tid) > 1:
            ended = await self.fanout.recorded(_once(tid))
            if ended is not None:  # the client already has the end: repeat it, not the call
                return [self._replay(event, ended)]
            await self.fanout.publish(
                sid,
                tid,
                "turn.retrying",
                {"reason": "an earlier attempt was interrupted; discard its partial output"},
            )
        parts: list[str] = []
        usage: Usage | None = None
        try:
            async for chunk in self.model.stream(profile, event.messages):
                if chunk.text:
                    parts.append(chunk.text)
                    await self.fanout.publish(
                        sid, tid, "assistant.delta", {"seq": len(parts), "text": chunk.text}
                    )
                usage = chunk.usage or usage
        except ProviderError as exc:
            log.warning("provider failed: %s", exc)
            error = provider_error_info(exc, profile.model)
            await self.fanout.publish(sid, tid, "error", asdict(error), once_key=_once(tid))
            return [self._completed(event, "failed", "", usage, error)]
        answer = "".join(parts)
        usage = usage or _estimate_usage(event, answer)
        await self.fanout.publish(
            sid,
            tid,
            "assistant.final",
            {"text": answer, "model": profile.model, "usage": asdict(usage)},
            once_key=_once(tid),
        )
        return [self._completed(event, "completed", answer, usage, None)]

    def _completed(
        self,
        event: TurnContextualized,
        status: str,
        answer: str,
        usage: Usage | None,
        error: ErrorInfo | None,
    ) -> Output:
        completed = TurnCompleted(
            request=event.request,
            principal=event.principal,
            status=status,
            completed_at_ms=int(time.time() * 1000),
            usage=usage or Usage(),
            answer=answer,
            model=event.profile.model,
            reserved_tokens=event.reserved_tokens,
            error=error,
        )
        return Output(self.topics.completed.name, completed)

    def _replay(self, event: TurnContextualized, ended: dict[str, Any]) -> Output:
        data = ended["data"]
        if ended["type"] == "assistant.final":
            return self._completed(event, "completed", data["text"], Usage(**data["usage"]), None)
        return self._completed(event, "failed", "", None, ErrorInfo(**data))


def _once(turn_id: str) -> str:
    return f"soma:turn-ended:{turn_id}"


def _estimate_usage(event: TurnContextualized, answer: str) -> Usage:
    prompt = sum(len(m.content) for m in event.messages) // 4 + 1
    return Usage(prompt_tokens=prompt, completion_tokens=len(answer) // 4 + 1)
