"""`python -m llm_worker`: wires settings → adapters → the runtime's stage loop."""

from __future__ import annotations

import asyncio

import httpx

from gateway_runtime.worker import fanout_publisher, redis_client, run_worker, serve_stage
from llm_worker.attempts import TurnAttempts
from llm_worker.handler import LLMHandler
from llm_worker.model import ChatModel
from llm_worker.settings import LLMSettings
from schemas.topics import Topics


async def main(settings: LLMSettings, stop: asyncio.Event) -> None:
    timeout = httpx.Timeout(settings.llm_timeout_s, connect=5.0)
    limits = httpx.Limits(max_connections=settings.max_in_flight, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(timeout=timeout, limits=limits) as http,
        redis_client(settings.redis_url) as redis,
    ):
        model: ChatModel
        if settings.llm_transport == "http":
            from llm_worker.openai_http import OpenAIHttpModel

            model = OpenAIHttpModel(http, api_key=settings.llm_api_key)
        else:
            from llm_worker.litellm_model import LiteLLMModel

            model = LiteLLMModel(api_key=settings.llm_api_key)
        fanout = fanout_publisher(redis, settings)
        handler = LLMHandler(
            topics=Topics.for_namespace(settings.kafka_namespace),
            model=model,
            fanout=fanout,
            attempts=TurnAttempts(redis),
        )
        await serve_stage(handler, settings, stop, fanout=fanout)


if __name__ == "__main__":
    settings = LLMSettings()
    run_worker(settings, lambda stop: main(settings, stop))
