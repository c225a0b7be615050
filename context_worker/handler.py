"""The context stage's logic: TurnAuthorized in, TurnContextualized out.

Messages = the tenant's system prompt, memories recalled for the user's message, the
session's transcript, then the user's message (or the action's prompt over the
transcript). Memories, then the newest transcript, fill only the room the policy stage
reserved the turn's budget for (`gateway_runtime/tokens.py`: what CONTEXT_WINDOW_TOKENS
leaves after the answer, at most the tenant's `max_context_tokens`). The model profile
comes from the request's `model_role` metadata (default `dialogue`), with its fallbacks,
less any model the tenant may not use; when none is left the turn ends here as failed
(`model_not_allowed`). Every profile asks for at most the turn's output cap (the
tenant's `max_output_tokens`, carried by `TurnAuthorized`).

A turn of the OpenAI API (`request.api`) brings its conversation in `request.messages`:
they are sent as the client wrote them (a `developer` message as `system`), after the
session's transcript when the turn joins a session, with the tenant's system prompt first
only when the client sent no system message of its own; nothing is recalled for them.
The transcript is trimmed to fit, the client's messages never are: when they alone do not
fit, the turn fails with `context_length_exceeded`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from context_worker.prompts import ACTION_PROMPTS
from gateway_runtime.errors import InvalidEvent
from gateway_runtime.ports import (
    DEFAULT_ROLE,
    Fanout,
    Memory,
    Output,
    Profiles,
    Tenant,
    Tenants,
    Transcript,
)
from gateway_runtime.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    context_room,
    estimate_messages,
    estimate_tokens,
)
from schemas.events import (
    ChatMessage,
    ErrorInfo,
    Event,
    ModelProfile,
    TurnAuthorized,
    TurnCompleted,
    TurnContextualized,
    Usage,
)
from schemas.topics import Topics

log = logging.getLogger(__name__)


async def _nothing() -> list[str]:
    return []


MEMORY_HEADER = "\n\nWhat you remember of earlier conversations:\n"
MEMORY_SEPARATOR = "\n---\n"


def fit_history(history: list[ChatMessage], budget_tokens: int) -> list[ChatMessage]:
    """The newest messages whose estimated tokens fit the budget, oldest first."""
    kept: list[ChatMessage] = []
    for message in reversed(history):
        budget_tokens -= estimate_messages([message])
        if budget_tokens < 0:
            break
        kept.append(message)
    return kept[::-1]


def fit_memories(memories: list[str], budget_tokens: int) -> list[str]:
    """The first memories (best recalled first) whose block fits the budget."""
    kept: list[str] = []
    for memory in memories:
        if estimate_tokens(MEMORY_HEADER + MEMORY_SEPARATOR.join([*kept, memory])) > budget_tokens:
            break
        kept.append(memory)
    return kept


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
    transcript_wait_s: float = 5.0
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
        # The cap the policy stage reserved for (0: a record from before it was carried).
        cap = event.max_output_tokens or tenant.max_output_tokens
        user_text = ACTION_PROMPTS[request.action] if request.action else request.message
        role = request.metadata.get("model_role", DEFAULT_ROLE)
        usable = await self._usable_profiles(role, tenant, cap)
        if not usable:
            return await self._refuse(event, role)
        primary, *fallbacks = usable
        memories: list[str] = []
        if request.api is not None:
            built = await self._api_messages(event, tenant, cap)
            if isinstance(built, ErrorInfo):
                return await self._fail(event, built)
            messages = built
        else:
            memories, messages = await self._session_messages(event, tenant, cap, user_text)
        contextualized = TurnContextualized(
            request=request,
            principal=event.principal,
            messages=messages,
            profile=primary,
            reserved_tokens=event.reserved_tokens,
            fallbacks=fallbacks,
            memories=memories,
        )
        return [Output(self.topics.contextualized.name, contextualized)]

    async def _session_messages(
        self, event: TurnAuthorized, tenant: Tenant, cap: int, user_text: str
    ) -> tuple[list[str], list[ChatMessage]]:
        """The memories recalled, and the system prompt, memories, transcript and the
        user's message (or the action's prompt) that fit."""
        memories, history = await self._read(event, user_text)
        # Memories, then the transcript, fill the room the policy stage reserved for.
        fixed = estimate_tokens(tenant.system_prompt) + estimate_tokens(user_text)
        room = context_room(
            window=self.context_window_tokens,
            max_context=tenant.max_context_tokens,
            output=cap,
            fixed=fixed + 2 * MESSAGE_OVERHEAD_TOKENS,
        )
        system_text = tenant.system_prompt
        if memories := fit_memories(memories, room):
            block = MEMORY_HEADER + MEMORY_SEPARATOR.join(memories)
            system_text += block
            room -= estimate_tokens(block)
        system = ChatMessage("system", system_text)
        return memories, [system, *fit_history(history, room), ChatMessage("user", user_text)]

    async def _api_messages(
        self, event: TurnAuthorized, tenant: Tenant, cap: int
    ) -> list[ChatMessage] | ErrorInfo:
        """An OpenAI API turn's messages, or why they cannot fit."""
        request = event.request
        sent = [
            dataclasses.replace(m, role="system") if m.role == "developer" else m
            for m in request.messages
        ]
        if not any(m.role == "system" for m in sent) and tenant.system_prompt:
            sent = [ChatMessage("system", tenant.system_prompt), *sent]
        needed = estimate_messages(sent)
        if needed + cap > self.context_window_tokens:
            return ErrorInfo(
                code="context_length_exceeded",
                message=f"the messages take about {needed} tokens, more than the "
                f"{self.context_window_tokens - cap} this model's context leaves beside "
                f"an answer of up to {cap}; shorten them or ask for fewer tokens",
            )
        room = context_room(
            window=self.context_window_tokens,
            max_context=tenant.max_context_tokens,
            output=cap,
            fixed=needed,
        )
        if request.after_turn_id:
            await self._transcribed(request.after_turn_id)
        history = await self.transcript.recent(request.session_id, self.history_limit)
        kept = fit_history(history, room)
        system = sent[:1] if sent and sent[0].role == "system" else []
        return [*system, *kept, *sent[len(system) :]]

    async def _transcribed(self, turn_id: str) -> None:
        """Wait, up to `transcript_wait_s`, until the transcript holds `turn_id`: the turn
        continues its exchange, which the persistence stage stores just after the answer
        the client has already seen. Past the wait it goes on with what is there."""
        deadline = time.monotonic() + self.transcript_wait_s
        pause = 0.01
        while not await self.transcript.holds(turn_id):
            if time.monotonic() + pause > deadline:
                log.warning("turn %s is not in the transcript yet; going on without it", turn_id)
                return
            await asyncio.sleep(pause)  # a poll of Postgres, backing off to 0.2 s
            pause = min(pause * 2, 0.2)

    async def _usable_profiles(self, role: str, tenant: Tenant, cap: int) -> list[ModelProfile]:
        """The role's profile and fallbacks the tenant may use, each capped at `cap`."""
        primary, fallbacks = await self.profiles.resolve(role)
        return [
            dataclasses.replace(p.to_event(), max_tokens=min(p.max_tokens, cap))
            for p in (primary, *fallbacks)
            if tenant.model_allowed(p.model)
        ]

    async def _read(
        self, event: TurnAuthorized, user_text: str
    ) -> tuple[list[str], list[ChatMessage]]:
        """Memories recalled for the user's text (none for an action) and the transcript:
        two independent reads, run concurrently, so the turn waits for the slower one."""
        request = event.request
        recall = self.recall_limit and request.action is None
        memories, history = await asyncio.gather(
            self.memory.recall(request.tenant, event.principal, user_text, self.recall_limit)
            if recall
            else _nothing(),
            self.transcript.recent(request.session_id, self.history_limit),
        )
        return memories, history

    async def _refuse(self, event: TurnAuthorized, role: str) -> Sequence[Output]:
        request = event.request
        error = ErrorInfo(
            code="model_not_allowed",
            message=f"tenant {request.tenant!r} may not use the model(s) of role {role!r}; "
            "pick another model_role or ask an operator to change the tenant's models_allow",
        )
        return await self._fail(event, error)

    async def _fail(self, event: TurnAuthorized, error: ErrorInfo) -> Sequence[Output]:
        """End the turn here: its stream gets `error`, and it is stored as failed."""
        request = event.request
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
