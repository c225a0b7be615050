"""`python -m llm_worker`: wires settings → adapters → the runtime's stage loop."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx

from adapters.deployments import DeploymentHealth
from adapters.profiles import DEFAULT_SECRET_REF, ProfileStore
from adapters.tenants import TenantDirectory
from gateway_runtime.egress import EgressPolicy
from gateway_runtime.ports import ChatModel
from gateway_runtime.postgres import create_pool
from gateway_runtime.redis_gate import RedisGate
from gateway_runtime.redis_keys import RedisKeys
from gateway_runtime.settings import LLMSettings
from gateway_runtime.worker import fanout_publisher, redis_client, run_worker, serve_stage
from llm_worker.attempts import TurnAttempts
from llm_worker.credentials import Credentials, ProfileCredentials, SecretSource
from llm_worker.guarded_http import guarded_client, guarded_session
from llm_worker.handler import LLMHandler
from llm_worker.openai_http import OpenAIHttpModel
from llm_worker.router import ModelRouter
from llm_worker.tool_requests import ToolOffer
from llm_worker.transport import AutoModel
from schemas.tools import load_definitions
from schemas.topics import Topics

CONNECT_TIMEOUT_S = 5.0  # to open a connection to a model endpoint


def secret_source(settings: LLMSettings) -> SecretSource:
    """MODEL_API_KEYS, LLM_API_KEY as the ref `default`, then $SOMA_HOME/secrets/<ref>."""
    named = {ref: secret.get_secret_value() for ref, secret in settings.model_api_keys.items()}
    if settings.llm_api_key is not None:
        named.setdefault(DEFAULT_SECRET_REF, settings.llm_api_key.get_secret_value())
    return SecretSource(settings.soma_home / "secrets", named)


def build_model(
    settings: LLMSettings,
    session: aiohttp.ClientSession,
    http: httpx.AsyncClient,
    credentials: Credentials,
    policy: EgressPolicy,
) -> ChatModel:
    """The model port. Every model call goes through a guarded client: `session` for the
    lean adapter, `http` for LiteLLM."""
    lean = OpenAIHttpModel(session, credentials)
    if settings.llm_transport == "http":
        return lean
    from llm_worker.litellm_model import LiteLLMModel, load_litellm

    litellm = LiteLLMModel(
        load_litellm(settings),
        credentials=credentials,
        policy=policy,
        http=http,
        unguarded_providers=settings.model_unguarded_providers,
        timeout_s=settings.llm_timeout_s,
    )
    return litellm if settings.llm_transport == "litellm" else AutoModel(lean, litellm)


async def main(settings: LLMSettings, stop: asyncio.Event) -> None:
    timeout = httpx.Timeout(settings.llm_timeout_s, connect=CONNECT_TIMEOUT_S)
    limits = httpx.Limits(max_connections=settings.max_in_flight, max_keepalive_connections=64)
    keys = RedisKeys(settings.kafka_namespace)
    policy = EgressPolicy(settings.egress_allow)
    pool = await create_pool(settings, max_size=4)
    credentials = ProfileCredentials(ProfileStore(pool), secret_source(settings))
    try:
        async with (
            guarded_session(
                policy,
                read_timeout_s=settings.llm_timeout_s,
                connect_timeout_s=CONNECT_TIMEOUT_S,
                limit=settings.max_in_flight,
            ) as session,
            guarded_client(policy, timeout=timeout, limits=limits) as http,
            redis_client(settings) as redis,
        ):
            fanout = fanout_publisher(redis, settings, pool)
            gate = RedisGate.of(redis)  # breakers and attempt counts: one Redis, one gate
            health = DeploymentHealth(
                redis,
                keys,
                threshold=settings.breaker_failure_threshold,
                cooldown_s=settings.breaker_cooldown_s,
                window_s=settings.breaker_window_s,
                gate=gate,
            )
            router = ModelRouter(
                build_model(settings, session, http, credentials, policy),
                health,
                retries=settings.llm_retries,
                backoff_s=settings.llm_retry_backoff_s,
            )
            tenants = TenantDirectory(settings.tenants_file)
            handler = LLMHandler(
                topics=Topics.for_namespace(settings.kafka_namespace),
                keys=keys,
                router=router,
                fanout=fanout,
                attempts=TurnAttempts(redis, keys, gate=gate),
                tools=ToolOffer(load_definitions(), tenants, settings.max_tool_rounds),
                delta_window_s=settings.delta_coalesce_ms / 1000,
            )
            try:
                await serve_stage(handler, settings, stop, fanout=fanout)
            finally:
                await gate.close()
    finally:
        await pool.close()


if __name__ == "__main__":
    settings = LLMSettings()
    run_worker(settings, lambda stop: main(settings, stop))
