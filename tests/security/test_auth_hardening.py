"""Ingress authentication, hardened (issue 9, items 2, 6 and part of 7), on real processes.

Besides the authenticated mesh (tests/security/conftest.py), two more ingress processes of
the same sandbox: `local` runs with auth off, as `make up` does; `idp` accepts RS256
tokens from a fake identity provider on loopback (tests/fake_idp.py) and answers a client
address with 429 after AUTH_FAILURE_LIMIT=5 failed authentications.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from aiokafka import AIOKafkaProducer

from schemas.topics import Topics
from testbed.mesh import Mesh
from testbed.sandbox import ROOT, free_port
from tests.fake_idp import FakeIdp, fake_idp, rsa_key
from tests.security.conftest import JWT_SECRET, AuthMesh
from tests.security.helpers import as_key, eventually, new_key, post_turn

FAILURE_LIMIT = 5
ADDRESS_CAP = 10 * FAILURE_LIMIT  # failed authentications of many credentials, one address
JWKS_FETCH_TIMEOUT_S = 1.0


@dataclass
class Ingresses:
    local: Mesh  # GATEWAY_REQUIRE_AUTH=false
    idp: Mesh  # JWT_JWKS_URL on the fake IdP, AUTH_FAILURE_LIMIT=5
    fake_idp: FakeIdp


@pytest.fixture(scope="module")
async def ingresses(auth_mesh: AuthMesh) -> AsyncIterator[Ingresses]:
    async with fake_idp(k1=rsa_key()) as idp:
        env = auth_mesh.mesh.env
        local = Mesh(
            env={**env, "GATEWAY_PORT": str(free_port()), "GATEWAY_REQUIRE_AUTH": "false"},
            log_dir=auth_mesh.sandbox.dir,
        )
        with_idp = Mesh(
            env={
                **env,
                "GATEWAY_PORT": str(free_port()),
                "JWT_JWKS_URL": idp.url,
                "JWKS_CACHE_S": "0",  # always stale: every request would refetch, if it could
                "JWKS_FETCH_TIMEOUT_S": str(JWKS_FETCH_TIMEOUT_S),
                "JWKS_BACKOFF_S": "30",
                "AUTH_FAILURE_LIMIT": str(FAILURE_LIMIT),
            },
            log_dir=auth_mesh.sandbox.dir,
        )
        try:
            local.start("ingress_local", "ingress")
            with_idp.start("ingress_idp", "ingress")
            await asyncio.gather(local.wait_healthy(), with_idp.wait_healthy())
            yield Ingresses(local, with_idp, idp)
        finally:
            local.stop_all()
            with_idp.stop_all()


def _client(base_url: str, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=15, **kwargs)


async def _read_status(client: httpx.AsyncClient, session_id: str) -> int:
    """The status a session's SSE stream answers with (the stream is not read)."""
    async with client.stream("GET", f"/v1/session/{session_id}/events") as r:
        return r.status_code


# ---- item 2: no anonymous operator --------------------------------------------------------


async def test_anonymous_holds_the_turns_scope_only(ingresses: Ingresses) -> None:
    async with _client(ingresses.local.base_url) as anon:
        for method, path, body in (
            ("POST", "/v1/keys", {"label": "mine now", "scopes": ["operator"]}),
            ("GET", "/v1/keys", None),
            ("PUT", "/v1/model-profiles/dialogue/local", {"model": "openai/evil"}),
            ("POST", "/v1/model-profiles", {"role": "evil", "model": "openai/evil"}),
            ("GET", "/v1/requeue", None),
        ):
            r = await anon.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["detail"]["code"] == "insufficient_scope"
        assert (await post_turn(anon, None)).status_code == 202


