"""`python -m ingress.auth.bootstrap`: the bootstrap key, the first operator of a new mesh.

Callers without credentials hold `turns` only, even with auth off: keys, model profiles,
dead letters and health details start from this key, which `make up` prints.

Idempotent: the key kept in `$SOMA_HOME/admin-key` (mode 0600) is reused while it is
valid (known, not revoked); otherwise a new one is created (tenant `default`, scopes
turns + admin + operator) and written there. Prints the secret on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import sys
from pathlib import Path

import asyncpg

from adapters import openfga
from adapters.openfga import FgaAuthorizer
from gateway_runtime.logs import configure_logging
from gateway_runtime.ports import DEFAULT_TENANT
from gateway_runtime.settings import BootstrapSettings
from ingress.auth.keys import SECRET_RE, digest, subject_of
from ingress.auth.principal import SCOPES

log = logging.getLogger(__name__)


async def _still_valid(conn: asyncpg.Connection, secret: str) -> bool:
    match = SECRET_RE.match(secret)
    if match is None:
        return False
    row = await conn.fetchrow(
        "SELECT secret_sha256 FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL",
        match.group(1),
    )
    return row is not None and hmac.compare_digest(row["secret_sha256"], digest(secret))


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


async def bootstrap(settings: BootstrapSettings) -> str:
    path = settings.soma_home / "admin-key"
    existing = path.read_text().strip() if path.exists() else ""
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        if existing and await _still_valid(conn, existing):
            return existing
        key_id = secrets.token_hex(8)
        secret = f"sk_{key_id}_{secrets.token_urlsafe(32)}"
        authorizer = FgaAuthorizer(settings)
        try:
            await authorizer.write(
                [
                    (openfga.user(subject_of(key_id)), "admin", openfga.tenant(DEFAULT_TENANT)),
                    (openfga.user(subject_of(key_id)), "member", openfga.tenant(DEFAULT_TENANT)),
                ]
            )
        finally:
            await authorizer.close()
        await conn.execute(
            "INSERT INTO api_keys (key_id, tenant, label, scopes, secret_sha256, prefix,"
            " created_by) VALUES ($1, $2, 'bootstrap admin', $3, $4, $5, 'bootstrap')",
            key_id,
            DEFAULT_TENANT,
            list(SCOPES),
            digest(secret),
            f"sk_{key_id}",
        )
    finally:
        await conn.close()
    _write_secret(path, secret)
    log.info("created the bootstrap admin key", extra={"fields": {"key_id": key_id}})
    return secret


if __name__ == "__main__":
    settings = BootstrapSettings()
    configure_logging(settings.service_name, "WARNING")
    sys.stdout.write(asyncio.run(bootstrap(settings)) + "\n")  # the secret is the output
