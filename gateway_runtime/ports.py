"""The ports: what the stage loop and each stage's handler need from the world.

Handlers are typed against these Protocols, never against an adapter, so a handler reads
as its stage's logic alone and a unit test hands it an in-memory twin. The adapters that
implement them: `adapters/` (OpenFGA, OPA, budgets, profiles, memory, tenants), the
runtime's fan-out (`fanout.py`) and Kafka wiring, and a few that belong to one stage
(the LLM stage's router, the context stage's transcript, the persistence stage's store).
Plain values that cross the ports are defined here too.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway_runtime.delivery import Delivery
from schemas.codec import EncodedEvent
from schemas.events import (
    ChatMessage,
    ErrorInfo,
    Event,
    ModelProfile,
    ToolCall,
    TurnCompleted,
    Usage,
)

# ---- the stage loop ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    """An event a handler wants produced, and where."""

    topic: str
    event: Event


class StageHandler(Protocol):
    """A stage's logic: one event in, the events to produce out. No Kafka in here."""

    @property
    def stage(self) -> str: ...

    @property
    def input_topic(self) -> str: ...

    async def handle(self, event: Event) -> Sequence[Output]: ...


class ConsumedRecord(Protocol):
    """A record as a consumer hands it over (aiokafka's ConsumerRecord has these)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class RecordConsumer(Protocol):
    """The consumer side of the stage loop: a member of the stage's consumer group."""

    async def getmany(self, *, timeout_ms: int) -> Mapping[Any, Sequence[ConsumedRecord]]:
        """Records per partition (any hashable stands for a partition). Offsets are
        committed by the stage's transactions (gateway_runtime/transactions.py)."""
        ...


class Publisher(Protocol):
    async def publish(self, topic: str, record: EncodedEvent) -> None:
        """Acknowledged by the broker when this returns; raises RetryableError, or
        PublishRefused when the broker will never take this record."""
        ...


# Tells the client of a turn that a stage gave up on it (session_id, turn_id, error).
FailureNotifier = Callable[[str, str, ErrorInfo], Awaitable[None]]


# ---- the fan-out to clients ----------------------------------------------------------------


class Fanout(Protocol):
    """Publishes a session's client-visible events (see gateway_runtime/fanout.py)."""

    async def publish(
        self,
        session_id: str,
        turn_id: str,
        event_type: str,
        data: dict[str, Any],
        *,
        once_key: str | None = None,
    ) -> str | None:
        """The event's stream id; None when `once_key` was published before."""
        ...

    async def recorded(self, once_key: str) -> dict[str, Any] | None:
        """The event published under `once_key`, if one was."""
        ...

    async def publish_error(self, session_id: str, turn_id: str, error: ErrorInfo) -> None: ...


# ---- tenants and model profiles ------------------------------------------------------------

DEFAULT_TENANT = "default"  # anonymous turns, the bootstrap key, unset `tenant` fields
DEFAULT_PERSONA = "default"
DEFAULT_ROLE = "dialogue"  # the model role of a turn that names none (`model_role`)


