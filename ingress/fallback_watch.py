"""Wakes the streams of sessions whose events went to the Postgres fallback log.

A stage that cannot reach Redis appends the session's events to the fallback log
(gateway_runtime/event_log.py), which notifies `NOTIFY_CHANNEL` with the session id. A
Redis that is down shows in the hub's subscription, and every stream then polls the log;
a hung Redis does not (the subscription just stays quiet), so without this a connected
client would wait for its turn's events until it reconnected. One LISTEN connection per
ingress process; notifications come only while some stage is falling back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

import asyncpg

from gateway_runtime.background import background
from gateway_runtime.event_log import NOTIFY_CHANNEL
from gateway_runtime.settings import IngressSettings
from ingress.hub import FanoutHub

log = logging.getLogger(__name__)
_RETRY_MAX_S = 5.0
_PING_EVERY_S = 30.0  # the LISTEN connection is checked this often


class FallbackLogWatch:
    def __init__(self, settings: IngressSettings, hub: FanoutHub) -> None:
        self._dsn = settings.postgres_dsn
        self._timeout_s = settings.postgres_timeout_s
        self._hub = hub

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with background(self._listen_forever(), "fallback-log-watch"):
            yield

    async def _listen_forever(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._timeout_s)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("cannot listen for fallback-log appends (%r); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(functools.partial(_set, lost))
            try:
                await conn.add_listener(NOTIFY_CHANNEL, self._appended)
                self._hub.resync_all()  # appends while nobody listened
                delay = 0.5
                while not lost.is_set():  # a connection that died silently is noticed
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), _PING_EVERY_S)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=self._timeout_s)
                log.warning("the fallback-log listener's connection closed; listening again")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("fallback-log listener failed (%r); listening again", exc)
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=self._timeout_s)

    def _appended(self, conn: object, pid: int, channel: str, session_id: object) -> None:
        self._hub.resync(str(session_id))


def _set(event: asyncio.Event, _conn: object) -> None:
    event.set()
