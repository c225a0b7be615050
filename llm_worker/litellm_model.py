"""LiteLLM adapter: the providers LiteLLM reaches through the guarded client, streamed.

LiteLLM is imported by `load_litellm` at the LLM stage's start-up, in that process only
(it costs seconds and ~200 MB), never as a side effect of importing this module.

Egress. Given the stage's guarded httpx client (llm_worker/guarded_http.py), which judges
the address each connection is opened to, a call goes only to a provider whose LiteLLM
route is known to connect through it (`GUARDED_PROVIDERS`, each checked by
tests/security/test_ssrf.py: a call to loopback is refused by the guarded client): the
OpenAI SDK's routes take it as `litellm.aclient_session` (`SDK_PROVIDERS`), LiteLLM's own
HTTP handler's take it as `client` (`HANDLER_PROVIDERS`), a provider's default endpoint
such as Ollama's `localhost:11434` included. Other routes open connections the guard
never sees (aiohttp, boto3, Google's SDK, ...): their calls are refused (EgressRefused
`provider_unguarded`) before LiteLLM resolves anything (resolving github_copilot's runs an
OAuth flow), unless MODEL_UNGUARDED_PROVIDERS lists the provider; a listed one gets only
the check below. Every call's endpoint (the profile's `base_url`, else the provider's
default as LiteLLM reports it) is also checked against the policy before the call.

The key is the profile's own secret (llm_worker/credentials.py) or a placeholder, so
LiteLLM never falls back to a provider key it finds in the environment.
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import AsyncIterator, Iterable
from types import ModuleType
from typing import Any

import httpx

from gateway_runtime.egress import EgressPolicy
from gateway_runtime.errors import EgressRefused, ProviderError
from gateway_runtime.ports import Chunk, ToolSpecs
from gateway_runtime.settings import LLMSettings
from llm_worker.credentials import Credentials
from llm_worker.wire import ToolCallAccumulator, provider_kwargs, wire_messages
from schemas.events import ChatMessage, ModelProfile, Usage

NO_KEY = "none"  # what LiteLLM is given for a profile without a secret
PROVIDER_UNGUARDED = "provider_unguarded"
# Providers whose LiteLLM route takes an AsyncHTTPHandler as `client`.
HANDLER_PROVIDERS = frozenset(
    {
        "anthropic", "ollama", "ollama_chat", "hosted_vllm", "groq", "deepseek", "mistral",
        "gemini", "huggingface", "together_ai", "xai", "openrouter", "bedrock",
        "fireworks_ai", "databricks", "azure_ai",
    }
)  # fmt: skip
# Providers whose LiteLLM route is the OpenAI SDK's, over `litellm.aclient_session`.
SDK_PROVIDERS = frozenset(
    {
        "openai", "azure", "text-completion-openai", "custom_openai", "deepinfra",
        "perplexity", "nvidia_nim", "cerebras", "lm_studio", "llamafile", "litellm_proxy",
        "xinference",
    }
)  # fmt: skip
GUARDED_PROVIDERS = HANDLER_PROVIDERS | SDK_PROVIDERS


def load_litellm(settings: LLMSettings) -> ModuleType:
    """LiteLLM, imported for this machine. It reads its switches from the environment as
    it is imported, so they are exported from the settings just before: with the
    defaults it never fetches its model cost map from the internet."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = settings.litellm_local_model_cost_map
    os.environ["LITELLM_OFFLINE_MODE"] = settings.litellm_offline_mode
    litellm: Any = importlib.import_module("litellm")
    litellm.telemetry = False
    litellm.suppress_debug_info = True  # no "Give Feedback" banners on stdout
    module: ModuleType = litellm
    return module