@dataclass(frozen=True, slots=True)
class Tenant:
    """One tenant's prompt, budgets, limits and allow-lists (conf/tenants.yaml)."""

    name: str
    system_prompt: str = "You are a helpful, concise assistant."
    # When OPA (the policy engine) or the rate limiter (Redis and its Postgres fallback)
    # cannot be reached: admit (True) or refuse (False, the default). Budget reservations
    # hold either way.
    fail_open: bool = False
    tokens_per_day: int = 0
    # The personas the tenant declares (`personas:`); any other persona_id spends the
    # tenant's shared budget (persona `default`), so a made-up one opens no new budget.
    personas: frozenset[str] = frozenset()
    persona_tokens_per_day: dict[str, int] = field(default_factory=dict)
    rpm_per_key: int = 0
    rpm_per_tenant: int = 0
    tpm_per_key: int = 0
    tpm_per_tenant: int = 0
    models_allow: list[str] = field(default_factory=lambda: ["*"])
    models_deny: list[str] = field(default_factory=list)
    tools_allow: list[str] = field(default_factory=list)
    max_output_tokens: int = 256  # the cap on every model call of a turn (>= 1)
    # The most tokens of memories and transcript one prompt carries (0 = as many as
    # CONTEXT_WINDOW_TOKENS leaves room for); part of every turn's reservation.
    max_context_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def budget_persona(self, persona_id: str | None) -> str:
        """The persona whose budget a turn spends: a declared one, else `default`."""
        return persona_id if persona_id in self.personas else DEFAULT_PERSONA

    def budget_for(self, persona: str) -> int:
        """Daily token budget of a budget persona (`budget_persona`'s; 0 = unlimited)."""
        return self.persona_tokens_per_day.get(persona, self.tokens_per_day)

    def model_allowed(self, model: str) -> bool:
        if any(fnmatch.fnmatchcase(model, p) for p in self.models_deny):
            return False
        return any(fnmatch.fnmatchcase(model, p) for p in self.models_allow)

    def tool_allowed(self, tool: str) -> bool:
        return any(fnmatch.fnmatchcase(tool, p) for p in self.tools_allow)

    @property
    def rate_limited(self) -> bool:
        return any((self.rpm_per_key, self.rpm_per_tenant, self.tpm_per_key, self.tpm_per_tenant))


