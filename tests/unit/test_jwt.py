"""JWT verification: HS256 and RS256 from a JWKS served over real HTTP on loopback
(tests/fake_idp.py), the settings that must go with JWTs, and the JWKS fetch's single
flight and backoff while the identity provider hangs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway_runtime.settings import AuthSettings
from ingress.auth.jwks import JwksUnavailable
from ingress.auth.jwt import InvalidToken, JwtVerifier, UnknownTenant
from tests.fake_idp import FakeIdp, fake_idp, rsa_key

SECRET = "s" * 40
TENANTS = {"acme", "globex"}


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa_key()


@pytest.fixture
async def idp(key: rsa.RSAPrivateKey) -> AsyncIterator[FakeIdp]:
    async with fake_idp(k1=key) as idp:
        yield idp


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


def verifier(http: httpx.AsyncClient, **settings: Any) -> JwtVerifier:
    return JwtVerifier(AuthSettings(jwt_audience="soma", **settings), http, TENANTS.__contains__)


def _claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": "alice", "tenant": "acme", "aud": "soma", "iss": "idp", "exp": now + 60, **extra}


async def test_rs256_from_jwks(idp: FakeIdp, http: httpx.AsyncClient) -> None:
    v = verifier(
        http, jwt_jwks_url=idp.url, jwt_issuer="idp", jwt_scope_map={"soma:admin": ["admin"]}
    )
    principal = await v.verify(idp.token("k1", **_claims(scope="soma:admin openid")))
    assert principal.subject == "jwt:acme/alice" and principal.tenant == "acme"
    assert principal.scopes == {"admin"}
    for bad in (
        idp.token("k1", **_claims(iss="evil")),
        idp.token("unknown", idp.keys["k1"], **_claims()),
        jwt.encode(_claims(), SECRET, "HS256"),  # HS256 is not configured here
    ):
        with pytest.raises(InvalidToken):
            await v.verify(bad)


async def test_hs256_and_required_claims(http: httpx.AsyncClient) -> None:
    v = verifier(http, jwt_hs256_secret=SECRET, jwt_tenant_claim="org")
    ok = await v.verify(jwt.encode(_claims(org="globex"), SECRET, "HS256"))
    assert ok.tenant == "globex" and ok.scopes == {"turns"}
    for missing in ("exp", "aud", "sub"):
        claims = _claims(org="globex")
        claims.pop(missing)
        with pytest.raises(InvalidToken):
            await v.verify(jwt.encode(claims, SECRET, "HS256"))
    with pytest.raises(InvalidToken):
        await v.verify(jwt.encode(_claims(org="globex", aud="another-service"), SECRET, "HS256"))
    with pytest.raises(InvalidToken):
        await v.verify("not.a.token")


def test_weak_hs256_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="32"):
        AuthSettings(jwt_hs256_secret="short", jwt_audience="soma")


def test_jwts_need_an_audience() -> None:
    """A token the IdP minted for another of its services must not open this one."""
    for jwt_settings in ({"jwt_hs256_secret": SECRET}, {"jwt_jwks_url": "http://idp/jwks"}):
        with pytest.raises(ValueError, match="JWT_AUDIENCE"):
            AuthSettings(**jwt_settings)  # type: ignore[arg-type]
        AuthSettings(**jwt_settings, jwt_audience="soma")  # type: ignore[arg-type]
    AuthSettings()  # no JWTs, no audience needed


async def test_the_tenant_claim_must_name_a_configured_tenant(http: httpx.AsyncClient) -> None:
    v = verifier(http, jwt_hs256_secret=SECRET)
    assert (await v.verify(jwt.encode(_claims(), SECRET, "HS256"))).tenant == "acme"
    with pytest.raises(UnknownTenant, match="nowhere"):
        await v.verify(jwt.encode(_claims(tenant="nowhere"), SECRET, "HS256"))


async def test_gateway_scopes_come_from_the_scope_map(http: httpx.AsyncClient) -> None:
    """An IdP's own `operator` or `admin` grants nothing unless the map says so."""
    v = verifier(
        http,
        jwt_hs256_secret=SECRET,
        jwt_scope_map={"soma.ops": ["operator", "admin"], "soma.chat": ["turns"]},
    )

    async def scopes(claim: object) -> set[str]:
        token = jwt.encode(_claims(scope=claim), SECRET, "HS256")
        return set((await v.verify(token)).scopes)

    assert await scopes("operator admin") == {"turns"}  # unmapped: the default scopes
    assert await scopes("soma.chat") == {"turns"}
    assert await scopes(["soma.ops", "openid"]) == {"operator", "admin"}
    assert await scopes("soma.ops soma.chat") == {"operator", "admin", "turns"}
    with pytest.raises(ValueError):
        AuthSettings(jwt_scope_map={"x": ["root"]})  # type: ignore[dict-item]


