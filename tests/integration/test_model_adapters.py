"""Both model adapters against the fake OpenAI-compatible upstream (a real HTTP server)."""

from __future__ import annotations

import aiohttp
import httpx
import pytest

from gateway_runtime.errors import ProviderError
from gateway_runtime.ports import ChatModel, Chunk, ToolSpecs
from llm_worker.openai_http import OpenAIHttpModel
from llm_worker.transport import AutoModel, openai_compatible
from schemas.events import ChatMessage, ModelProfile

MESSAGES = [ChatMessage("user", "hi")]


async def collect(model: ChatModel, profile: ModelProfile) -> list[Chunk]:
    return [chunk async for chunk in model.stream(profile, MESSAGES)]


def fake(fake_llm: str, name: str) -> ModelProfile:
    return ModelProfile(model=f"openai/{name}", base_url=fake_llm + "/v1")


async def test_streams_every_token_and_the_usage(adapter: ChatModel, fake_llm: str) -> None:
    chunks = await collect(adapter, fake(fake_llm, "fake"))
    text = [c.text for c in chunks if c.text]
    assert text == [f"tok{i} " for i in range(20)]
    assert [c.usage for c in chunks if c.usage][-1].completion_tokens == 20
    assert any(c.finish_reason == "stop" for c in chunks)


async def test_the_lean_client_keeps_its_connection_for_the_next_call(fake_llm: str) -> None:
    """A stream read to its end leaves the connection in the pool: against a real
    provider every new one is a TCP and TLS handshake before the first token."""
    async with aiohttp.ClientSession() as session, httpx.AsyncClient() as admin:
        before = (await admin.get(fake_llm + "/admin/stats")).json()["connections"]
        model = OpenAIHttpModel(session)
        for _ in range(3):
            chunks = await collect(model, fake(fake_llm, "fake"))
            assert "".join(c.text for c in chunks) == "".join(f"tok{i} " for i in range(20))
        after = (await admin.get(fake_llm + "/admin/stats")).json()["connections"]
    assert after - before == 1  # one for all three calls (the admin's was counted before)


@pytest.mark.parametrize(("name", "status"), [("fake:error_500", 500), ("fake:error_429", 429)])
async def test_http_errors_before_the_first_token(
    adapter: ChatModel, fake_llm: str, name: str, status: int
) -> None:
    with pytest.raises(ProviderError) as info:
        await collect(adapter, fake(fake_llm, name))
    assert info.value.status == status
    assert info.value.mid_stream is False


async def test_a_reset_mid_stream_is_an_error(adapter: ChatModel, fake_llm: str) -> None:
    received: list[str] = []
    with pytest.raises(ProviderError) as info:
        async for chunk in adapter.stream(fake(fake_llm, "fake:reset"), MESSAGES):
            received.append(chunk.text)
    assert info.value.mid_stream is True
    assert 0 < len([t for t in received if t]) < 20


async def test_unreachable_endpoint(adapter: ChatModel) -> None:
    profile = ModelProfile(model="openai/x", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ProviderError) as info:
        await collect(adapter, profile)
    assert info.value.mid_stream is False


async def test_auto_picks_the_lean_client_only_for_openai_compatible_servers() -> None:
    calls: list[str] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        async def stream(
            self, profile: ModelProfile, messages: list[ChatMessage], tools: ToolSpecs = ()
        ):
            calls.append(self.name)
            yield Chunk("x")

    auto = AutoModel(Recorder("lean"), Recorder("litellm"))
    await collect(auto, ModelProfile(model="openai/m", base_url="http://h/v1"))
    await collect(auto, ModelProfile(model="anthropic/claude-x"))
    await collect(auto, ModelProfile(model="openai/gpt-4o-mini"))
    assert calls == ["lean", "litellm", "litellm"]
    assert openai_compatible(ModelProfile(model="openai/m", base_url="http://h"))