async def test_anonymous_cannot_read_or_post_into_a_session_a_key_claimed(
    ingresses: Ingresses, admin: httpx.AsyncClient
) -> None:
    key = await new_key(admin, "default")
    mine, theirs = f"keyed-{uuid.uuid4().hex}", f"anon-{uuid.uuid4().hex}"
    async with as_key(ingresses.local.base_url, key["secret"]) as keyed:
        assert (await post_turn(keyed, mine)).status_code == 202
    async with _client(ingresses.local.base_url) as anon:
        assert await _read_status(anon, mine) == 404
        r = await post_turn(anon, mine)
        assert r.status_code == 404 and r.json()["detail"]["code"] == "session_not_found"
        # its own sessions, as before
        assert (await post_turn(anon, theirs)).status_code == 202
        assert await _read_status(anon, theirs) == 200


async def test_auth_off_refuses_to_listen_beyond_loopback(ingresses: Ingresses) -> None:
    env = {**ingresses.local.env, "GATEWAY_PORT": str(free_port()), "GATEWAY_HOST": "0.0.0.0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingress", cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("the ingress served anonymous callers on 0.0.0.0")
    assert proc.returncode != 0
    assert b"GATEWAY_REQUIRE_AUTH=false" in err and b"loopback" in err, err


async def test_with_auth_off_a_foreign_host_is_refused(
    ingresses: Ingresses, auth_mesh: AuthMesh
) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own name."""
    port = ingresses.local.env["GATEWAY_PORT"]
    async with _client(ingresses.local.base_url) as anon:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
            r = await anon.get("/v1/health", headers={"Host": host})
            assert r.status_code == 421, (host, r.text)
            assert r.json()["detail"]["code"] == "host_not_allowed"
        r = await anon.post("/v1/session/message", json={"message": "x"}, headers={"Host": "a.b"})
        assert r.status_code == 421
        # The SSE endpoint, served ahead of the router, is inside the check too.
        sse = f"/v1/session/s-{uuid.uuid4().hex}/events"
        async with anon.stream("GET", sse, headers={"Host": "a.b"}) as r:
            assert r.status_code == 421
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert (await anon.get("/v1/health", headers={"Host": host})).status_code == 200
    # A WebSocket handshake with a foreign Host is refused before any route runs.
    assert await _ws_handshake(port, host="evil.example") == 403
    # With auth on and no GATEWAY_ALLOWED_HOSTS, any Host is answered (credentials guard it).
    async with _client(auth_mesh.mesh.base_url) as anon:
        assert (await anon.get("/v1/health", headers={"Host": "gw.example"})).status_code == 200


async def test_with_auth_off_a_foreign_origin_may_not_post_or_open_a_websocket(
    ingresses: Ingresses, auth_mesh: AuthMesh
) -> None:
    """A page on evil.example cannot rebind its own name (Host is checked), but its browser
    still sends its requests to http://127.0.0.1 with `Origin: http://evil.example`: a
    form POST, or a WebSocket (no CORS there). Those are refused; reads are not (the
    browser does not show the page a cross-origin answer), nor requests without Origin."""
    port = ingresses.local.env["GATEWAY_PORT"]
    async with _client(ingresses.local.base_url) as anon:
        foreign = ("http://evil.example", f"http://evil.example:{port}", "null", "bogus")
        for origin in (*foreign, f"http://localhost.evil.example:{port}"):
            r = await anon.post(
                "/v1/session/message", json={"message": "x"}, headers={"Origin": origin}
            )
            assert r.status_code == 403, (origin, r.text)
            assert r.json()["detail"]["code"] == "origin_not_allowed"
        r = await anon.delete("/v1/keys/0123456789abcdef", headers={"Origin": foreign[0]})
        assert r.status_code == 403 and r.json()["detail"]["code"] == "origin_not_allowed"
        r = await anon.get("/v1/health", headers={"Origin": foreign[0]})
        assert r.status_code == 200, r.text
        for origin in (f"http://localhost:{port}", f"http://127.0.0.1:{port}", "http://[::1]"):
            r = await anon.post(
                "/v1/session/message", json={"message": "x"}, headers={"Origin": origin}
            )
            assert r.status_code == 202, (origin, r.text)
        assert (await post_turn(anon, None)).status_code == 202  # no Origin: curl, SDKs
    for origin in foreign:
        assert await _ws_handshake(port, origin=origin) == 403, origin
    assert await _ws_handshake(port, origin=f"http://localhost:{port}") == 101
    assert await _ws_handshake(port) == 101
    # With auth on, a foreign Origin is not refused as such: credentials guard every route.
    async with _client(auth_mesh.mesh.base_url) as anon:
        r = await anon.post(
            "/v1/session/message", json={"message": "x"}, headers={"Origin": foreign[0]}
        )
        assert r.status_code == 401, r.text


async def _ws_handshake(port: str, *, host: str = "127.0.0.1", origin: str | None = None) -> int:
    """The status a raw WebSocket handshake on a fresh session is answered with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
    request = (
        f"GET /v1/session/ws-{uuid.uuid4().hex}/stream HTTP/1.1\r\nHost: {host}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    if origin is not None:
        request += f"Origin: {origin}\r\n"
    writer.write((request + "\r\n").encode())
    try:
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(status_line.split()[1])


# ---- item 7: health, failed authentications, dead letters ----------------------------------


async def test_health_details_are_for_operators(
    ingresses: Ingresses, auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    user = await new_key(admin, auth_mesh.tenant("alpha"), ["turns", "admin"])
    for base_url in (ingresses.local.base_url, auth_mesh.mesh.base_url):
        async with _client(base_url) as anon:
            r = await anon.get("/v1/health")
            assert set(r.json()) == {"status"}, r.text
            r = await anon.get("/health")
            assert set(r.json()) == {"status"}, r.text
        async with as_key(base_url, user["secret"]) as tenant_admin:
            assert set((await tenant_admin.get("/v1/health")).json()) == {"status"}
        async with as_key(base_url, auth_mesh.admin_key) as operator:
            body = (await operator.get("/v1/health")).json()
            assert {"status", "components", "stages"} <= set(body)
            assert body["components"]["postgres"]["latency_ms"] >= 0
        async with as_key(base_url, f"sk_{'0' * 16}_{'A' * 43}") as bad:
            assert (await bad.get("/v1/health")).status_code == 401


def _forged() -> str:
    return f"sk_{uuid.uuid4().hex[:16]}_{'A' * 43}"


async def test_failed_authentications_are_throttled_per_credential_and_address(
    ingresses: Ingresses, admin: httpx.AsyncClient
) -> None:
    """From 127.0.0.2 (AUTH_FAILURE_LIMIT=5): one bad credential retried gets 429 after 5
    failures, and other credentials from the address are still checked; a guesser's
    different credentials get 429 after 10 x 5 from the address, and so does a good
    credential this ingress has not seen verify yet, but not one it has: an operator
    sharing the address (NAT, loopback) is not locked out. 127.0.0.1 is not affected."""
    url = ingresses.idp.base_url
    known, fresh, unseen = [(await new_key(admin, "default"))["secret"] for _ in range(3)]

    async def status(client: httpx.AsyncClient, secret: str) -> int:
        r = await client.get("/v1/model-profiles", headers={"Authorization": f"Bearer {secret}"})
        if r.status_code == 429:
            assert r.json()["detail"]["code"] == "too_many_failed_authentications"
            assert 0 < int(r.headers["Retry-After"]) <= 60
        return r.status_code

    other_address = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with _client(url, transport=other_address) as client:
        assert await status(client, known) == 200
        retried = _forged()
        assert [await status(client, retried) for _ in range(FAILURE_LIMIT)] == [401] * 5
        assert await status(client, retried) == 429
        assert await status(client, known) == 200
        assert await status(client, fresh) == 200  # the address is not locked
        guesses = [await status(client, _forged()) for _ in range(ADDRESS_CAP - FAILURE_LIMIT)]
        assert guesses == [401] * (ADDRESS_CAP - FAILURE_LIMIT)
        assert await status(client, _forged()) == 429  # the address's cap: no lookups
        assert await status(client, unseen) == 429  # never verified here: not checked now
        assert await status(client, known) == 200  # verified before: checked, accepted
        assert await status(client, fresh) == 200
    async with _client(url) as elsewhere:
        assert await status(elsewhere, unseen) == 200
        assert await status(elsewhere, retried) == 401


async def _poison(auth_mesh: AuthMesh, session_id: str, tenant: str, value: bytes) -> None:
    """A record that is no event of the mesh: the policy stage dead-letters it at once."""
    producer = AIOKafkaProducer(**auth_mesh.sandbox.kafka.client_kwargs())  # the admin login
    await producer.start()
    try:
        await producer.send_and_wait(
            Topics.for_namespace(auth_mesh.sandbox.namespace).requested.name,
            value,
            key=session_id.encode(),
            headers=[("tenant", tenant.encode()), ("event-id", uuid.uuid4().hex.encode())],
        )
    finally:
        await producer.stop()


async def test_dead_lettered_prompts_are_for_operators_of_their_tenant(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    alpha, beta = auth_mesh.tenant("alpha"), auth_mesh.tenant("beta")
    session_id = f"dlq-{uuid.uuid4().hex}"
    prompt = f"my secret plans {uuid.uuid4().hex}"
    await _poison(auth_mesh, session_id, alpha, prompt.encode())

    async def indexed() -> bool:
        r = await admin.get("/v1/requeue", params={"session_id": session_id})
        return bool(r.json()["items"])

    await eventually(indexed, 30)
    keys = {
        "alpha admin": await new_key(admin, alpha, ["turns", "admin"]),
        "alpha operator": await new_key(admin, alpha, ["turns", "operator"]),
        "beta operator": await new_key(admin, beta, ["turns", "admin", "operator"]),
    }
    seen: dict[str, list[dict[str, Any]]] = {}
    for who, key in {**keys, "default operator": {"secret": auth_mesh.admin_key}}.items():
        async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
            listed = await client.get("/v1/requeue", params={"session_id": session_id})
            [letter] = listed.json()["items"]
            shown = await client.get(f"/v1/requeue/{letter['id']}")
            assert shown.status_code == 200, (who, shown.text)
            seen[who] = [letter, shown.json()]
    for who, bodies in seen.items():
        text = json.dumps(bodies)
        if who == "alpha operator":
            letter, shown = bodies
            assert shown["record"] == {"raw": prompt}
            assert letter["error_message"] and shown["error_message"]
        else:  # the metadata, not what the turn said
            assert prompt not in text, who
            assert all(b["error_message"] is None and b.get("record") is None for b in bodies)
            assert all(b["tenant"] == alpha and b["error_type"] == "DecodeError" for b in bodies)


# ---- item 6: JWT ------------------------------------------------------------------------------


def _hs256(**claims: object) -> str:
    now = int(time.time())
    body = {"sub": "bob", "aud": "soma-test", "exp": now + 300, "iat": now, **claims}
    return jwt.encode(body, JWT_SECRET, algorithm="HS256")


async def test_a_jwt_of_an_unknown_tenant_is_refused(auth_mesh: AuthMesh) -> None:
    async with as_key(auth_mesh.mesh.base_url, _hs256(tenant="nowhere-" + auth_mesh.run)) as c:
        r = await post_turn(c, None)
        assert r.status_code == 403, r.text
        assert r.json()["detail"]["code"] == "unknown_tenant"


async def test_idp_scopes_are_mapped_not_taken_at_their_word(auth_mesh: AuthMesh) -> None:
    """JWT_SCOPE_MAP (conftest): soma:admin -> admin, soma:turns -> turns; an IdP's own
    `operator` or `admin` scope grants nothing, so the token has the default `turns`."""
    alpha, beta = auth_mesh.tenant("alpha"), auth_mesh.tenant("beta")
    async with as_key(auth_mesh.mesh.base_url, _hs256(tenant=alpha, scope="operator admin")) as c:
        assert (await post_turn(c, None)).status_code == 202
        for r in (
            await c.post("/v1/keys", json={"label": "x", "tenant": beta, "scopes": ["operator"]}),
            await c.get("/v1/keys"),
        ):
            assert r.status_code == 403 and r.json()["detail"]["code"] == "insufficient_scope"
    mapped = _hs256(tenant=alpha, scope="soma:admin soma:turns")
    async with as_key(auth_mesh.mesh.base_url, mapped) as c:
        r = await c.get("/v1/keys")
        assert r.status_code == 200 and {k["tenant"] for k in r.json()} <= {alpha}
        r = await c.post("/v1/keys", json={"label": "x", "tenant": beta})
        assert r.status_code == 403


async def test_a_signing_key_published_since_the_last_fetch_is_no_failed_login(
    ingresses: Ingresses, auth_mesh: AuthMesh
) -> None:
    """The IdP rotates to k3 just after the ingress fetched its JWKS. Within 30 s of that
    fetch an unknown kid is refused without fetching again (forged kids must not hammer
    the IdP), but that is no failed login: the address, 127.0.0.3, is not throttled for
    it. The next refresh brings k3, and its tokens are accepted."""
    idp, url = ingresses.fake_idp, ingresses.idp.base_url
    claims = {"tenant": auth_mesh.tenant("alpha"), "aud": "soma-test"}
    address = httpx.AsyncHTTPTransport(local_address="127.0.0.3")

    async def status(client: httpx.AsyncClient, token: str) -> httpx.Response:
        return await client.get("/v1/model-profiles", headers={"Authorization": f"Bearer {token}"})

    async with _client(url, transport=address) as client:
        before = idp.requests

        async def refreshed() -> bool:  # JWKS_CACHE_S=0: a known kid refreshes the keys
            return idp.requests > before

        assert (await status(client, idp.token("k1", **claims))).status_code == 200
        await eventually(refreshed, 10, 0.02)  # the IdP has answered without k3
        idp.keys["k3"] = rsa_key()
        rotated = idp.token("k3", **claims)
        refused = [await status(client, rotated) for _ in range(2 * FAILURE_LIMIT)]
        assert [r.status_code for r in refused] == [401] * (2 * FAILURE_LIMIT), refused[-1].text
        assert refused[-1].json()["detail"]["code"] == "invalid_token"
        # A known key's request refreshes the stale JWKS in the background; k3 shares it.
        assert (await status(client, idp.token("k1", **claims))).status_code == 200
        assert (await status(client, rotated)).status_code == 200


async def test_an_idp_outage_does_not_serialize_requests(
    ingresses: Ingresses, auth_mesh: AuthMesh
) -> None:
    """20 concurrent requests while the IdP hangs: at most one JWKS fetch, answered at
    once with the last good keys; a token the keys in hand cannot verify waits for that
    one fetch at most, then gets 503 jwks_unavailable, and at once during the backoff."""
    idp, url = ingresses.fake_idp, ingresses.idp.base_url
    claims = {"tenant": auth_mesh.tenant("alpha"), "aud": "soma-test"}
    known = idp.token("k1", **claims)
    async with as_key(url, known) as client:
        assert (await client.get("/v1/model-profiles")).status_code == 200
    idp.hanging = True
    before = idp.requests

    async def many(token: str) -> tuple[list[httpx.Response], float]:
        started = time.monotonic()
        async with as_key(url, token) as client:
            got = await asyncio.gather(*(client.get("/v1/model-profiles") for _ in range(20)))
        return list(got), time.monotonic() - started

    async with asyncio.timeout(3 * JWKS_FETCH_TIMEOUT_S):  # serialized: 20 x 1 s or more
        answered, known_s = await many(known)
        assert [r.status_code for r in answered] == [200] * 20
        stranger = idp.token("k2", rsa_key(), **claims)  # a kid the keys in hand lack
        waited, shared_s = await many(stranger)
        refused, backoff_s = await many(stranger)
    for r in waited + refused:
        assert r.status_code == 503 and r.json()["detail"]["code"] == "jwks_unavailable", r.text
        assert int(r.headers["Retry-After"]) >= 1
    assert idp.requests - before <= 1
    assert known_s < 1.0 and shared_s < JWKS_FETCH_TIMEOUT_S + 1.0 and backoff_s < 1.0
    print(f"\nIdP hung: known kid {known_s:.2f}s, shared {shared_s:.2f}s, backoff {backoff_s:.2f}s")
