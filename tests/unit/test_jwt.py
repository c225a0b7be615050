"""JWT verification: HS256 and RS256 from a JWKS served over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway_runtime.settings import AuthSettings
from ingress.auth.jwt import InvalidToken, JwtVerifier

SECRET = "s" * 40


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def jwks_url(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[str]:
    """An identity provider's JWKS endpoint (outside the system: a loopback server)."""
    jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/.well-known/jwks.json"


def _claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": "alice", "tenant": "acme", "aud": "soma", "iss": "idp", "exp": now + 60, **extra}


async def test_rs256_from_jwks(rsa_key: rsa.RSAPrivateKey, jwks_url: str) -> None:
    settings = AuthSettings(jwt_jwks_url=jwks_url, jwt_audience="soma", jwt_issuer="idp")
    async with httpx.AsyncClient() as http:
        verifier = JwtVerifier(settings, http)
        token = jwt.encode(_claims(scope="turns admin"), rsa_key, "RS256", headers={"kid": "k1"})
        principal = await verifier.verify(token)
        assert principal.subject == "jwt:acme/alice" and principal.tenant == "acme"
        assert principal.scopes == {"turns", "admin"}
        for bad in (
            jwt.encode(_claims(iss="evil"), rsa_key, "RS256", headers={"kid": "k1"}),
            jwt.encode(_claims(), rsa_key, "RS256", headers={"kid": "unknown"}),
            jwt.encode(_claims(), SECRET, "HS256"),  # HS256 is not configured here
        ):
            with pytest.raises(InvalidToken):
                await verifier.verify(bad)


async def test_hs256_and_required_claims() -> None:
    settings = AuthSettings(jwt_hs256_secret=SECRET, jwt_tenant_claim="org")
    async with httpx.AsyncClient() as http:
        verifier = JwtVerifier(settings, http)
        ok = await verifier.verify(jwt.encode(_claims(org="globex", aud=None), SECRET, "HS256"))
        assert ok.tenant == "globex" and ok.scopes == {"turns"}
        no_exp = _claims(org="globex")
        no_exp.pop("exp")
        with pytest.raises(InvalidToken):
            await verifier.verify(jwt.encode(no_exp, SECRET, "HS256"))
        with pytest.raises(InvalidToken):
            await verifier.verify("not.a.token")


def test_weak_hs256_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="32"):
        AuthSettings(jwt_hs256_secret="short")
