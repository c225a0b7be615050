"""The policy stage's OPA client (adapters/opa.py) against what an OPA server can answer,
served by a real HTTP server on loopback: a decision, an error, no decision, no answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from adapters.opa import DECISION_PATH, OpaClient
from gateway_runtime.errors import PolicyUnavailable
from gateway_runtime.settings import OpaSettings

ASKED: list[dict[str, object]] = []


async def _decide(request: web.Request) -> web.Response:
    body = await request.json()
    ASKED.append(body)
    tenant = body["input"]["tenant"]
    if tenant == "broken":
        return web.Response(status=500, text="boom")
    if tenant == "unloaded":
        return web.json_response({})  # OPA's answer for a rule no policy defines
    if tenant == "slow":
        await asyncio.sleep(1)
    return web.json_response(
        {"result": {"allow": False, "reason": "budget", "message": "over", "retry_after": 7}}
    )


@pytest.fixture
async def opa() -> AsyncIterator[OpaClient]:
    app = web.Application()
    app.router.add_post(DECISION_PATH, _decide)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    settings = OpaSettings(opa_url=f"http://127.0.0.1:{runner.addresses[0][1]}", opa_timeout_s=0.3)
    try:
        async with aiohttp.ClientSession() as session:
            yield OpaClient(session, settings)
    finally:
        await runner.cleanup()


async def test_a_decision_is_read_from_the_result(opa: OpaClient) -> None:
    decision = await opa.decide({"tenant": "acme", "usage": {"tokens": 5}})
    assert (decision.allow, decision.reason, decision.retry_after) == (False, "budget", 7.0)
    assert ASKED[-1] == {"input": {"tenant": "acme", "usage": {"tokens": 5}}}


@pytest.mark.parametrize("tenant", ["broken", "unloaded", "slow"])
async def test_no_usable_answer_is_policy_unavailable(opa: OpaClient, tenant: str) -> None:
    with pytest.raises(PolicyUnavailable):
        await opa.decide({"tenant": tenant})
