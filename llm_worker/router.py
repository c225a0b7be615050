"""Retries, fallbacks and circuit breakers around the model port.

Deployments are tried in order: the profile, then its fallbacks. A deployment whose
breaker is open is skipped; a failure before the first token is retried (`retries` times,
with backoff, for errors worth retrying) and then falls through to the next deployment.
A failure after the first token cannot be hidden by a fallback: it ends the turn as an
error. Breaker state is shared by every LLM worker through Redis.

What a failure was (the URL, the upstream's answer) goes to the log; what the turn's
error says is client-safe: the deployment's profile name and the upstream's status or a
short phrase (`ProviderError.public`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from adapters.deployments import DeploymentHealth, deployment_name
from gateway_runtime.errors import AllDeploymentsFailed, DependencyUnavailable, ProviderError
from gateway_runtime.ports import Answering, ChatModel, Chunk, ToolSpecs
from llm_worker.metrics import BREAKER_TRANSITIONS, FALLBACKS, PROVIDER_FAILURES, observe_call
from schemas.events import ChatMessage, ModelProfile, Usage

log = logging.getLogger(__name__)
NOT_RETRYABLE = {400, 401, 403, 404, 422}
LOGGED_DETAIL = 1000  # characters of a failure's detail in the log


class ModelRouter:
    """The `Router` port: deployments in order, with retries and circuit breakers."""

    def __init__(
        self,
        model: ChatModel,
        health: DeploymentHealth,
        *,
        retries: int = 1,
        backoff_s: float = 0.2,
    ) -> None:
        self._model = model
        self._health = health
        self._retries = retries
        self._backoff_s = backoff_s

    async def stream(
        self, profiles: list[ModelProfile], messages: list[ChatMessage], tools: ToolSpecs = ()
    ) -> AsyncIterator[Answering | Chunk]:
        attempts: list[str] = []
        last: ProviderError | None = None
        for index, profile in enumerate(profiles):
            name = deployment_name(profile)
            for attempt in range(self._retries + 1):
                verdict = await self._allow(name)
                if verdict == "deny":
                    attempts.append(f"{name}: circuit open, skipped")
                    break
                started = time.perf_counter()
                answered = False
                first_token: float | None = None
                usage: Usage | None = None
                try:
                    async for chunk in self._model.stream(profile, messages, tools):
                        usage = chunk.usage or usage
                        if not answered and (chunk.text or chunk.tool_calls):
                            answered = True
                            first_token = time.perf_counter()
                            if index:
                                FALLBACKS.labels(profile.model).inc()
                            yield Answering(profile, fallback=index > 0)
                        yield chunk
                except ProviderError as exc:
                    last = exc
                    error_type = str(exc.status) if exc.status else type(exc).__name__
                    ended = time.perf_counter()
                    observe_call(
                        profile,
                        started=started,
                        first_token=first_token,
                        ended=ended,
                        usage=usage,
                        error_type=error_type,
                    )
                    log.warning("model call on %s failed: %s", name, str(exc)[:LOGGED_DETAIL])
                    await self._failed(name, exc)
                    if answered or exc.mid_stream:
                        raise
                    attempts.append(f"{name}: {exc.public}")
                    if not exc.retryable or exc.status in NOT_RETRYABLE or attempt == self._retries:
                        break
                    await asyncio.sleep(self._backoff_s * (2**attempt))
                    continue
                ended = time.perf_counter()
                observe_call(
                    profile, started=started, first_token=first_token, ended=ended, usage=usage
                )
                await self._succeeded(name, (ended - started) * 1000, verdict)
                return
        raise AllDeploymentsFailed(attempts, last)

    # Breaker bookkeeping never fails a turn: without Redis every deployment is allowed.
    async def _allow(self, name: str) -> str:
        try:
            verdict = await self._health.allow(name)
        except DependencyUnavailable:
            return "allow"
        if verdict == "probe":
            BREAKER_TRANSITIONS.labels(name, "half_open").inc()
        return verdict

    async def _succeeded(self, name: str, ttft_ms: float, verdict: str) -> None:
        try:
            await self._health.succeeded(name, ttft_ms)
        except DependencyUnavailable:
            return
        if verdict == "probe":
            BREAKER_TRANSITIONS.labels(name, "closed").inc()
            log.info("circuit closed for %s", name)

    async def _failed(self, name: str, exc: ProviderError) -> None:
        PROVIDER_FAILURES.labels(name, str(exc.status or "connection")).inc()
        try:
            state = await self._health.failed(name)
        except DependencyUnavailable:
            return
        if state == "open":
            BREAKER_TRANSITIONS.labels(name, "open").inc()
            log.warning("circuit open for %s", name)
