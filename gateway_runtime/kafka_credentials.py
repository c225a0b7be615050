"""The broker's principals and their credentials files: who is who to Kafka.

Every process of the mesh logs in to the broker as a SCRAM principal of its own (the
service's name); the admin principal (a super user) provisions the others, and each
automation has `automation-<name>`, which may write its inbound topic alone. A principal's
credentials are a JSON file, `<dir>/<principal>.json`, mode 0600: deploy/infra.sh makes
the admin's before it formats the broker (deploy/kafka/storage.py, which never passes the
password on a command line), `python -m gateway_runtime.provision` the services',
`soma-gateway automation add` an automation's (with the broker's address and the topic,
for the automation's own use).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from schemas.stages import STAGES

ADMIN = "admin"
# One principal per service of the mesh: its service name (SERVICE_NAME).
MESH_PRINCIPALS: tuple[str, ...] = ("ingress", *(stage.service for stage in STAGES))
AUTOMATION_PREFIX = "automation-"
DEFAULT_MECHANISM = "SCRAM-SHA-512"


def principal_for(service_name: str) -> str:
    """The principal a process logs in as: its service's own, else the admin's (the
    provisioning step, the CLI, tests and benchmarks, which create topics and ACLs)."""
    return service_name if service_name in MESH_PRINCIPALS else ADMIN


def automation_principal(name: str) -> str:
    return AUTOMATION_PREFIX + name


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    mechanism: str = DEFAULT_MECHANISM
    security_protocol: str = "SASL_PLAINTEXT"
    # An automation's file also says where to connect and what it may write.
    bootstrap_servers: str | None = None
    topic: str | None = None
    tenant: str | None = None

    def to_json(self) -> str:
        body = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(body, indent=2) + "\n"


def new_password() -> str:
    return secrets.token_hex(24)  # 192 bits; hex is safe in JAAS files and shell lines


def credentials_file(directory: Path, principal: str) -> Path:
    return directory / f"{principal}.json"


def load(path: Path) -> Credentials:
    data = json.loads(path.read_text())
    return Credentials(
        username=str(data["username"]),
        password=str(data["password"]),
        mechanism=str(data.get("mechanism", DEFAULT_MECHANISM)),
        security_protocol=str(data.get("security_protocol", "SASL_PLAINTEXT")),
        bootstrap_servers=data.get("bootstrap_servers"),
        topic=data.get("topic"),
        tenant=data.get("tenant"),
    )


def find(directory: Path, principal: str) -> Credentials | None:
    """The principal's credentials, if its file exists."""
    path = credentials_file(directory, principal)
    try:
        return load(path)
    except FileNotFoundError:
        return None


def write(path: Path, credentials: Credentials, *, replace: bool = False) -> None:
    """Write the file with mode 0600 from its first byte; without `replace`, an existing
    file is left alone (FileExistsError)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(credentials.to_json())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file exists, never overwrites it
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One provisioning at a time per directory: two would each make a password."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure(path: Path, principal: str) -> Credentials:
    """The principal's credentials in `path`, made with a new password if missing."""
    try:
        write(path, Credentials(principal, new_password()))
    except FileExistsError:
        pass  # kept: the broker has this password already
    found = load(path)
    if found.username != principal:
        raise ValueError(f"{path} holds {found.username!r}'s credentials, not {principal!r}'s")
    return found
