"""The Postgres pool and the project's schema migrations.

Migrations are plain SQL files under `migrations/`, applied in name order, each once,
inside a transaction, serialised across processes by an advisory lock.
"""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.settings import CommonSettings

log = logging.getLogger(__name__)
# What a Postgres call raises when the server or the statement fails (TimeoutError, a
# command timeout, is an OSError): adapters turn these into the mesh's errors.
PG_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 0x50_4D_41  # any constant shared by every process of the mesh


async def create_pool(
    settings: CommonSettings, *, min_size: int = 1, max_size: int = 10
) -> asyncpg.Pool:
    """A pool whose every connect and query gives up after POSTGRES_TIMEOUT_S: a hung
    server (SIGSTOP, a full disk) becomes an error in bounded time, not a stall."""
    timeout = settings.postgres_timeout_s
    try:
        return await asyncpg.create_pool(
            settings.postgres_dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            command_timeout=timeout,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise DependencyUnavailable(f"postgres unreachable: {exc!r}") from exc


async def migrate(pool: asyncpg.Pool) -> list[str]:
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for path in sorted(MIGRATIONS.glob("*.sql")):
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations(name) VALUES ($1)", path.name)
                applied.append(path.name)
                log.info("applied migration", extra={"fields": {"migration": path.name}})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied
