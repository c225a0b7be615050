"""Tenant isolation: a key of tenant B can neither post to nor read a session of tenant A
(message, action, SSE, WebSocket: 404, as if the session did not exist); within a tenant,
OpenFGA decides in the policy stage who may write."""

from __future__ import annotations

import uuid

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.security.conftest import AuthMesh
from tests.security.helpers import (
    as_key,
    end_of_turn,
    first_of_turn,
    new_key,
    post_turn,
    turn_events,
)


def _ws_url(base: str, session_id: str) -> str:
    return base.replace("http://", "ws://") + f"/v1/session/{session_id}/stream"


async def _ws_status(base: str, session_id: str, secret: str) -> int:
    """101 when the WebSocket opens, else the HTTP status of the refusal."""
    try:
        async with connect(
            _ws_url(base, session_id), additional_headers={"Authorization": f"Bearer {secret}"}
        ):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_tenant_b_cannot_post_to_or_read_tenant_a_session(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    key_a = await new_key(admin, auth_mesh.tenant("alpha"))
    key_b = await new_key(admin, auth_mesh.tenant("beta"))
    base = auth_mesh.mesh.base_url
    session_id = f"a-{uuid.uuid4().hex}"
    async with as_key(base, key_a["secret"]) as a, as_key(base, key_b["secret"]) as b:
        r = await post_turn(a, session_id, "mine")
        assert r.status_code == 202, r.text
        events = await turn_events(a, session_id, end_of_turn(r.json()["event_id"]))
        assert events[-1].type == "assistant.final"

        denied = [
            await post_turn(b, session_id, "theirs"),
            await b.post(
                "/v1/session/action", json={"session_id": session_id, "action": "summarize"}
            ),
            await b.get(f"/v1/session/{session_id}/events"),
        ]
        for response in denied:
            assert response.status_code == 404, response.text
            assert response.json()["detail"]["code"] == "session_not_found"
        # the same answer as for a session that does not exist at all
        missing = await b.get(f"/v1/session/nobody-{uuid.uuid4().hex}/events")
        assert missing.status_code == 404


async def test_tenant_b_cannot_open_tenant_a_session_websocket(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    key_a = await new_key(admin, auth_mesh.tenant("alpha"))
    key_b = await new_key(admin, auth_mesh.tenant("beta"))
    base = auth_mesh.mesh.base_url
    session_id = f"a-{uuid.uuid4().hex}"
    async with as_key(base, key_a["secret"]) as a:
        assert (await post_turn(a, session_id, "mine")).status_code == 202
    assert await _ws_status(base, session_id, key_a["secret"]) == 101
    assert await _ws_status(base, session_id, key_b["secret"]) == 404


async def test_within_a_tenant_openfga_decides_who_may_write(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    tenant = auth_mesh.tenant("alpha")
    owner = await new_key(admin, tenant)
    colleague = await new_key(admin, tenant)  # a member of the tenant, not the owner
    tenant_admin = await new_key(admin, tenant, ["turns", "admin"])
    base = auth_mesh.mesh.base_url
    session_id = f"a-{uuid.uuid4().hex}"
    async with (
        as_key(base, owner["secret"]) as o,
        as_key(base, colleague["secret"]) as c,
        as_key(base, tenant_admin["secret"]) as t,
    ):
        first = await post_turn(o, session_id, "first")
        assert first.status_code == 202
        # members of the tenant may read; only the owner and tenant admins may write: a
        # member is told at once, and nothing reaches the session's stream
        r = await post_turn(c, session_id, "may I?")
        assert r.status_code == 403 and r.json()["detail"]["code"] == "forbidden"
        [*_, owners] = await turn_events(c, session_id, first_of_turn(first.json()["event_id"]))
        assert owners.type == "turn.accepted", "the member still reads the session"

        r = await post_turn(t, session_id, "admin here")
        [*_, accepted] = await turn_events(t, session_id, first_of_turn(r.json()["event_id"]))
        assert accepted.type == "turn.accepted"


@pytest.mark.parametrize("path", ["/v1/session/message", "/v1/session/action"])
async def test_a_new_session_belongs_to_the_first_poster(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, path: str
) -> None:
    key_a = await new_key(admin, auth_mesh.tenant("alpha"))
    key_b = await new_key(admin, auth_mesh.tenant("beta"))
    base = auth_mesh.mesh.base_url
    session_id = f"race-{uuid.uuid4().hex}"
    body = {"session_id": session_id, "message": "x", "action": "summarize"}
    body.pop("action" if path.endswith("message") else "message")
    async with as_key(base, key_b["secret"]) as b, as_key(base, key_a["secret"]) as a:
        assert (await b.post(path, json=body)).status_code == 202
        assert (await a.post(path, json=body)).status_code == 404
