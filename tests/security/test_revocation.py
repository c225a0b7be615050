"""Revocation bites at once (issue 9, item 4).

Revoking a key (`DELETE /v1/keys/{id}`) ends the SSE and WebSocket streams it holds on
every ingress replica within a second (a Redis revocation channel every replica listens
to; each replica also re-checks its streams' keys in Postgres, so a revocation made while
Redis is hung still reaches them), and removes every OpenFGA relation naming the key:
when OpenFGA does not answer at the time, the removal is retried until it is done. The
outages are of the auth mesh's own Redis and OpenFGA (its sandbox's), resumed in a
`finally`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

import httpx
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from adapters import openfga
from testbed.sandbox import Sandbox
from tests.security.conftest import AuthMesh
from tests.security.helpers import as_key, eventually, new_key, post_turn

CLOSE_WITHIN_S = 1.0
# Redis hung: a replica learns of the revocation from its own re-check of the keys of its
# streams in Postgres, every KEY_REVOCATION_CHECK_S (1 s by default).
CLOSE_WITHOUT_REDIS_WITHIN_S = 2.5
Relation = tuple[str, str, str]


async def relations_of(sandbox: Sandbox, subject: str) -> list[Relation]:
    """Every tuple whose user is `subject`, read from the sandbox's OpenFGA itself."""
    user = openfga.user(subject)
    found: list[Relation] = []
    async with httpx.AsyncClient(base_url=sandbox.openfga_api_url, timeout=10) as fga:
        stores = (await fga.get("/stores", params={"name": sandbox.name})).json()["stores"]
        [store] = [s["id"] for s in stores if s["name"] == sandbox.name]
        for object_type in ("tenant", "session"):  # every type a user is related to
            token = ""
            while True:
                r = await fga.post(
                    f"/stores/{store}/read",
                    json={
                        "tuple_key": {"user": user, "object": f"{object_type}:"},
                        "page_size": 100,
                        "continuation_token": token,
                    },
                )
                r.raise_for_status()
                body = r.json()
                found += [
                    (t["key"]["user"], t["key"]["relation"], t["key"]["object"])
                    for t in body["tuples"]
                ]
                token = body.get("continuation_token") or ""
                if not token:
                    break
    return found


@dataclass
class Held:
    """One stream held open by the key: SSE or WebSocket, on one replica."""

    kind: str
    base_url: str
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None
    close_code: int | None = None
    last: str = ""  # SSE: the last data line; WebSocket: the close reason

    @property
    def name(self) -> str:
        return f"{self.kind} on {self.base_url}"


async def hold(held: Held, secret: str, session_id: str) -> None:
    """Open the stream, read it until the server ends it, note when."""
    if held.kind == "sse":
        async with (
            as_key(held.base_url, secret) as client,
            client.stream("GET", f"/v1/session/{session_id}/events") as response,
        ):
            assert response.status_code == 200, held.name
            held.opened.set()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    held.last = line
        held.ended_at = time.monotonic()
        return
    url = held.base_url.replace("http://", "ws://") + f"/v1/session/{session_id}/stream"
    async with connect(url, additional_headers={"Authorization": f"Bearer {secret}"}) as ws:
        held.opened.set()
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        held.ended_at = time.monotonic()
        held.close_code = ws.close_code
        held.last = ws.close_reason or ""


async def _key_with_a_session(auth_mesh: AuthMesh, admin: httpx.AsyncClient) -> tuple[dict, str]:
    """A new key of tenant alpha with the admin scope, owning a new session."""
    key = await new_key(admin, auth_mesh.tenant("alpha"), ["turns", "admin"])
    session_id = f"rev-{uuid.uuid4().hex}"
    async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
        r = await post_turn(client, session_id)
        assert r.status_code == 202, r.text
    relations = {
        (r, o) for _, r, o in await relations_of(auth_mesh.sandbox, f"key:{key['key_id']}")
    }
    tenant = openfga.tenant(auth_mesh.tenant("alpha"))
    # The session's owner is its row in Postgres (a contextual tuple in every check), so
    # its claim wrote nothing to OpenFGA: only the key's tenant roles are stored there.
    assert relations == {("member", tenant), ("admin", tenant)}
    return key, session_id


