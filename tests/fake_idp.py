"""An identity provider's JWKS endpoint on loopback, for the JWT tests: a real HTTP server
(outside the system, so a fake) that serves its keys, or hangs like an IdP in an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

HANG_AT_MOST_S = 60.0


@dataclass
class FakeIdp:
    keys: dict[str, rsa.RSAPrivateKey]  # kid -> private key; the JWKS serves their public halves
    url: str = ""
    requests: int = 0  # JWKS requests received
    hanging: bool = False  # an outage: requests are read and never answered
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def token(self, kid: str, key: rsa.RSAPrivateKey | None = None, **claims: object) -> str:
        """An RS256 token with `kid` in its header, signed with that kid's key (or `key`)."""
        now = int(time.time())
        body = {"sub": "alice", "exp": now + 300, "iat": now, **claims}
        return jwt.encode(body, key or self.keys[kid], "RS256", headers={"kid": kid})

    def _body(self) -> bytes:
        jwks = [
            {**json.loads(RSAAlgorithm.to_jwk(k.public_key())), "kid": kid, "alg": "RS256"}
            for kid, k in self.keys.items()
        ]
        return json.dumps({"keys": jwks}).encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            if self.hanging:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), HANG_AT_MOST_S)
                return
            body = self._body()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def fake_idp(**keys: rsa.RSAPrivateKey) -> AsyncIterator[FakeIdp]:
    idp = FakeIdp(dict(keys))
    server = await asyncio.start_server(idp._serve, "127.0.0.1", 0)
    idp.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/.well-known/jwks.json"
    try:
        async with server:
            yield idp
    finally:
        idp._release.set()  # hung requests end (unanswered)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