class Tenants(Protocol):
    def find(self, name: str) -> Tenant | None:
        """The tenant's configuration; None when the tenants file does not name it. The
        policy stage admits a turn only for a tenant it finds (`unknown_tenant`)."""
        ...

    def get(self, name: str) -> Tenant:
        """The tenant's configuration, for what runs after the policy stage admitted the
        turn (or before it decides, as the ingress's rate limits): a tenant no longer in
        the file gets `default`'s limits under its own name. Never a reason to admit."""
        ...

    def known(self, name: str) -> bool: ...

    def names(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """A model profile: the model serving a role in a deployment mode, and its fallbacks."""

    role: str
    deployment_mode: str
    model: str
    base_url: str | None = None
    api_path: str | None = None
    temperature: float = 0.7
    max_tokens: int = 256
    kwargs: dict[str, Any] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    cost_per_1k_tokens: float | None = None
    # The name of the provider secret the LLM stage sends with this profile's calls (never
    # the secret itself; llm_worker/credentials.py). Not in the event: the LLM stage reads
    # it from the stored profile, so a turn cannot name a credential.
    api_key_ref: str | None = None

    def to_event(self) -> ModelProfile:
        return ModelProfile(
            model=self.model,
            role=self.role,
            deployment_mode=self.deployment_mode,
            base_url=self.base_url,
            api_path=self.api_path,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            kwargs_json=json.dumps(self.kwargs),
        )


class Profiles(Protocol):
    async def resolve(self, role: str) -> tuple[StoredProfile, list[StoredProfile]]:
        """The role's profile (the default profile if the role has none) and its fallbacks."""
        ...


# ---- the policy stage ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy engine's answer on one turn."""

    allow: bool
    reason: str
    message: str
    retry_after: float = 0.0


class PolicyEngine(Protocol):
    async def decide(self, policy_input: dict[str, Any]) -> Decision: ...


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    used: int
    reserved: int
    seconds_to_reset: int


@dataclass(frozen=True, slots=True)
class Reservation:
    granted: bool
    amount: int
    usage: BudgetUsage


class Budgets(Protocol):
    """Daily token budgets: reserved before a turn's model call, settled after it."""

    async def usage(self, tenant: str, persona: str) -> BudgetUsage: ...

    async def reserve(
        self, turn_id: str, tenant: str, persona: str, estimate: int, budget: int
    ) -> Reservation:
        """Hold `estimate` tokens for the turn if they fit; a repeat returns the first hold."""
        ...

    async def settle(self, turn_id: str, tenant: str, persona: str, actual_tokens: int) -> bool:
        """Release the turn's reservation and count its usage; False if done before."""
        ...


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: str = ""  # which one refused: rpm_per_key, rpm_per_tenant, tpm_per_key, ...
    limit_value: int = 0
    retry_after_s: float | None = None  # None: the request can never fit that limit


class RateLimits(Protocol):
    """RPM/TPM per principal and per tenant (adapters/ratelimit.py): the ingress asks for
    its clients' turns, the policy stage for automations' (which never pass the ingress)."""

    async def admit(self, subject: str, tenant: Tenant, tokens: int) -> RateDecision: ...


class Admissions(Protocol):
    """Each turn admitted once (adapters/admissions.py): False for a second record of it."""

    async def admit(self, event_id: str, delivery: Delivery) -> bool: ...


@dataclass(frozen=True, slots=True)
class Automation:
    """An automation that publishes turns to its own inbound topic (adapters/automations.py)."""

    name: str
    tenant: str
    topic: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @property
    def principal(self) -> str:
        return f"automation:{self.name}"

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Principals(Protocol):
    """Which tenant a principal belongs to (adapters/principals.py), from the records that
    define it (keys, automations), never from a turn's own fields."""

    async def tenant_of(self, principal: str) -> str | None:
        """The tenant `principal` acts in now; None when it is unknown or revoked."""
        ...

    async def automation_of(self, topic: str) -> Automation | None:
        """The automation whose inbound topic `topic` is (revoked or not), if any."""
        ...


class SessionClaimer(Protocol):
    """The claim of a session by its first turn (adapters/session_claims.py)."""

    async def claim(
        self, subject: str, tenant_name: str, session_id: str, persona_id: str | None
    ) -> str | None:
        """The session's owner; raises SessionOfAnotherTenant when it is another tenant's."""
        ...

    async def can_write(self, subject: str, session_id: str) -> bool:
        """OpenFGA's `can_write`; AuthzUnavailable when it cannot be decided now."""
        ...


# ---- the context and persistence stages ----------------------------------------------------


class Transcript(Protocol):
    async def recent(self, session_id: str, limit: int) -> list[ChatMessage]:
        """The last `limit` messages of the session, oldest first."""
        ...

    async def holds(self, turn_id: str) -> bool:
        """The turn's exchange is in its session's transcript."""
        ...


class Memory(Protocol):
    async def recall(self, tenant: str, principal: str, query: str, limit: int) -> list[str]: ...

    async def remember(
        self, tenant: str, principal: str, session_id: str, turn_id: str, content: str
    ) -> None:
        """Idempotent per turn: a redelivered turn is remembered once."""
        ...


class TurnStore(Protocol):
    async def save(self, turn: TurnCompleted) -> bool:
        """Store a finished turn; False when it was stored before (a redelivery)."""
        ...


# ---- the LLM stage ---------------------------------------------------------------------------

# Tool definitions in the OpenAI `tools` format (see schemas/tools).
ToolSpecs = Sequence[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    # Whole tool calls, on the answer's last chunk only (adapters join the streamed pieces).
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Answering:
    """Which deployment is answering (yielded once, before its first chunk)."""

    profile: ModelProfile
    fallback: bool


class ChatModel(Protocol):
    """One model call, streamed; raises `ProviderError` (gateway_runtime.errors)."""

    def stream(
        self, profile: ModelProfile, messages: list[ChatMessage], tools: ToolSpecs = ()
    ) -> AsyncIterator[Chunk]:
        """Yield the answer's chunks as the provider sends them.

        With `tools`, the model may answer with tool calls (finish reason `tool_calls`).
        """
        ...


class Router(Protocol):
    """Deployments in order (retries, fallbacks, breakers): raises AllDeploymentsFailed."""

    def stream(
        self, profiles: list[ModelProfile], messages: list[ChatMessage], tools: ToolSpecs = ()
    ) -> AsyncIterator[Answering | Chunk]: ...


class Attempts(Protocol):
    async def begin(self, turn_id: str) -> int:
        """Record a start of the turn; returns which attempt this is (1 = first)."""
        ...
