"""RPM limits shared by two ingress processes: the combined admitted count stays within
the per-key and per-tenant limits (8 and 12 a minute), whichever replica is asked."""

from __future__ import annotations

import asyncio
import itertools

import httpx

from tests.security.conftest import AuthMesh
from tests.security.helpers import as_key, new_key, post_turn

PER_KEY, PER_TENANT = 8, 12


async def test_rate_limits_hold_across_two_ingress_replicas(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient
) -> None:
    tenant = auth_mesh.tenant("rate")
    keys = [await new_key(admin, tenant) for _ in range(2)]
    first, second = auth_mesh.urls
    async with (
        as_key(first, keys[0]["secret"]) as k1r1,
        as_key(second, keys[0]["secret"]) as k1r2,
        as_key(first, keys[1]["secret"]) as k2r1,
        as_key(second, keys[1]["secret"]) as k2r2,
    ):
        clients = [k1r1, k1r2, k2r1, k2r2]
        # 60 requests at once, spread over both keys and both replicas
        responses = await asyncio.gather(
            *(post_turn(c, None, "rl") for c in itertools.islice(itertools.cycle(clients), 60))
        )
    codes = [r.status_code for r in responses]
    admitted = codes.count(202)
    assert set(codes) == {202, 429}, codes
    assert admitted == PER_TENANT, codes
    per_key = [
        sum(r.status_code == 202 for i, r in enumerate(responses) if i % 4 // 2 == k)
        for k in range(2)
    ]
    assert max(per_key) <= PER_KEY, per_key
    refused = [r for r in responses if r.status_code == 429]
    for r in refused:
        detail = r.json()["detail"]
        assert detail["code"] == "rate_limited"
        assert detail["message"].split()[0] in ("rpm_per_key", "rpm_per_tenant")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    print(
        f"\nrate limit: 60 requests over 2 replicas x 2 keys -> {admitted} admitted "
        f"(per key {per_key}), {len(refused)} refused with 429"
    )
