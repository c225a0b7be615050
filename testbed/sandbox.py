"""Backing services of one's own for a mesh, beside whatever gateway runs on the machine.

A sandbox holds, under one name (`<purpose>_<epoch>_<hex>`):
- its own Redis, OpenFGA and OPA processes, started and stopped by `deploy/infra.sh`
  with a state directory and free ports of their own, so a test may stop or pause them
  and the stack `make up` started never notices;
- its own databases on the shared Postgres server, the mesh's and its OpenFGA's (created
  here, dropped on close), so a restarted OpenFGA finds its store again;
- its own Kafka namespace on the shared broker (topics, consumer groups and every Redis
  key carry it; the topics are deleted on close).
Sandboxes that a killed run left behind are swept when a new one opens, after a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from gateway_runtime.redis_keys import RedisKeys
from gateway_runtime.settings import CommonSettings

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "deploy" / "infra.sh"
COMPONENTS = ("redis", "openfga", "opa")
_NAME = re.compile(r"^[a-z]+_(\d{10})_[0-9a-f]{6}$")  # the mesh's database; +_fga: OpenFGA's
STALE_AFTER_S = 24 * 3600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_database(dsn: str, database: str) -> str:
    """The DSN with its database replaced (postgresql://user:pass@host:port/db?query)."""
    head, _, rest = dsn.rpartition("/")
    query = rest.partition("?")[2]
    return f"{head}/{database}" + (f"?{query}" if query else "")


@dataclass
class Sandbox:
    name: str
    dir: Path
    base: CommonSettings
    postgres_dsn: str
    redis_url: str
    openfga_api_url: str
    opa_url: str
    infra_env: dict[str, str] = field(repr=False)

    @property
    def namespace(self) -> str:
        return self.name

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.name)

    @property
    def env(self) -> dict[str, str]:
        """What a process of the mesh needs to use this sandbox."""
        return {
            "KAFKA_NAMESPACE": self.name,
            "KAFKA_BOOTSTRAP_SERVERS": self.base.kafka_bootstrap_servers,
            "POSTGRES_DSN": self.postgres_dsn,
            "REDIS_URL": self.redis_url,
            "OPENFGA_API_URL": self.openfga_api_url,
            "OPENFGA_STORE_NAME": self.name,
            "OPA_URL": self.opa_url,
            "LOCAL_LLM_BASE_URL": self.base.local_llm_base_url,
            "SOMA_HOME": str(self.dir),  # the bootstrap admin key is written here
        }

    @classmethod
    async def open(cls, purpose: str, base: CommonSettings | None = None) -> Sandbox:
        base = base or CommonSettings()
        name = f"{purpose}_{int(time.time())}_{uuid.uuid4().hex[:6]}"
        work = Path(tempfile.mkdtemp(prefix=f"soma-{purpose}-"))
        redis_port, opa_port, fga_port, fga_grpc = (free_port() for _ in range(4))
        sandbox = cls(
            name=name,
            dir=work,
            base=base,
            postgres_dsn=_with_database(base.postgres_dsn, name),
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            openfga_api_url=f"http://127.0.0.1:{fga_port}",
            opa_url=f"http://127.0.0.1:{opa_port}",
            infra_env={
                "SOMA_STATE_DIR": str(work / "state"),
                "SOMA_LOG_DIR": str(work),
                "REDIS_PORT": str(redis_port),
                "OPA_URL": f"http://127.0.0.1:{opa_port}",
                "OPENFGA_API_URL": f"http://127.0.0.1:{fga_port}",
                "OPENFGA_GRPC_PORT": str(fga_grpc),
                "OPENFGA_DATABASE": f"{name}_fga",
            },
        )
        await sweep_stale(base)
        await sandbox._create_database()
        try:
            await sandbox.start(*COMPONENTS)
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    async def _infra(self, action: str, *components: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "bash", str(INFRA), action, *components, env={**os.environ, **self.infra_env}
        )
        if await proc.wait() != 0:
            raise RuntimeError(f"infra.sh {action} {' '.join(components)} failed ({self.dir})")

    async def start(self, *components: str) -> None:
        """Start (again) the sandbox's own instances; returns once they answer."""
        await self._infra("start", *components)

    async def stop(self, *components: str) -> None:
        """SIGTERM the sandbox's own instances and wait until they are gone."""
        await self._infra("stop", *components)

    def pid(self, component: str) -> int:
        return int((self.dir / "state" / f"{component}.pid").read_text())

    async def _create_database(self) -> None:
        conn = await asyncpg.connect(self.base.postgres_dsn)
        try:
            for database in _databases(self.name):
                await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()

    async def close(self) -> None:
        """Stop the instances, drop the database and the namespace's topics."""
        with contextlib.suppress(RuntimeError):
            await self.stop(*COMPONENTS)
        await drop(self.base, self.name)
        shutil.rmtree(self.dir / "state", ignore_errors=True)


def _databases(name: str) -> tuple[str, str]:
    """The mesh's database and its OpenFGA's."""
    return name, f"{name}_fga"


@contextlib.asynccontextmanager
async def open_sandbox(purpose: str, base: CommonSettings | None = None) -> AsyncIterator[Sandbox]:
    """A sandbox for the block's duration."""
    sandbox = await Sandbox.open(purpose, base)
    try:
        yield sandbox
    finally:
        await sandbox.close()


async def drop(base: CommonSettings, name: str) -> None:
    """A sandbox's databases and topics (its processes are gone already)."""
    conn = await asyncpg.connect(base.postgres_dsn)
    try:
        for database in _databases(name):
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=base.kafka_bootstrap_servers)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(name + ".")]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


async def sweep_stale(base: CommonSettings) -> None:
    """Databases and topics of sandboxes older than a day: a killed run's leftovers."""
    conn = await asyncpg.connect(base.postgres_dsn)
    try:
        names = [r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")]
    finally:
        await conn.close()
    now = time.time()
    for name in names:
        match = _NAME.match(name)
        if match and now - int(match.group(1)) > STALE_AFTER_S:
            log.info("dropping a stale sandbox: %s", name)
            await drop(base, name)
