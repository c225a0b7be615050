"""API keys and JWTs at the ingress: lifecycle, revocation on every replica, 401/403."""

from __future__ import annotations

import time
import uuid

import httpx
import jwt

from tests.security.conftest import JWT_SECRET, AuthMesh
from tests.security.helpers import as_key, new_key, post_turn


async def test_key_lifecycle_create_use_list_revoke_on_two_replicas(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    tenant = auth_mesh.tenant("alpha")
    created = await new_key(admin, tenant, label="lifecycle")
    secret = created["secret"]
    assert secret.startswith(f"sk_{created['key_id']}_")
    assert created["prefix"] == f"sk_{created['key_id']}"
    assert created["last_used_at"] is None and created["revoked"] is False
    assert created["created_by"].startswith("key:")
    first, second = auth_mesh.urls
    async with as_key(first, secret) as one, as_key(second, secret) as two:
        assert (await post_turn(one, None)).status_code == 202
        assert (await post_turn(two, None)).status_code == 202  # the replica caches it too

        listed = (await admin.get("/v1/keys", params={"tenant": tenant})).json()
        [mine] = [k for k in listed if k["key_id"] == created["key_id"]]
        assert mine["last_used_at"] is not None
        assert "secret" not in mine
        assert secret not in (await admin.get("/v1/keys")).text

        revoked = await admin.delete(f"/v1/keys/{created['key_id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        for client in (one, two):
            r = await post_turn(client, None)
            assert r.status_code == 401, r.text
            assert r.json()["detail"]["code"] == "key_revoked"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_missing_and_bad_credentials_are_401(auth_mesh: AuthMesh) -> None:
    async with httpx.AsyncClient(base_url=auth_mesh.mesh.base_url, timeout=10) as anon:
        assert (await anon.get("/v1/health")).status_code in (200, 503)
        for method, path in (
            ("POST", "/v1/session/message"),
            ("GET", "/v1/session/abc/events"),
            ("GET", "/v1/keys"),
            ("DELETE", "/v1/keys/0123456789abcdef"),
            ("GET", "/v1/model-profiles"),
        ):
            r = await anon.request(method, path, json={"message": "x"})
            assert r.status_code == 401, (path, r.text)
            assert r.json()["detail"]["code"] == "missing_credentials"
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="soma"'
        forged = f"sk_{uuid.uuid4().hex[:16]}_{'A' * 43}"
        for header in (f"Bearer {forged}", "Bearer nonsense", "Basic dXNlcjpwdw=="):
            r = await anon.post(
                "/v1/session/message", json={"message": "x"}, headers={"Authorization": header}
            )
            assert r.status_code == 401, (header, r.text)


async def test_wrong_scope_is_403(auth_mesh: AuthMesh, admin: httpx.AsyncClient) -> None:
    tenant = auth_mesh.tenant("alpha")
    turns_only = await new_key(admin, tenant, ["turns"])
    admin_only = await new_key(admin, tenant, ["admin"])
    async with as_key(auth_mesh.mesh.base_url, turns_only["secret"]) as client:
        r = await client.post("/v1/keys", json={"label": "x"})
        assert r.status_code == 403 and r.json()["detail"]["code"] == "insufficient_scope"
    async with as_key(auth_mesh.mesh.base_url, admin_only["secret"]) as client:
        r = await post_turn(client, None)
        assert r.status_code == 403 and r.json()["detail"]["code"] == "insufficient_scope"
        # a tenant admin manages its own tenant's keys only, and cannot mint operators
        r = await client.post("/v1/keys", json={"label": "x", "scopes": ["operator"]})
        assert r.status_code == 403
        r = await client.post("/v1/keys", json={"label": "x", "tenant": auth_mesh.tenant("beta")})
        assert r.status_code == 403


async def test_tenant_admins_see_and_revoke_only_their_tenants_keys(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    alpha_admin = await new_key(admin, auth_mesh.tenant("alpha"), ["admin"])
    beta_key = await new_key(admin, auth_mesh.tenant("beta"))
    async with as_key(auth_mesh.mesh.base_url, alpha_admin["secret"]) as client:
        listed = (await client.get("/v1/keys")).json()
        assert listed and {k["tenant"] for k in listed} == {auth_mesh.tenant("alpha")}
        assert (await client.get("/v1/keys", params={"tenant": "default"})).status_code == 403
        r = await client.delete(f"/v1/keys/{beta_key['key_id']}")
        assert r.status_code == 404
        own = (await client.post("/v1/keys", json={"label": "own"})).json()
        assert own["tenant"] == auth_mesh.tenant("alpha") and own["scopes"] == ["turns"]
    r = await admin.post("/v1/keys", json={"label": "x", "tenant": "no-such-tenant"})
    assert r.status_code == 400 and r.json()["detail"]["code"] == "unknown_tenant"


def _token(secret: str = JWT_SECRET, **claims: object) -> str:
    now = int(time.time())
    body = {"sub": "alice", "aud": "soma-test", "exp": now + 300, "iat": now, **claims}
    return jwt.encode(body, secret, algorithm="HS256")


async def test_jwt_bearer_tokens(auth_mesh: AuthMesh) -> None:
    tenant = auth_mesh.tenant("alpha")
    async with as_key(auth_mesh.mesh.base_url, _token(tenant=tenant)) as client:
        r = await post_turn(client, None)
        assert r.status_code == 202, r.text
    bad = {
        "wrong audience": _token(tenant=tenant, aud="someone-else"),
        "expired": _token(tenant=tenant, exp=int(time.time()) - 3600),
        "wrong secret": _token("another-secret-" + "y" * 32, tenant=tenant),
        "no tenant": _token(),
    }
    for why, token in bad.items():
        async with as_key(auth_mesh.mesh.base_url, token) as client:
            r = await post_turn(client, None)
            assert r.status_code == 401, why
            assert r.json()["detail"]["code"] == "invalid_token", why
    admin_only = _token(tenant=tenant, scope="soma:admin")  # JWT_SCOPE_MAP: admin alone
    async with as_key(auth_mesh.mesh.base_url, admin_only) as client:
        assert (await post_turn(client, None)).status_code == 403  # no `turns` scope