async def _revoke_while_held(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, key: dict, session_id: str, within_s: float
) -> httpx.Response:
    """Hold an SSE and a WebSocket stream on each replica, revoke the key, check that
    every stream ended within `within_s` of the DELETE being sent."""
    held = [Held(kind, url) for url in auth_mesh.urls for kind in ("sse", "ws")]
    tasks = [asyncio.create_task(hold(h, key["secret"], session_id)) for h in held]
    try:
        async with asyncio.timeout(20):
            await asyncio.gather(*(h.opened.wait() for h in held))
        sent = time.monotonic()
        response = await admin.delete(f"/v1/keys/{key['key_id']}")
        assert response.status_code == 200, response.text
        assert response.json()["revoked"] is True
        done, _ = await asyncio.wait(tasks, timeout=within_s + 5)
        for task in done:
            task.result()  # a stream that failed otherwise fails the test
        late = {
            h.name: None if h.ended_at is None else round(h.ended_at - sent, 3)
            for h in held
            if h.ended_at is None or h.ended_at - sent > within_s
        }
        assert not late, f"streams not ended within {within_s}s of the revocation: {late}"
        assert [h.close_code for h in held if h.kind == "ws"] == [1008, 1008]
        for h in held:  # SSE: a last error event; WebSocket: the close reason
            assert "key_revoked" in h.last, (h.name, h.last)
        return response
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _refused_everywhere(auth_mesh: AuthMesh, secret: str) -> None:
    for url in auth_mesh.urls:
        async with as_key(url, secret) as client:
            r = await post_turn(client, None)
            assert r.status_code == 401, (url, r.text)
            assert r.json()["detail"]["code"] == "key_revoked"


async def test_revoking_a_key_ends_its_streams_on_every_replica_and_removes_its_relations(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    key, session_id = await _key_with_a_session(auth_mesh, admin)
    response = await _revoke_while_held(auth_mesh, admin, key, session_id, CLOSE_WITHIN_S)
    assert response.json()["cleanup_pending"] is False
    # every relation naming the key is gone when the DELETE answers: tenant and sessions
    assert await relations_of(auth_mesh.sandbox, f"key:{key['key_id']}") == []
    await _refused_everywhere(auth_mesh, key["secret"])


async def test_a_revocation_while_openfga_is_paused_removes_the_relations_once_it_answers(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    key, _ = await _key_with_a_session(auth_mesh, admin)
    subject = f"key:{key['key_id']}"
    await auth_mesh.sandbox.pause("openfga")
    try:
        r = await admin.delete(f"/v1/keys/{key['key_id']}")
        assert r.status_code == 200, r.text
        assert r.json()["revoked"] is True and r.json()["cleanup_pending"] is True
        await _refused_everywhere(auth_mesh, key["secret"])  # revoked all the same
    finally:
        await auth_mesh.sandbox.resume("openfga")

    async def removed() -> bool:
        return await relations_of(auth_mesh.sandbox, subject) == []

    await eventually(removed, timeout=20)


async def test_a_revocation_while_redis_is_hung_still_ends_streams_everywhere(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    key, session_id = await _key_with_a_session(auth_mesh, admin)
    sandbox = auth_mesh.sandbox
    cache_key = sandbox.keys.api_key(key["key_id"])
    redis = Redis.from_url(sandbox.redis_url)
    try:
        cached = json.loads(await redis.get(cache_key) or "{}")
        assert cached.get("r") is False, cached  # the key's use cached it, valid
        await sandbox.pause("redis")
        try:
            r = await _revoke_while_held(
                auth_mesh, admin, key, session_id, CLOSE_WITHOUT_REDIS_WITHIN_S
            )
            assert r.json()["cleanup_pending"] is True  # the cache could not be written
            await _refused_everywhere(auth_mesh, key["secret"])  # from Postgres meanwhile
        finally:
            await sandbox.resume("redis")

        # Redis is back with the valid copy it had: the retried clean-up replaces it.
        async def cache_says_revoked() -> bool:
            return bool(json.loads(await redis.get(cache_key) or "{}").get("r"))

        await eventually(cache_says_revoked, timeout=15)
        await _refused_everywhere(auth_mesh, key["secret"])
    finally:
        await redis.aclose()
