"""Small helpers of the security tests: keys, authenticated clients, waiting for a turn."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx

from adapters.budgets import day_of
from tests.sse import SseEvent, read_events


async def new_key(
    admin: httpx.AsyncClient, tenant: str, scopes: list[str] | None = None, label: str = "t"
) -> dict[str, Any]:
    r = await admin.post(
        "/v1/keys", json={"label": label, "tenant": tenant, "scopes": scopes or ["turns"]}
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def as_key(base_url: str, secret: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {secret}"}
    ) as client:
        yield client


def first_of_turn(turn_id: str) -> Callable[[SseEvent], bool]:
    """Until the turn's first decisive event: accepted, or an error (a denial)."""
    return lambda e: e.turn_id == turn_id and e.type in ("turn.accepted", "error")


def end_of_turn(turn_id: str) -> Callable[[SseEvent], bool]:
    return lambda e: e.turn_id == turn_id and e.type in ("assistant.final", "error")


async def turn_events(
    client: httpx.AsyncClient,
    session_id: str,
    until: Callable[[SseEvent], bool],
    timeout: float = 30,
) -> list[SseEvent]:
    async with asyncio.timeout(timeout):
        return await read_events(client, f"/v1/session/{session_id}/events", until)


async def post_turn(
    client: httpx.AsyncClient, session_id: str | None, message: str = "hello", **extra: Any
) -> httpx.Response:
    body: dict[str, Any] = {"message": message, **extra}
    if session_id:
        body["session_id"] = session_id
    return await client.post("/v1/session/message", json=body)


async def eventually(
    probe: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.2
) -> float:
    """Seconds until `probe()` is true; fails after `timeout` seconds."""
    started = time.monotonic()
    while not await probe():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


async def budget_settles(conn: asyncpg.Connection, tenant: str, used: int) -> None:
    """Until the tenant's shared budget of today reads `used` tokens used, none reserved."""

    async def settled() -> bool:
        row = await conn.fetchrow(
            "SELECT used, reserved FROM budget_counters"
            " WHERE tenant = $1 AND persona = 'default' AND day = $2",
            tenant,
            day_of(time.time()),
        )
        return row is not None and (row["used"], row["reserved"]) == (used, 0)

    await eventually(settled, 30)
