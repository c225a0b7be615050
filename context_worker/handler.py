"""The context stage's logic: TurnAuthorized in, TurnContextualized out.

Messages = the tenant's system prompt, memories recalled for the user's message, the
session's transcript trimmed to fit the model's context window, then the user's message
(or the action's prompt over the transcript). The model profile comes from the request's
`model_role` metadata (default `dialogue`), with its fallbacks, less any model the
tenant may not use; when none is left the turn ends here as failed (`model_not_allowed`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from context_worker.prompts import ACTION_PROMPTS
from gateway_runtime.errors import InvalidEvent
from gateway_runtime.ports import Fanout, Memory, Output, Profiles, Tenants, Transcript
from gateway_runtime.tokens import estimate_tokens
from schemas.events import (
    ChatMessage,
    ErrorInfo,
    Event,
    TurnAuthorized,
    TurnCompleted,
    TurnContextualized,
    Usage,
)
from schemas.topics import Topics

DEFAULT_ROLE = "dialogue"


async def _nothing() -> list[str]:
    return []


def fit_history(history: list[ChatMessage], budget_tokens: int) -> list[ChatMessage]:
    """The newest messages whose estimated tokens fit the budget, oldest first."""
    kept: list[ChatMessage] = []
    for message in reversed(history):
        budget_tokens -= estimate_tokens(message.content)
        if budget_tokens < 0:
            break
        kept.append(message)
    return kept[::-1]


@dataclass
class ContextHandler:
    topics: Topics
    transcript: Transcript
    tenants: Tenants
    profiles: Profiles
    memory: Memory
    fanout: Fanout
    context_window_tokens: int = 2048
    history_limit: int = 50
    recall_limit: int = 3
    stage: str = "context"

    @property
    def input_topic(self) -> str:
        return self.topics.authorized.name

    async def handle(self, event: Event) -> Sequence[Output]:
        if not isinstance(event, TurnAuthorized):
            raise InvalidEvent(f"context stage expects TurnAuthorized, got {type(event).__name__}")
        request = event.request
        if request.action is not None and request.action not in ACTION_PROMPTS:
            raise InvalidEvent(f"unknown action {request.action!r}")
        tenant = self.tenants.get(request.tenant)
        user_text = ACTION_PROMPTS[request.action] if request.action else request.message
        role = request.metadata.get("model_role", DEFAULT_ROLE)
        resolved = await self.profiles.resolve(role)
        usable = [p for p in (resolved[0], *resolved[1]) if tenant.model_allowed(p.model)]
        if not usable:
            return await self._refuse(event, role)
        primary, *fallbacks = usable
        recall = self.recall_limit and request.action is None
        # Two independent reads: run them concurrently, the turn waits for the slower one.
        memories, history = await asyncio.gather(
            self.memory.recall(request.tenant, event.principal, user_text, self.recall_limit)
            if recall
            else _nothing(),
            self.transcript.recent(request.session_id, self.history_limit),
        )
        system_text = tenant.system_prompt
        if memories:
            system_text += "\n\nWhat you remember of earlier conversations:\n" + "\n---\n".join(
                memories
            )
        system = ChatMessage("system", system_text)
        budget = (
            self.context_window_tokens
            - primary.max_tokens
            - estimate_tokens(system.content)
            - estimate_tokens(user_text)
        )
        messages = [system, *fit_history(history, budget), ChatMessage("user", user_text)]
        contextualized = TurnContextualized(
            request=request,
            principal=event.principal,
            messages=messages,
            profile=primary.to_event(),
            reserved_tokens=event.reserved_tokens,
            fallbacks=[p.to_event() for p in fallbacks],
            memories=memories,
        )
        return [Output(self.topics.contextualized.name, contextualized)]

    async def _refuse(self, event: TurnAuthorized, role: str) -> Sequence[Output]:
        request = event.request
        error = ErrorInfo(
            code="model_not_allowed",
            message=f"tenant {request.tenant!r} may not use the model(s) of role {role!r}; "
            "pick another model_role or ask an operator to change the tenant's models_allow",
        )
        await self.fanout.publish_error(request.session_id, request.event_id, error)
        failed = TurnCompleted(
            request=request,
            principal=event.principal,
            status="failed",
            completed_at_ms=int(time.time() * 1000),
            usage=Usage(),
            reserved_tokens=event.reserved_tokens,
            error=error,
        )
        return [Output(self.topics.completed.name, failed)]
