"""The lean OpenAI-compatible client (llm_worker/openai_http.py) against stream shapes
the fake upstream does not send, served by a real HTTP server on loopback; and the guard
of the aiohttp session it is given. (Its calls through the whole guard, by address and by
name: tests/security/test_ssrf.py.)"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway_runtime.egress import EgressPolicy
from gateway_runtime.errors import EgressRefused, ProviderError
from llm_worker.guarded_http import GuardedResolver, judged_socket
from llm_worker.openai_http import OpenAIHttpModel
from schemas.events import ChatMessage, ModelProfile

LONG = "x" * 3_000_000  # longer than aiohttp's own line reader takes (512 KiB here)


def _event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\r\n\r\n"


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    model = (await request.json())["model"]
    if model == "long":
        chunk = _event({"choices": [{"delta": {"content": LONG}}]})
        for start in range(0, len(chunk), 64_000):  # one line, many reads
            await response.write(chunk[start : start + 64_000])
    else:
        await response.write(b"data: \xff\xfe not json\n\n")
    await response.write(_event({"choices": [{"delta": {}, "finish_reason": "stop"}]}))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def test_a_line_longer_than_aiohttps_buffer_arrives_whole(upstream: str) -> None:
    async with aiohttp.ClientSession() as session:
        model = OpenAIHttpModel(session)
        chunks = [
            c
            async for c in model.stream(
                ModelProfile("openai/long", base_url=upstream), [ChatMessage("user", "hi")]
            )
        ]
    assert "".join(c.text for c in chunks) == LONG
    assert chunks[-1].finish_reason == "stop"


async def test_a_chunk_that_is_not_utf8_json_is_a_provider_error(upstream: str) -> None:
    async with aiohttp.ClientSession() as session:
        model = OpenAIHttpModel(session)
        with pytest.raises(ProviderError) as info:
            _ = [
                c
                async for c in model.stream(
                    ModelProfile("openai/bad", base_url=upstream), [ChatMessage("user", "hi")]
                )
            ]
    assert "malformed stream chunk" in str(info.value)


# ---- the guard of its session (llm_worker/guarded_http.py) ------------------------------


async def test_the_sessions_resolver_refuses_a_name_with_any_forbidden_address() -> None:
    """The same verdict as the httpx client's: every address of the name judged, so which
    one aiohttp would try first does not matter."""
    with pytest.raises(EgressRefused):
        await GuardedResolver(EgressPolicy([]), 5).resolve("localhost", 8080)
    found = await GuardedResolver(EgressPolicy(["127.0.0.0/8", "[::1]"]), 5).resolve(
        "localhost", 8080
    )
    assert found and {r["host"] for r in found} <= {"127.0.0.1", "::1"}
    assert {(r["hostname"], r["port"]) for r in found} == {("localhost", 8080)}


def test_the_sessions_sockets_are_opened_only_to_admitted_addresses() -> None:
    """aiohttp does not resolve an address written in the URL: the socket factory is
    where it is judged."""
    make = judged_socket(EgressPolicy(["127.0.0.1:8080"]))
    stream = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
    with make((*stream, ("127.0.0.1", 8080))) as sock:
        assert sock.family == socket.AF_INET
    for sockaddr in (("127.0.0.1", 8081), ("10.0.0.1", 8080), ("169.254.169.254", 80)):
        with pytest.raises(EgressRefused):
            make((*stream, sockaddr))
