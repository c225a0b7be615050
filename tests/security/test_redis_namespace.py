"""Every Redis key a mesh writes carries its namespace (gateway_runtime/redis_keys.py).

One authenticated turn of a tenant with a budget and a rate limit touches every kind of
key: the API key cache, the rate limit log, the budget bucket, reservation and settlement,
the turn's attempts, its once-published end, the deployment's breaker and statistics, and
the session's event log. A key outside the namespace would be shared with, and visible
to, every other mesh on the same Redis.
"""

from __future__ import annotations

import httpx
from redis.asyncio import Redis

from tests.security.conftest import AuthMesh
from tests.security.helpers import as_key, end_of_turn, new_key, post_turn, turn_events

KINDS = {
    "apikey",
    "rl",
    "turn-attempts",
    "turn-ended",
    "breaker",
    "deployment-stats",
    "events",
}


async def test_every_redis_key_carries_the_mesh_namespace(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    key = await new_key(admin, auth_mesh.tenant("keys"))
    async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
        r = await post_turn(client, None, "every kind of key")
        assert r.status_code == 202, r.text
        body = r.json()
        events = await turn_events(client, body["session_id"], end_of_turn(body["event_id"]))
        assert events[-1].type == "assistant.final"
    sandbox = auth_mesh.sandbox
    redis = Redis.from_url(sandbox.redis_url)
    try:
        keys = [k.decode() async for k in redis.scan_iter(count=1000)]
    finally:
        await redis.aclose()
    outside = [k for k in keys if not k.startswith(sandbox.namespace + ":")]
    assert outside == []
    kinds = {k[len(sandbox.namespace) + 1 :].split(":", 1)[0] for k in keys}
    assert kinds >= KINDS, KINDS - kinds