class LiteLLMModel:
    """The `ChatModel` port over `litellm.acompletion`."""

    def __init__(
        self,
        litellm: ModuleType,
        *,
        credentials: Credentials | None = None,
        policy: EgressPolicy | None = None,
        http: httpx.AsyncClient | None = None,
        unguarded_providers: Iterable[str] = (),
        timeout_s: float = 60.0,
    ) -> None:
        """`http`: the (guarded) client every LiteLLM connection goes through; it becomes
        LiteLLM's process-wide `aclient_session`, so there is one such model a process.
        With it, only `GUARDED_PROVIDERS` and the `unguarded_providers` listed are called;
        without it (tests, benchmarks) nothing is guarded and every provider is."""
        # Retries, fallbacks and cooldowns are the ModelRouter's (shared through Redis),
        # so LiteLLM makes exactly one attempt per call.
        self._litellm = litellm
        self._credentials = credentials
        self._policy = policy
        self._timeout_s = timeout_s
        self._handler: Any = None
        self._admitted: frozenset[str] | None = None  # None: every provider (no guard)
        if http is not None:
            module: Any = litellm
            module.aclient_session = http
            handlers = importlib.import_module("litellm.llms.custom_httpx.http_handler")
            self._handler = handlers.AsyncHTTPHandler(timeout=timeout_s)
            self._handler.client = http
            self._admitted = GUARDED_PROVIDERS | frozenset(unguarded_providers)

    async def stream(
        self, profile: ModelProfile, messages: list[ChatMessage], tools: ToolSpecs = ()
    ) -> AsyncIterator[Chunk]:
        kwargs = await self._call_kwargs(profile, tools)
        api_key = await self._api_key(profile)
        calls = ToolCallAccumulator()
        finished = received = False
        try:
            response = await self._litellm.acompletion(
                model=profile.model,
                api_base=profile.base_url,
                api_key=api_key,
                messages=wire_messages(messages),
                temperature=profile.temperature,
                max_tokens=profile.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                num_retries=0,
                timeout=self._timeout_s,
                **kwargs,
            )
            async for part in response:
                chunk = _chunk(part, calls)
                finished = finished or bool(chunk.finish_reason)
                received = received or bool(chunk.text)
                yield chunk
        except Exception as exc:  # LiteLLM raises many unrelated types; translate them all
            raise _translate(exc, profile, mid_stream=received) from exc
        if not finished:
            raise ProviderError(
                f"{profile.model}: stream ended without a finish reason", mid_stream=True
            )
        if whole := calls.calls():
            yield Chunk(tool_calls=whole)

    async def _call_kwargs(self, profile: ModelProfile, tools: ToolSpecs) -> dict[str, Any]:
        """The call's provider arguments, once its provider and endpoint pass the guard."""
        provider, endpoint = self._route(profile)
        if self._policy is not None and endpoint:
            await self._policy.check_url(endpoint)
        kwargs = provider_kwargs(profile)
        if self._handler is not None and provider in HANDLER_PROVIDERS:
            kwargs["client"] = self._handler
        if tools:
            # A copy: LiteLLM rewrites tool schemas in place for some providers, and the
            # offer is shared by every turn.
            kwargs["tools"] = copy.deepcopy(list(tools))
        return kwargs

    def _route(self, profile: ModelProfile) -> tuple[str, str | None]:
        """The provider LiteLLM will use and the endpoint it will call (None: unknown);
        EgressRefused for a provider the guard does not reach and no one listed."""
        declared, slash, _ = profile.model.partition("/")
        if slash and declared in self._litellm.provider_list:
            self._admit(declared, profile)  # before LiteLLM resolves anything of it
        try:
            _, provider, _, default = self._litellm.get_llm_provider(
                model=profile.model, api_base=profile.base_url
            )
        except Exception as exc:  # an unknown provider: acompletion would say so too
            if self._admitted is not None:
                raise ProviderError(
                    f"{profile.model}: LiteLLM knows no provider for it ({exc!r})",
                    retryable=False,
                ) from exc
            return "", profile.base_url
        self._admit(str(provider), profile)
        return str(provider), profile.base_url or default

    def _admit(self, provider: str, profile: ModelProfile) -> None:
        if self._admitted is None or provider in self._admitted:
            return
        raise EgressRefused(
            PROVIDER_UNGUARDED,
            f"{profile.model}: LiteLLM's {provider!r} route opens connections the egress"
            " guard cannot check; MODEL_UNGUARDED_PROVIDERS does not list it",
        )

    async def _api_key(self, profile: ModelProfile) -> str:
        secret = await self._credentials.api_key(profile) if self._credentials else None
        return secret or NO_KEY


def _chunk(part: Any, calls: ToolCallAccumulator) -> Chunk:
    """One streamed part as a Chunk; its tool-call deltas go to `calls`."""
    text, finish = "", None
    for choice in part.choices or ():
        text += getattr(choice.delta, "content", None) or ""
        deltas = getattr(choice.delta, "tool_calls", None) or ()
        for position, call in enumerate(deltas):
            _add_call(calls, position, call)
        finish = choice.finish_reason or finish
    usage = getattr(part, "usage", None)
    return Chunk(
        text=text,
        finish_reason=finish,
        usage=Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else None,
    )


def _translate(exc: Exception, profile: ModelProfile, *, mid_stream: bool) -> ProviderError:
    """The mesh's error for whatever LiteLLM raised."""
    refused = _egress_refusal(exc)
    if refused is not None:  # a guarded client refused the address: say so
        return refused
    # Its provider errors (RateLimitError, InternalServerError, ...) carry the upstream's
    # HTTP status; the router's retry policy depends on it.
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or repr(exc)
    return ProviderError(
        f"{profile.model}: {message}",
        status=status if isinstance(status, int) else None,
        mid_stream=mid_stream,
    )


def _egress_refusal(exc: BaseException) -> EgressRefused | None:
    """The EgressRefused a guarded client raised under LiteLLM's wrapping, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, EgressRefused):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _add_call(calls: ToolCallAccumulator, position: int, call: Any) -> None:
    """One streamed tool-call delta; LiteLLM gives objects (sometimes dicts) for them."""
    if isinstance(call, dict):
        calls.add_openai([{"index": position, **call}])
        return
    function = getattr(call, "function", None)
    index = getattr(call, "index", None)
    calls.add(
        position if index is None else int(index),
        getattr(call, "id", None),
        getattr(function, "name", None),
        getattr(function, "arguments", None),
    )