async def test_jwks_outage_one_fetch_and_fast_answers(
    idp: FakeIdp, http: httpx.AsyncClient
) -> None:
    """20 concurrent verifications while the IdP hangs: at most one JWKS fetch between
    them; known keys answer at once, unknown ones share the fetch, then fail fast."""
    v = verifier(
        http, jwt_jwks_url=idp.url, jwks_cache_s=0, jwks_fetch_timeout_s=1, jwks_backoff_s=30
    )
    known = idp.token("k1", **_claims())
    await v.verify(known)
    idp.hanging = True
    before = idp.requests
    started = time.monotonic()
    async with asyncio.timeout(1.0):  # a serialized refetch would take 20 x the timeout
        principals = await asyncio.gather(*(v.verify(known) for _ in range(20)))
    known_s = time.monotonic() - started
    assert all(p.tenant == "acme" for p in principals)  # the last good keys stand in
    assert idp.requests - before <= 1

    # An unknown kid needs the IdP: everyone shares the one fetch in flight, and fails
    # with 503 material once it does; during the backoff nobody fetches or waits.
    stranger = idp.token("k2", rsa_key(), **_claims())
    started = time.monotonic()
    async with asyncio.timeout(2.0):
        outcomes = await asyncio.gather(
            *(v.verify(stranger) for _ in range(20)), return_exceptions=True
        )
    shared_s = time.monotonic() - started
    assert all(isinstance(o, JwksUnavailable) for o in outcomes), outcomes
    assert all(o.retry_after > 1 for o in outcomes if isinstance(o, JwksUnavailable))
    started = time.monotonic()
    async with asyncio.timeout(0.2):
        again = await asyncio.gather(
            *(v.verify(stranger) for _ in range(20)), return_exceptions=True
        )
    backoff_s = time.monotonic() - started
    assert all(isinstance(o, JwksUnavailable) for o in again), again
    assert (await v.verify(known)).tenant == "acme"  # still fine
    assert idp.requests - before <= 1
    print(f"\nknown kid {known_s:.3f}s, shared {shared_s:.2f}s, backoff {backoff_s:.3f}s")


async def test_a_cold_start_during_an_outage_fetches_once(
    idp: FakeIdp, http: httpx.AsyncClient
) -> None:
    idp.hanging = True
    v = verifier(http, jwt_jwks_url=idp.url, jwks_fetch_timeout_s=0.5, jwks_backoff_s=30)
    token = idp.token("k1", **_claims())
    async with asyncio.timeout(1.5):
        outcomes = await asyncio.gather(
            *(v.verify(token) for _ in range(20)), return_exceptions=True
        )
    assert all(isinstance(o, JwksUnavailable) for o in outcomes), outcomes
    assert idp.requests == 1


@contextlib.asynccontextmanager
async def _jwks_serving(body: bytes) -> AsyncIterator[tuple[str, list[int]]]:
    """An IdP on loopback whose JWKS endpoint answers 200 with `body`; its URL, and a
    list that grows by one per request."""
    requests: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        requests.append(1)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/jwks.json", requests


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"null",
        b"42",
        b'"keys"',
        b"<html>maintenance</html>",
        b'{"keys": null}',
        b'{"keys": "k1"}',
        b'{"keys": [42]}',
        b'{"keys": [{"kty": "RSA", "kid": "k1", "n": "!!", "e": "AQAB"}]}',
        b'{"keys": [{"kty": "bogus", "kid": "k1"}]}',
        b'{"keys": []}',
    ],
)
async def test_a_malformed_jwks_is_a_failed_fetch(
    body: bytes, idp: FakeIdp, http: httpx.AsyncClient
) -> None:
    """Whatever the IdP answers, a body that holds no usable keys is a failed fetch: the
    token is JwksUnavailable (503 jwks_unavailable), never an error out of the verifier
    (a 500), and the backoff holds the next fetch back."""
    token = idp.token("k1", **_claims())
    async with _jwks_serving(body) as (url, requests):
        v = verifier(http, jwt_jwks_url=url, jwks_backoff_s=30)
        for _ in range(3):
            with pytest.raises(JwksUnavailable) as refused:
                await v.verify(token)
            assert refused.value.retry_after > 1
        assert len(requests) == 1
