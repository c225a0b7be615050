"""The revocation re-check in the background (ingress/revocation.py) outlives whatever a
check raises: a loop that died would leave revoked keys' streams open for good."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from ingress.revocation import keep_checking


async def test_the_check_goes_on_after_any_error(caplog: pytest.LogCaptureFixture) -> None:
    """Two checks fail with errors that are no Postgres outage: each is logged with its
    traceback, the next check waits twice as long, and the checks go on."""
    calls: list[float] = []
    recovered = asyncio.Event()

    async def check() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise KeyError("scopes")  # a row of a shape nobody expected
        if len(calls) == 2:
            raise RuntimeError("a bug")
        recovered.set()

    caplog.set_level(logging.WARNING, logger="ingress.revocation")
    started = time.monotonic()
    loop = asyncio.create_task(keep_checking(check, 0.02, backoff_max_s=0.06))
    try:
        async with asyncio.timeout(5):
            await recovered.wait()
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert [type(e) for e in logged] == [KeyError, RuntimeError], caplog.text
    gaps = [b - a for a, b in zip([started, *calls], calls, strict=False)]
    assert gaps[0] >= 0.015 and gaps[1] >= 0.035 and gaps[2] >= 0.055, gaps  # backing off
