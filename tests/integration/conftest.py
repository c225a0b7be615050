"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from gateway_runtime.ports import ChatModel
from gateway_runtime.postgres import migrate
from gateway_runtime.settings import LLMSettings
from llm_worker.openai_http import OpenAIHttpModel
from testbed.sandbox import Sandbox


@pytest.fixture
async def pool(sandbox: Sandbox) -> AsyncIterator[asyncpg.Pool]:
    """The sandbox's database, migrated."""
    pool = await asyncpg.create_pool(sandbox.postgres_dsn, min_size=1, max_size=20)
    try:
        await migrate(pool)
        yield pool
    finally:
        await pool.close()


@pytest.fixture(params=["http", "litellm"])
async def adapter(request: pytest.FixtureRequest) -> AsyncIterator[ChatModel]:
    """Each model adapter in turn: the lean aiohttp client and LiteLLM."""
    if request.param == "http":
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=10)) as session:
            yield OpenAIHttpModel(session)
    else:
        from llm_worker.litellm_model import LiteLLMModel, load_litellm

        yield LiteLLMModel(load_litellm(LLMSettings()), timeout_s=10)
