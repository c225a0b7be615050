"""OpenFGA or OPA stopped mid-test: the auth mesh's own instances (its sandbox's).

OpenFGA: decisions cached within OPENFGA_CACHE_TTL_S keep working, then both the ingress
(503 authz_unavailable) and the policy stage (error event authz_unavailable) fail closed.
OPA: a fail-closed tenant's turns are refused (policy_unavailable), a fail-open tenant's
turns run. Every component is started again in a `finally`; the machine's own OpenFGA and
OPA (those `make up` runs) are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

import httpx
from redis.asyncio import Redis

from tests.security.conftest import OPENFGA_CACHE_TTL_S, AuthMesh
from tests.security.helpers import (
    as_key,
    eventually,
    first_of_turn,
    new_key,
    post_turn,
    turn_events,
)


@contextlib.asynccontextmanager
async def stopped(mesh: AuthMesh, component: str) -> AsyncIterator[None]:
    await mesh.sandbox.stop(component)
    try:
        yield
    finally:
        await mesh.sandbox.start(component)  # waits until the component answers again


async def _first_in_log(mesh: AuthMesh, session_id: str, turn_id: str) -> dict:
    """The turn's first event, read from the session's Redis log (SSE is refused now)."""
    redis = Redis.from_url(mesh.sandbox.redis_url)
    keys = mesh.sandbox.keys
    try:
        async with asyncio.timeout(15):
            while True:
                for _, fields in await redis.xrange(keys.stream(session_id)):
                    event = json.loads(fields[b"e"])
                    if event["turn_id"] == turn_id:
                        return event  # type: ignore[no-any-return]
                await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def _first_event(client: httpx.AsyncClient, session_id: str | None, text: str) -> dict:
    r = await post_turn(client, session_id, text)
    assert r.status_code == 202, r.text
    body = r.json()
    [*_, first] = await turn_events(client, body["session_id"], first_of_turn(body["event_id"]))
    return {"type": first.type, **first.data["data"]}


async def test_openfga_stopped_cached_decisions_then_fail_closed(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    key = await new_key(admin, auth_mesh.tenant("alpha"))
    session_id = f"fga-{uuid.uuid4().hex}"
    async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
        assert (await _first_event(client, session_id, "before"))["type"] == "turn.accepted"
        # OpenFGA answered each process within the last quarter of the TTL (the owners'
        # decisions ask it again in the background once its answer is that old), so the
        # cached decisions stand for between 3/4 of the TTL and the TTL from here.
        decided_at = time.monotonic()

        async with stopped(auth_mesh, "openfga"):
            # Within the TTL the cached decisions stand in: post (policy stage) and read,
            # and a new session (its claim writes nothing to OpenFGA) is its owner's too.
            during, fresh = await asyncio.gather(
                _first_event(client, session_id, "during"),
                _first_event(client, f"fga-{uuid.uuid4().hex}", "new"),
            )
            assert time.monotonic() - decided_at < 0.75 * OPENFGA_CACHE_TTL_S, (
                "the stop took too long"
            )
            assert during["type"] == "turn.accepted", during
            assert fresh["type"] == "turn.accepted", fresh

            async def read_refused() -> bool:
                # status only: a granted SSE stream never ends by itself
                url = f"/v1/session/{session_id}/events"
                async with client.stream("GET", url) as r:
                    if r.status_code == 503:
                        await r.aread()
                        assert r.json()["detail"]["code"] == "authz_unavailable"
                    return r.status_code == 503

            await eventually(read_refused, OPENFGA_CACHE_TTL_S + 10)
            closed_after = time.monotonic() - decided_at
            assert closed_after >= 0.75 * OPENFGA_CACHE_TTL_S - 0.5, closed_after
            # The policy stage fails closed too once its cached decision is too old.
            refused: list[str] = []

            async def policy_refuses() -> bool:
                r = await post_turn(client, session_id, "after the ttl")
                assert r.status_code == 202  # the session's claim is known; policy decides
                first = await _first_in_log(auth_mesh, session_id, r.json()["event_id"])
                if first["type"] == "error":
                    refused.append(r.json()["event_id"])
                    return True
                return False

            await eventually(policy_refuses, OPENFGA_CACHE_TTL_S + 10)
            # Past the TTL a new session is refused at once too.
            r = await post_turn(client, f"fga-{uuid.uuid4().hex}", "new")
            assert r.status_code == 503 and r.json()["detail"]["code"] == "authz_unavailable"
            assert "Retry-After" in r.headers
    # OpenFGA is back: the session can be read again, and its log shows the refusal.
    async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
        [*_, refusal] = await turn_events(client, session_id, first_of_turn(refused[0]))
        assert refusal.type == "error"
        assert refusal.data["data"]["code"] == "authz_unavailable"
        assert refusal.data["data"]["retryable"] is True
        back = await _first_event(client, session_id, "back")
        assert back["type"] == "turn.accepted"
    print(
        f"\nopenfga stopped: cached decisions used, fail closed {closed_after:.1f}s after the "
        f"last live decision (ttl {OPENFGA_CACHE_TTL_S:g}s)"
    )


async def test_opa_stopped_fails_closed_unless_the_tenant_fails_open(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    closed = await new_key(admin, auth_mesh.tenant("closed"))
    open_ = await new_key(admin, auth_mesh.tenant("open"))
    base = auth_mesh.mesh.base_url
    async with as_key(base, closed["secret"]) as c, as_key(base, open_["secret"]) as o:
        assert (await _first_event(c, None, "warm"))["type"] == "turn.accepted"
        async with stopped(auth_mesh, "opa"):
            refused = await _first_event(c, None, "closed tenant")
            assert refused["type"] == "error", refused
            assert refused["code"] == "policy_unavailable"
            assert refused["retryable"] is True and refused["retry_after_s"] > 0
            admitted = await _first_event(o, None, "open tenant")
            assert admitted["type"] == "turn.accepted", admitted
        assert (await _first_event(c, None, "opa back"))["type"] == "turn.accepted"
