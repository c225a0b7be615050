"""The local broker's storage and configuration, before deploy/infra.sh starts it.

Usage: storage.py KAFKA_DIR ADMIN_FILE ADMIN_USER TEMPLATE HOST PORT CONTROLLER_PORT LOG
       -- JAVA_COMMAND...   (the command that runs kafka.tools.StorageTool)

The broker takes no anonymous client, so its admin's SCRAM credential goes into its
storage when it is formatted (`StorageTool format --add-scram`); the storage and the admin's
credentials file (ADMIN_FILE, gateway_runtime/kafka_credentials.py) belong together, and
`KAFKA_DIR/formatted-with` records which credential the storage has (a hash of it). So:
- no storage yet: the admin's file (made if missing) and a new format with it;
- a storage from before SASL (no record of a credential, and the configuration it ran
  with has no SASL listener): the one case where records are dropped: it is formatted
  anew, once, and what it held is logged;
- a storage with a credential: it is kept, always. If ADMIN_FILE is gone or holds another
  password, this stops (exit 1) saying how to recover, rather than making a credential
  that would not open the broker, or dropping its records to fit one.
The admin's password is on no command line (where `ps` shows it): the configuration is
written here (mode 0600), and StorageTool reads its arguments from a 0600 file (`@file`,
expanded by the java launcher). Exit codes: 0 ready to start, 1 refused, 2 format failed.
Run with the repository on PYTHONPATH.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gateway_runtime import kafka_credentials

REFUSED, FORMAT_FAILED = 1, 2
_PARTITION_DIR = re.compile(r"^(?P<topic>.+)-\d+$")


def say(message: str) -> None:
    """On stderr, as deploy/lib.sh's `log` writes."""
    print(f"[{time.strftime('%H:%M:%S')}] kafka: {message}", file=sys.stderr)


def stamp(credentials: kafka_credentials.Credentials) -> str:
    """What `formatted-with` records: a hash of the admin's name and password."""
    secret = f"{credentials.username}:{credentials.password}".encode()
    return hashlib.sha256(secret).hexdigest()[:32]


