"""The LLM stage's logic: TurnContextualized in, TurnCompleted out.

Deltas go to the client through the fan-out as they arrive. When the model fails, the
turn ends as `failed` with an actionable error event (what failed, whether a fallback was
tried, when to retry); a stream cut mid-answer is reported as an error, never as a
finished answer. If a crash made this turn run before, the client is told
(`turn.retrying`) that earlier partial output is void; the end of a turn (final answer or
error) is published once per turn whatever happens, and a rerun after it only repeats it.
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
from llm_worker.model import ProviderError
from llm_worker.router import AllDeploymentsFailed, Answering, ModelRouter
from schemas.events import ErrorInfo, Event, TurnCompleted, TurnContextualized, Usage
from schemas.topics import Topics

log = logging.getLogger(__name__)


def provider_error_info(exc: ProviderError, tried_fallback: bool) -> ErrorInfo:
    retry_after = 30.0 if exc.status in (429, 503) else 10.0
    if isinstance(exc, AllDeploymentsFailed):
        what = "no model deployment answered" + (
            " (fallbacks were tried)" if tried_fallback else " (no fallback is configured)"
        )
        code = "llm_unavailable"
    else:
        what = "the model failed in the middle of its answer; the partial answer is void"
        code = "llm_stream_interrupted"
    return ErrorInfo(
        code=code,
        message=f"{what}: {exc}. Retry the message in about {retry_after:.0f} s.",
        retryable=True,
        retry_after_s=retry_after,
    )


@dataclass
class LLMHandler:
    topics: Topics
    router: ModelRouter
    fanout: FanoutPublisher
    attempts: TurnAttempts
    stage: str = "llm"

    @property
    def input_topic(self) -> str:
        return self.topics.contextualized.name

    async def handle(self, event: Event) -> Sequence[Output]:
        if not isinstance(event, TurnContextualized):
            raise InvalidEvent(f"llm stage expects TurnContextualized, got {type(event).__name__}")
        sid, tid = event.request.session_id, event.request.event_id
        if await self.attempts.begin(tid) > 1:
            ended = await self.fanout.recorded(_once(tid))
            if ended is not None:  # the client already has the end: repeat it, not the call
                return [self._replay(event, ended)]
            await self.fanout.publish(
                sid, tid, "turn.retrying",
                {"reason": "an earlier attempt was interrupted; discard its partial output"},
            )
        parts: list[str] = []
        usage: Usage | None = None
        answering = event.profile
        fallback = False
        try:
            async for item in self.router.stream([event.profile, *event.fallbacks], event.messages):
                if isinstance(item, Answering):
                    answering, fallback = item.profile, item.fallback
                    continue
                if item.text:
                    parts.append(item.text)
                    await self.fanout.publish(
                        sid, tid, "assistant.delta", {"seq": len(parts), "text": item.text}
                    )
                usage = item.usage or usage
        except ProviderError as exc:
            log.warning("model failed: %s", exc)
            error = provider_error_info(exc, tried_fallback=bool(event.fallbacks))
            await self.fanout.publish(sid, tid, "error", asdict(error), once_key=_once(tid))
            return [self._completed(event, "failed", "", usage, error, answering.model)]
        answer = "".join(parts)
        usage = usage or _estimate_usage(event, answer)
        await self.fanout.publish(
            sid,
            tid,
            "assistant.final",
            {"text": answer, "model": answering.model, "fallback": fallback,
             "usage": asdict(usage)},
            once_key=_once(tid),
        )
        return [self._completed(event, "completed", answer, usage, None, answering.model)]

    def _replay(self, event: TurnContextualized, ended: dict[str, Any]) -> Output:
        data = ended["data"]
        if ended["type"] == "assistant.final":
            usage = Usage(**data["usage"])
            return self._completed(event, "completed", data["text"], usage, None, data["model"])
        return self._completed(event, "failed", "", None, ErrorInfo(**data), event.profile.model)

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


def _once(turn_id: str) -> str:
    return f"soma:turn-ended:{turn_id}"


def _estimate_usage(event: TurnContextualized, answer: str) -> Usage:
    prompt = sum(len(m.content) for m in event.messages) // 4 + 1
    return Usage(prompt_tokens=prompt, completion_tokens=len(answer) // 4 + 1)
