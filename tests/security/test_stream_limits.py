"""Limits on the event streams (issue 9, item 7).

- `Last-Event-ID` (and the WebSocket's `?last_event_id=`) is accepted only in the forms
  the gateway issues, `<ms>-<seq>` and `pg-<n>` in ASCII digits within their ranges;
  anything else (Unicode digits such as '²', which `str.isdigit` accepts) is 400
  `invalid_last_event_id`, before a stream starts.
- A principal holds at most MAX_STREAMS_PER_PRINCIPAL open streams (SSE and WebSocket
  together) on a replica; one more is 429 `too_many_streams`, and a closed one frees its
  place.
- A WebSocket client frame over WS_MAX_FRAME_BYTES closes the socket with 1009.

The limits are those of a further ingress replica of the auth mesh, started here with
small values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from testbed.mesh import Mesh
from testbed.sandbox import free_port
from tests.security.conftest import AuthMesh
from tests.security.helpers import as_key, eventually, new_key, post_turn

STREAM_CAP = 3
FRAME_BYTES = 4096


@pytest.fixture(scope="module")
async def limited(auth_mesh: AuthMesh) -> AsyncIterator[str]:
    """The base URL of an ingress replica of the auth mesh with small stream limits."""
    replica = Mesh(
        env={
            **auth_mesh.mesh.env,
            "GATEWAY_PORT": str(free_port()),
            "MAX_STREAMS_PER_PRINCIPAL": str(STREAM_CAP),
            "WS_MAX_FRAME_BYTES": str(FRAME_BYTES),
        },
        log_dir=auth_mesh.sandbox.dir,
    )
    replica.start("ingress-limits", "ingress")
    try:
        await replica.wait_healthy()
        yield replica.base_url
    finally:
        replica.stop_all()


async def _session(auth_mesh: AuthMesh, admin: httpx.AsyncClient) -> tuple[dict, str]:
    """A new key of tenant alpha and a session it owns."""
    key = await new_key(admin, auth_mesh.tenant("alpha"))
    session_id = f"lim-{uuid.uuid4().hex}"
    async with as_key(auth_mesh.mesh.base_url, key["secret"]) as client:
        r = await post_turn(client, session_id)
        assert r.status_code == 202, r.text
    return key, session_id


def _ws_url(base: str, session_id: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + f"/v1/session/{session_id}/stream{query}"


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def _ws_status(url: str, secret: str) -> int:
    """101 when the WebSocket opens, else the HTTP status of the refusal."""
    try:
        async with connect(url, additional_headers=_bearer(secret)):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_last_event_id_accepts_only_the_ids_the_gateway_issues(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, limited: str
) -> None:
    key, session_id = await _session(auth_mesh, admin)
    path = f"/v1/session/{session_id}/events"
    bad = [
        "1²-0",  # '²'.isdigit() is True
        "²-0",
        "pg-²",
        "1-0-0",
        "18446744073709551616-0",  # a stream id's parts are 64-bit
        "0-18446744073709551616",
        "pg-9223372036854775808",  # the fallback log's ids are bigint
        "pg--1",
        "-0",
        "abc",
    ]
    async with as_key(limited, key["secret"]) as client:
        for value in bad:
            # bytes: latin-1 on the wire, as a client may send it
            r = await client.get(path, headers={"Last-Event-ID": value.encode("latin-1")})
            assert r.status_code == 400, (value, r.status_code)
            assert r.json()["detail"]["code"] == "invalid_last_event_id", value
        for good in ("0-0", "1795975224741-3", "pg-0", "pg-42"):
            async with client.stream("GET", path, headers={"Last-Event-ID": good}) as r:
                assert r.status_code == 200, good
    # Unicode digits in the WebSocket's query: '²', ARABIC-INDIC ONE / ZERO / THREE
    for value in ("1\u00b2-0", "\u0661-\u0660", "pg-\u0663"):
        url = _ws_url(limited, session_id, f"?last_event_id={urllib.parse.quote(value)}")
        assert await _ws_status(url, key["secret"]) == 400, value
    assert (
        await _ws_status(_ws_url(limited, session_id, "?last_event_id=0-0"), key["secret"]) == 101
    )


@contextlib.asynccontextmanager
async def _sse(client: httpx.AsyncClient, session_id: str) -> AsyncIterator[httpx.Response]:
    async with client.stream("GET", f"/v1/session/{session_id}/events") as response:
        yield response


async def test_open_streams_are_capped_per_principal(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, limited: str
) -> None:
    key, session_id = await _session(auth_mesh, admin)
    other, _ = await _session(auth_mesh, admin)  # another key of the same tenant
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(as_key(limited, key["secret"]))
        first = await stack.enter_async_context(_sse(client, session_id))
        second = await stack.enter_async_context(_sse(client, session_id))
        assert (first.status_code, second.status_code) == (200, 200)
        ws = await stack.enter_async_context(
            connect(_ws_url(limited, session_id), additional_headers=_bearer(key["secret"]))
        )
        assert ws.state.name == "OPEN"  # SSE and WebSocket count together: the cap is full

        async with client.stream("GET", f"/v1/session/{session_id}/events") as over:
            assert over.status_code == 429
            body = json.loads(await over.aread())
            assert body["detail"]["code"] == "too_many_streams"
        assert await _ws_status(_ws_url(limited, session_id), key["secret"]) == 429

        # per principal: another key of the tenant may still follow the session
        async with as_key(limited, other["secret"]) as theirs:
            async with _sse(theirs, session_id) as response:
                assert response.status_code == 200

        await ws.close()  # a closed stream frees its place

        async def reopens() -> bool:
            async with client.stream("GET", f"/v1/session/{session_id}/events") as r:
                return r.status_code == 200

        await eventually(reopens, timeout=5, interval=0.05)


async def _until_own_error(ws: ClientConnection) -> dict:
    """The next error frame answering the client (events of the session carry an id)."""
    async with asyncio.timeout(10):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "error" and "id" not in frame:
                return frame  # type: ignore[no-any-return]


async def test_an_oversized_websocket_frame_closes_the_socket_with_1009(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, limited: str
) -> None:
    key, session_id = await _session(auth_mesh, admin)
    async with connect(
        _ws_url(limited, session_id), additional_headers=_bearer(key["secret"])
    ) as ws:
        small = json.dumps({"nonsense": "x" * (FRAME_BYTES - 100)})
        await ws.send(small)  # within the limit: answered, the socket stays open
        assert (await _until_own_error(ws))["data"]["code"] == "invalid_request"

        await ws.send(json.dumps({"nonsense": "x" * FRAME_BYTES}))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