def cluster_id() -> str:
    """A KRaft cluster id as `StorageTool random-uuid` makes it (16 random bytes,
    URL-safe base64 without padding, not starting with '-')."""
    while (uid := base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")).startswith("-"):
        pass
    return uid


class Storage:
    """KAFKA_DIR: `data/` (the KRaft log dirs), `server.properties`, `formatted-with`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.data = directory / "data"
        self.config = directory / "server.properties"
        self.stamp_file = directory / "formatted-with"

    @property
    def formatted(self) -> bool:
        return (self.data / "meta.properties").exists()

    def from_before_sasl(self) -> bool:
        """Formatted by the start script of before SASL: no credential recorded, and the
        configuration it last ran with has no SASL listener."""
        if not self.formatted or self.stamp_file.exists() or not self.config.exists():
            return False
        return "sasl.enabled.mechanisms" not in self.config.read_text()

    def holdings(self) -> str:
        """What the storage holds, for the log: its topics and their size."""
        topics = sorted(
            {
                m["topic"]
                for d in self.data.iterdir()
                if d.is_dir() and (m := _PARTITION_DIR.match(d.name))
            }
            - {"__cluster_metadata"}
        )
        size = sum(f.stat().st_size for f in self.data.rglob("*") if f.is_file())
        names = ", ".join(topics) if topics else "none"
        return f"{len(topics)} topics ({names}), {size / 2**20:.1f} MiB"

    def write_private(self, path: Path, text: str) -> None:
        """`text` into `path`, mode 0600 from its first byte."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def _argfile(arguments: list[str]) -> str:
    """A java launcher @file of `arguments`. After the main class the launcher splits it at
    whitespace and takes quotes literally, so no argument may hold either (none does: the
    configuration is named relative to the storage's directory, the rest is hex, base64url
    and fixed words)."""
    for argument in arguments:
        if not argument or re.search(r"[\s\"'#\\]", argument):
            raise ValueError(f"cannot pass {argument!r} in a java @file")
    return "\n".join(arguments) + "\n"


def _recovery(storage: Storage, admin_file: Path) -> str:
    return (
        f"restore {admin_file} (mode 0600) from a backup and start again; or, to drop every"
        f" topic and record of this broker and start afresh: deploy/infra.sh stop kafka;"
        f" rm -rf {storage.data} {storage.stamp_file}; then start it again"
    )


def check(storage: Storage, admin_file: Path, admin_user: str) -> kafka_credentials.Credentials:
    """The admin's credentials that fit the storage (SystemExit(REFUSED) when none do)."""
    if storage.from_before_sasl():
        say(
            f"{storage.data} is a plaintext install from before SASL (no admin credential"
            f" in it): formatting it anew with one, once; dropped: {storage.holdings()}"
            " (make up provisions the topics again)"
        )
        shutil.rmtree(storage.data)
        storage.data.mkdir()
    if storage.formatted and not admin_file.exists():
        say(
            f"{storage.data} was formatted with the admin credential of {admin_file},"
            f" which is gone: nothing was changed; {_recovery(storage, admin_file)}"
        )
        raise SystemExit(REFUSED)
    admin = kafka_credentials.ensure(admin_file, admin_user)
    recorded = storage.stamp_file.read_text().strip() if storage.stamp_file.exists() else None
    if storage.formatted and recorded is not None and recorded != stamp(admin):
        say(
            f"{admin_file} holds another password than the one {storage.data} was"
            f" formatted with: nothing was changed; {_recovery(storage, admin_file)}"
        )
        raise SystemExit(REFUSED)
    return admin


def render(
    storage: Storage, template: Path, admin: kafka_credentials.Credentials, listen: dict[str, str]
) -> None:
    """server.properties from the template: addresses, the admin's login, and a password
    for the controller channel that only lives in this file (new at every start)."""
    values = {
        **listen,
        "DATA_DIR": str(storage.data),
        "ADMIN_USER": admin.username,
        "ADMIN_PASSWORD": admin.password,
        "CONTROLLER_PASSWORD": secrets.token_hex(24),
    }
    names = "|".join(map(re.escape, values))
    text = re.sub(f"@({names})@", lambda m: values[m.group(1)], template.read_text())
    storage.write_private(storage.config, text)


def format_storage(
    storage: Storage, admin: kafka_credentials.Credentials, java: list[str], log: Path
) -> None:
    """StorageTool format with the admin's SCRAM credential, its arguments in a 0600 file."""
    args = storage.dir / ".format.args"
    scram = f"{admin.mechanism}=[name={admin.username},password={admin.password}]"
    arguments = ["format", "--ignore-formatted", "-c", storage.config.name]
    arguments += ["-t", cluster_id(), "--add-scram", scram]
    storage.write_private(args, _argfile(arguments))
    try:
        with open(log, "ab") as out:
            done = subprocess.run(
                [*java, f"@{args.name}"], cwd=storage.dir, stdout=out, stderr=out, check=False
            )
    finally:
        with contextlib.suppress(FileNotFoundError):
            args.unlink()
    if done.returncode != 0:
        raise SystemExit(FORMAT_FAILED)
    storage.stamp_file.write_text(stamp(admin) + "\n")


def main(argv: list[str]) -> int:
    split = argv.index("--")
    directory, admin_file, admin_user, template, host, port, controller, log = argv[:split]
    java = argv[split + 1 :]
    storage = Storage(Path(directory))
    storage.data.mkdir(parents=True, exist_ok=True)
    admin = check(storage, Path(admin_file), admin_user)
    listen = {"HOST": host, "PORT": port, "CONTROLLER_PORT": controller}
    render(storage, Path(template), admin, listen)
    if not storage.formatted:
        format_storage(storage, admin, java, Path(log))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
