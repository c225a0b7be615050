"""The broker's storage and its admin credential (deploy/infra.sh, deploy/kafka/storage.py).

Each test runs a broker of its own (a sandbox's), stops it and starts it again with
deploy/infra.sh as `make up` would: a storage is never dropped to fit a credential (a lost
`admin.json` stops the start, saying how to recover), except once for an install from
before SASL, which is logged; the admin's password is on no command line.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from gateway_runtime import kafka_credentials as creds
from gateway_runtime.broker_admin import BrokerAdmin
from gateway_runtime.kafka import KafkaConnection
from gateway_runtime.settings import CommonSettings
from testbed.sandbox import INFRA, ROOT, Sandbox, open_sandbox
from tests.security.kafka_logins import REFUSED_S, login_refused, producer_for


async def _infra(sandbox: Sandbox, *args: str, path: str | None = None) -> tuple[int, str]:
    """deploy/infra.sh in the sandbox's environment: its exit code and its stderr."""
    env = {**os.environ, **sandbox.infra_env, **({"PATH": path} if path else {})}
    proc = await asyncio.create_subprocess_exec(
        "bash", str(INFRA), *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def _spying_path(directory: Path, log: Path) -> str:
    """A PATH whose `java` and `sed` log their arguments, then run the real ones."""
    directory.mkdir()
    for tool in ("java", "sed"):
        real = shutil.which(tool)
        assert real is not None
        spy = directory / tool
        spy.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >>"{log}"\nexec "{real}" "$@"\n')
        spy.chmod(0o755)
    return f"{directory}:{os.environ['PATH']}"


async def _one_record(kafka: KafkaConnection, topic: str) -> bytes | None:
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        record = await asyncio.wait_for(consumer.getone(), REFUSED_S)
        return bytes(record.value)
    finally:
        await consumer.stop()


async def test_a_lost_admin_credential_stops_the_broker_and_keeps_its_records(
    settings: CommonSettings, tmp_path: Path
) -> None:
    async with open_sandbox("kstore", settings, own=("kafka",)) as sandbox:
        kafka, topic = sandbox.kafka, f"{sandbox.namespace}.kept"
        await BrokerAdmin(kafka).create_topic(topic, 1)
        producer = producer_for(kafka)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"precious", partition=0)
        finally:
            await producer.stop()
        await sandbox.stop("kafka")
        admin_file = creds.credentials_file(sandbox.kafka_credentials_dir, creds.ADMIN)
        saved = admin_file.read_bytes()
        admin_file.unlink()

        code, err = await _infra(sandbox, "start", "kafka")
        assert code == 1
        assert str(admin_file) in err and "restore" in err, err
        assert not admin_file.exists()  # no new credential that would not open the broker

        # Restored, the broker starts on the same storage; its records are all there, and
        # the admin's password was on no command line (sed's, java's) on the way.
        admin_file.write_bytes(saved)
        admin_file.chmod(0o600)
        spied = tmp_path / "argv.log"
        code, err = await _infra(
            sandbox, "start", "kafka", path=_spying_path(tmp_path / "spy", spied)
        )
        assert code == 0, err
        assert await _one_record(kafka, topic) == b"precious"
        password = creds.load(admin_file).password
        assert password not in spied.read_text()
        cmdline = f"/proc/{sandbox.pid('kafka')}/cmdline"
        assert password.encode() not in await asyncio.to_thread(Path(cmdline).read_bytes)
        # Formatting anew (a new sandbox's first start) passes it on no command line either.
        await sandbox.stop("kafka")
        shutil.rmtree(sandbox.dir / "state" / "kafka")
        code, err = await _infra(
            sandbox, "start", "kafka", path=f"{tmp_path / 'spy'}:{os.environ['PATH']}"
        )
        assert code == 0, err
        assert "StorageTool" in spied.read_text()  # the format step ran, watched
        assert password not in spied.read_text()


def _kafka_libs(settings: CommonSettings) -> Path:
    """Where deploy/install.sh put the broker's jars (the version of deploy/kafka/pom.xml)."""
    pom = (ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>(.+?)</kafka.version>", pom)
    assert match is not None
    return settings.soma_home / f"kafka-{match.group(1)}" / "libs"


PRE_SASL = """process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
log.dirs={data}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
"""


async def test_a_plaintext_install_from_before_sasl_is_formatted_anew_once(
    settings: CommonSettings,
) -> None:
    async with open_sandbox("kmigrate", settings, own=("kafka",)) as sandbox:
        await sandbox.stop("kafka")
        state = sandbox.dir / "state" / "kafka"
        shutil.rmtree(state)
        (state / "data").mkdir(parents=True)
        # What the start script of before SASL left: its plaintext configuration, a store
        # formatted without any SCRAM credential, and a topic's partition in it.
        config = state / "server.properties"
        port = sandbox.kafka_bootstrap_servers.rpartition(":")[2]
        controller = sandbox.infra_env["KAFKA_CONTROLLER_PORT"]
        config.write_text(PRE_SASL.format(controller=controller, data=state / "data", port=port))
        libs = _kafka_libs(settings)
        formatted = await asyncio.create_subprocess_exec(
            "java", "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
            "-c", str(config), "-t", "q1Sh-9_ISia_zwGINzRvyQ",
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert await formatted.wait() == 0
        (state / "data" / "soma.turn.requested-3").mkdir()

        code, err = await _infra(sandbox, "start", "kafka")
        assert code == 0, err
        assert "from before SASL" in err and "soma.turn.requested" in err, err
        # Now with SASL: the admin logs in, nobody else does.
        assert await BrokerAdmin(sandbox.kafka).create_topic(f"{sandbox.namespace}.t", 1)
        await login_refused(KafkaConnection(sandbox.kafka_bootstrap_servers))
        # Once: the next start keeps the store.
        await sandbox.stop("kafka")
        code, err = await _infra(sandbox, "start", "kafka")
        assert code == 0 and "before SASL" not in err, err
        assert not await BrokerAdmin(sandbox.kafka).create_topic(f"{sandbox.namespace}.t", 1)
