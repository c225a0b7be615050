"""Bad HTTP input gets a 4xx with a clear message, never a 5xx."""

from __future__ import annotations

import httpx
import pytest

CASES = [
    ({}, 422, "message: Field required"),
    ({"message": 5}, 422, "message"),
    ({"message": ""}, 422, "message"),
    ({"message": "hi", "attachments": "nope"}, 422, "attachments"),
    ({"message": "hi", "metadata": {"k": 1}}, 422, "metadata"),
    ({"message": "hi", "session_id": "bad id with spaces"}, 422, "session_id"),
    ({"message": "hi", "unexpected": True}, 422, "unexpected"),
]


@pytest.mark.parametrize(("body", "status", "mentions"), CASES)
async def test_invalid_message_bodies_are_422_with_the_field_named(
    client: httpx.AsyncClient, body: dict, status: int, mentions: str
) -> None:
    r = await client.post("/v1/session/message", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail["code"] == "invalid_request"
    assert mentions in detail["message"]


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/session/message", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["detail"]["code"] == "invalid_request"


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/session/message", json={"message": "x" * 300_000})
    assert r.status_code == 413
    assert "exceeds" in r.json()["detail"]["message"]


async def test_oversized_chunked_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks():
        for _ in range(40):
            yield b"x" * 10_000

    r = await client.post(
        "/v1/session/message", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


async def test_unknown_action_is_422(client: httpx.AsyncClient) -> None:
    # The document lists the actions (an enum): an unknown one is invalid input, as any.
    r = await client.post("/v1/session/action", json={"action": "dance"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail["code"] == "invalid_request" and "summarize" in detail["message"]
    assert detail["errors"][0]["loc"] == ["body", "action"]


async def test_unknown_path_and_method_answer_the_error_model(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/nowhere")
    assert r.status_code == 404
    assert r.json() == {"detail": {"code": "not_found", "message": "Not Found"}}
    r = await client.put("/v1/keys")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert r.json()["detail"]["code"] == "method_not_allowed"
    r = await client.put("/v1/models")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


async def test_a_bad_idempotency_key_is_invalid_input(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/session/message", json={"message": "hi"}, headers={"Idempotency-Key": "a b"}
    )
    assert r.status_code == 422
    assert r.json()["detail"]["errors"][0]["loc"] == ["header", "Idempotency-Key"]


async def test_bad_last_event_id_is_400(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/session/abc/events", headers={"Last-Event-ID": "nope"})
    assert r.status_code == 400


async def test_bad_session_id_in_path_is_422(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/session/%20bad/events")
    assert r.status_code == 422
