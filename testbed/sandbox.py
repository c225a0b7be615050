"""Backing services of one's own for a mesh, beside whatever gateway runs on the machine.

A sandbox holds, under one name (`<purpose>_<epoch>_<hex>`):
- its own Redis, OpenFGA and OPA processes, started and stopped by `deploy/infra.sh`
  with a state directory and free ports of their own, so a test may stop or pause them
  and the stack `make up` started never notices;
- by default, its own databases on the shared Postgres server, the mesh's and its
  OpenFGA's (created here, dropped on close), so a restarted OpenFGA finds its store again;
  with `own=("postgres",)`, a Postgres server of its own instead (initdb'ed in its state
  directory, the mesh's database named after the sandbox, OpenFGA's store in it too);
- by default, its own Kafka namespace on the shared broker (topics, consumer groups and
  every Redis key carry it; the topics and the namespace's ACLs are deleted on close),
  reached with the shared broker's credentials; with `own=("kafka",)`, a single-node
  KRaft broker of its own instead, with SASL and ACLs like the shared one and its
  credentials in the sandbox's directory (testbed/broker.py).
Owned servers may be stopped, started again (same port, same data) and paused (SIGSTOP
of their whole process tree): what outage tests need, with the shared servers untouched.
Sandboxes that a killed run left behind are swept when a new one opens, after a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway_runtime.kafka import KafkaConnection
from gateway_runtime.redis_keys import RedisKeys
from gateway_runtime.settings import CommonSettings
from testbed.broker import admin_login, drop_namespace_of

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "deploy" / "infra.sh"
COMPONENTS = ("redis", "openfga", "opa")  # every sandbox's own
OWNABLE = ("postgres", "kafka")  # the machine's shared servers, unless `own` names them
_NAME = re.compile(r"^[a-z]+_(\d{10})_[0-9a-f]{6}$")  # the mesh's database; +_fga: OpenFGA's
STALE_AFTER_S = 24 * 3600
_HALTED = frozenset("TtZX")  # /proc states of a process that runs no more (stopped, dead)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_database(dsn: str, database: str) -> str:
    """The DSN with its database replaced (postgresql://user:pass@host:port/db?query)."""
    head, _, rest = dsn.rpartition("/")
    query = rest.partition("?")[2]
    return f"{head}/{database}" + (f"?{query}" if query else "")


def _with_server(dsn: str, port: int, database: str) -> str:
    """The DSN pointed at a loopback server on `port`, same user and password."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, ""))


@dataclass
class Sandbox:
    name: str
    dir: Path
    base: CommonSettings
    postgres_dsn: str
    kafka_bootstrap_servers: str
    redis_url: str
    openfga_api_url: str
    opa_url: str
    infra_env: dict[str, str] = field(repr=False)
    kafka_credentials_dir: Path = field(repr=False)
    own: frozenset[str] = frozenset()  # which of OWNABLE run as the sandbox's own servers
    _paused: set[str] = field(default_factory=set, init=False, repr=False)

    @property
    def namespace(self) -> str:
        return self.name

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.name)

    @property
    def kafka(self) -> KafkaConnection:
        """The broker's admin login (anonymous on a shared broker from before SASL)."""
        return admin_login(self.base, self.kafka_bootstrap_servers, self.kafka_credentials_dir)

    @property
    def owned(self) -> tuple[str, ...]:
        """The sandbox's own components, in the order they start (Kafka's JVM last)."""
        return (
            *(c for c in ("postgres",) if c in self.own),
            *COMPONENTS,
            *(c for c in ("kafka",) if c in self.own),
        )

    @property
    def env(self) -> dict[str, str]:
        """What a process of the mesh needs to use this sandbox."""
        return {
            "KAFKA_NAMESPACE": self.name,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "KAFKA_CREDENTIALS_DIR": str(self.kafka_credentials_dir),
            "POSTGRES_DSN": self.postgres_dsn,
            "REDIS_URL": self.redis_url,
            "OPENFGA_API_URL": self.openfga_api_url,
            "OPENFGA_STORE_NAME": self.name,
            "OPA_URL": self.opa_url,
            "LOCAL_LLM_BASE_URL": self.base.local_llm_base_url,
            "SOMA_HOME": str(self.dir),  # the bootstrap admin key is written here
        }

    @classmethod
    async def open(
        cls, purpose: str, base: CommonSettings | None = None, *, own: Iterable[str] = ()
    ) -> Sandbox:
        """A new sandbox, its processes answering; `own` takes Postgres/Kafka off the shared."""
        owned = frozenset(own)
        if not owned <= set(OWNABLE):
            raise ValueError(f"own: only {OWNABLE} may be owned, not {sorted(owned)}")
        base = base or CommonSettings()
        name = f"{purpose}_{int(time.time())}_{uuid.uuid4().hex[:6]}"
        work = Path(tempfile.mkdtemp(prefix=f"soma-{purpose}-"))
        redis_port, opa_port, fga_port, fga_grpc = (free_port() for _ in range(4))
        infra_env = {
            "SOMA_STATE_DIR": str(work / "state"),
            "SOMA_LOG_DIR": str(work),
            "REDIS_PORT": str(redis_port),
            "OPA_URL": f"http://127.0.0.1:{opa_port}",
            "OPENFGA_API_URL": f"http://127.0.0.1:{fga_port}",
            "OPENFGA_GRPC_PORT": str(fga_grpc),
            "OPENFGA_DATABASE": f"{name}_fga",
        }
        postgres_dsn = _with_database(base.postgres_dsn, name)
        if "postgres" in owned:
            # infra.sh's provision_postgres creates the DSN's role and database, and
            # `openfga`; OpenFGA finds this server through POSTGRES_PORT.
            pg_port = free_port()
            postgres_dsn = _with_server(base.postgres_dsn, pg_port, name)
            infra_env.update(
                POSTGRES_PORT=str(pg_port), POSTGRES_DSN=postgres_dsn, OPENFGA_DATABASE="openfga"
            )
        kafka, kafka_credentials = base.kafka_bootstrap_servers, base.kafka_credentials_path
        if "kafka" in owned:
            kafka, kafka_credentials = f"127.0.0.1:{free_port()}", work / "kafka-credentials"
            infra_env.update(
                KAFKA_BOOTSTRAP_SERVERS=kafka,
                KAFKA_CONTROLLER_PORT=str(free_port()),
                KAFKA_CREDENTIALS_DIR=str(kafka_credentials),
            )
        sandbox = cls(
            name=name,
            dir=work,
            base=base,
            postgres_dsn=postgres_dsn,
            kafka_bootstrap_servers=kafka,
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            openfga_api_url=f"http://127.0.0.1:{fga_port}",
            opa_url=f"http://127.0.0.1:{opa_port}",
            infra_env=infra_env,
            kafka_credentials_dir=kafka_credentials,
            own=owned,
        )
        await sweep_stale(base)
        if "postgres" not in owned:
            await sandbox._create_database()
        try:
            for component in sandbox.owned:  # one at a time: infra.sh would start Kafka 2nd
                await sandbox.start(component)
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    def _check_owned(self, components: Iterable[str]) -> None:
        """The shared servers are never the sandbox's to stop, start or pause."""
        foreign = [c for c in components if c not in self.owned]
        if foreign:
            raise ValueError(f"{foreign} not the sandbox's own (it owns {self.owned})")

    async def _infra(self, action: str, *components: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "bash", str(INFRA), action, *components, env={**os.environ, **self.infra_env}
        )
        if await proc.wait() != 0:
            raise RuntimeError(f"infra.sh {action} {' '.join(components)} failed ({self.dir})")

    async def start(self, *components: str) -> None:
        """Start (again) the sandbox's own instances; returns once they answer.

        A server started again has the same port and data directory, so clients reconnect
        and find their databases, topics and records.
        """
        self._check_owned(components)
        await self._infra("start", *components)

    async def stop(self, *components: str) -> None:
        """SIGTERM the sandbox's own instances and wait until they are gone."""
        self._check_owned(components)
        for component in components:  # a stopped process would not see the SIGTERM
            if component in self._paused:
                await self.resume(component)
        await self._infra("stop", *components)

    async def pause(self, component: str) -> None:
        """SIGSTOP the component's whole process tree; returns once every process halted.

        Unlike stop, its sockets stay open: connections and new connects hang instead of
        failing (for Postgres its backends halt too, so pooled connections hang as well).
        """
        self._check_owned([component])
        try:
            root = self.pid(component)
        except (OSError, ValueError):
            root = 0
        if root <= 0 or _state(root) in ("Z", "X"):
            raise RuntimeError(f"{component} is not running")
        self._paused.add(component)
        signalled: set[int] = set()
        deadline = time.monotonic() + 10
        while True:
            # The parent first: a halted postmaster forks no new backend while its
            # children are listed and stopped.
            tree = _tree(root)
            fresh = [pid for pid in tree if pid not in signalled]
            for pid in fresh:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                signalled.add(pid)
            if not fresh and all(_state(pid) in _HALTED for pid in tree):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{component}: processes {tree} did not all halt")
            await asyncio.sleep(0.01)

    async def resume(self, component: str) -> None:
        """SIGCONT the component's process tree; a no-op unless it is paused."""
        self._check_owned([component])
        self._paused.discard(component)
        try:
            root = self.pid(component)
        except (OSError, ValueError):
            return  # not running at all: nothing to continue
        deadline = time.monotonic() + 10
        while True:
            tree = _tree(root)
            stopped = [pid for pid in tree if _state(pid) in ("T", "t")]
            if not stopped:
                return
            for pid in reversed(stopped):  # the children first, the parent last
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{component}: processes {stopped} did not continue")
            await asyncio.sleep(0.01)

    def pid(self, component: str) -> int:
        state = self.dir / "state"
        if component == "postgres":  # written by the postmaster itself, pid first
            return int((state / "postgres" / "postmaster.pid").read_text().split()[0])
        return int((state / f"{component}.pid").read_text())

    async def _create_database(self) -> None:
        conn = await asyncpg.connect(self.base.postgres_dsn)
        try:
            for database in _databases(self.name):
                await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()

    async def close(self) -> None:
        """Stop the instances; drop the database and topics on the servers it shares."""
        for component in list(self._paused):
            with contextlib.suppress(RuntimeError, TimeoutError):
                await self.resume(component)
        with contextlib.suppress(RuntimeError):
            await self.stop(*self.owned)
        shared = {c: c not in self.own for c in OWNABLE}
        await drop(self.base, self.name, databases=shared["postgres"], topics=shared["kafka"])
        shutil.rmtree(self.dir / "state", ignore_errors=True)
        if "kafka" in self.own:  # the credentials of a broker that is gone
            shutil.rmtree(self.kafka_credentials_dir, ignore_errors=True)


def _databases(name: str) -> tuple[str, str]:
    """The mesh's database and its OpenFGA's."""
    return name, f"{name}_fga"


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rpartition(")")[2].split()  # the name may hold spaces and parens
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _tree(root: int) -> list[int]:
    """`root` and its descendants, parents before children."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in _proc_table().items():
        children.setdefault(ppid, []).append(pid)
    tree, i = [root], 0
    while i < len(tree):
        tree.extend(children.get(tree[i], ()))
        i += 1
    return tree


def _state(pid: int) -> str:
    """The process's /proc state letter; X once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return "X"


@contextlib.asynccontextmanager
async def open_sandbox(
    purpose: str, base: CommonSettings | None = None, *, own: Iterable[str] = ()
) -> AsyncIterator[Sandbox]:
    """A sandbox for the block's duration."""
    sandbox = await Sandbox.open(purpose, base, own=own)
    try:
        yield sandbox
    finally:
        await sandbox.close()


async def drop(
    base: CommonSettings, name: str, *, databases: bool = True, topics: bool = True
) -> None:
    """A sandbox's databases and topics on the shared servers (its processes are gone)."""
    if databases:
        conn = await asyncpg.connect(base.postgres_dsn)
        try:
            for database in _databases(name):
                await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()
    if topics:
        await drop_namespace_of(base, name)


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
