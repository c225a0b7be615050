"""Kafka is a trust boundary: the broker, not the record, says who may publish what.

A sandbox with a broker of its own (SASL/SCRAM, ACLs, nothing anonymous, as `make up`'s),
provisioned as a mesh's would be; automations get their credentials from the CLI
(`soma-gateway automation add`), as an operator would give them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from gateway_runtime import kafka_credentials as creds
from gateway_runtime.broker_admin import BrokerAdmin
from gateway_runtime.kafka import KafkaConnection, make_admin
from gateway_runtime.settings import CommonSettings
from ingress.consumer_groups import ConsumerGroups
from schemas.stages import STAGES
from schemas.topics import Topics, inbound_topic
from testbed.mesh import run_module
from testbed.sandbox import ROOT, Sandbox, open_sandbox
from tests.security.kafka_logins import REFUSED_S, login_refused, producer_for


@pytest.fixture(scope="module")
async def boundary(settings: CommonSettings) -> AsyncIterator[Sandbox]:
    """A broker of its own, with the mesh's topics, principals and ACLs, and a database
    with the automation registry."""
    async with open_sandbox("kbound", settings, own=("kafka",)) as sandbox:
        await run_module(_env(sandbox), "gateway_runtime.provision")
        yield sandbox


def _env(sandbox: Sandbox) -> dict[str, str]:
    return {**os.environ, **sandbox.env, "PYTHONPATH": str(ROOT)}


async def _cli(sandbox: Sandbox, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "soma_cli",
        *args,
        cwd=ROOT,
        env=_env(sandbox),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _add(sandbox: Sandbox, name: str, out: Path) -> creds.Credentials:
    code, stdout, stderr = await _cli(
        sandbox, "automation", "add", name, "--tenant", "default", "--out", str(out)
    )
    assert code == 0, stderr
    assert str(out) in stdout
    return creds.load(out)


async def test_nobody_gets_in_anonymously_or_with_a_wrong_password(
    boundary: Sandbox, tmp_path: Path
) -> None:
    await login_refused(KafkaConnection(boundary.kafka_bootstrap_servers))  # PLAINTEXT
    admin = creds.find(boundary.kafka_credentials_dir, creds.ADMIN)
    assert admin is not None
    wrong = KafkaConnection(
        boundary.kafka_bootstrap_servers,
        "SASL_PLAINTEXT",
        admin.mechanism,
        admin.username,
        admin.password + "x",
    )
    await login_refused(wrong)
    # The services' credentials are files only their user may read.
    for principal in (creds.ADMIN, *creds.MESH_PRINCIPALS):
        path = creds.credentials_file(boundary.kafka_credentials_dir, principal)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_an_automation_writes_its_inbound_topic_and_nothing_else(
    boundary: Sandbox, tmp_path: Path
) -> None:
    name = f"bot-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "bot.json"
    credentials = await _add(boundary, name, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert credentials.topic == inbound_topic(boundary.namespace, name)
    assert credentials.username == f"automation-{name}"
    assert credentials.tenant == "default"
    other = await _add(boundary, f"other-{uuid.uuid4().hex[:6]}", tmp_path / "other.json")

    topics = Topics.for_namespace(boundary.namespace)
    producer = producer_for(KafkaConnection.from_credentials(credentials))
    await producer.start()
    try:
        sent = await producer.send_and_wait(credentials.topic, b"turn", key=b"session-1")
        assert sent.topic == credentials.topic
        for internal in (
            topics.requested,
            topics.authorized,
            topics.contextualized,
            topics.completed,
            topics.tool_requested,
            topics.dead_letter,
        ):
            with pytest.raises(TopicAuthorizationFailedError):
                await producer.send_and_wait(internal.name, b"forged", key=b"session-1")
        assert other.topic is not None
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(other.topic, b"not mine", key=b"session-1")
    finally:
        await producer.stop()


async def test_a_service_principal_stays_in_its_namespace(boundary: Sandbox) -> None:
    """The mesh's services write their namespace's topics, and no other namespace's."""
    kafka = KafkaConnection.for_principal(
        boundary.kafka_bootstrap_servers, boundary.kafka_credentials_dir, "llm_worker"
    )
    assert kafka.username == "llm_worker"
    producer = producer_for(kafka)
    await producer.start()
    try:
        completed = Topics.for_namespace(boundary.namespace).completed.name
        assert (await producer.send_and_wait(completed, b"ok", key=b"s")).topic == completed
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait("elsewhere.turn.completed", b"no", key=b"s")
    finally:
        await producer.stop()


async def test_a_revoked_automation_is_locked_out_at_once(
    boundary: Sandbox, tmp_path: Path
) -> None:
    name = f"gone-{uuid.uuid4().hex[:6]}"
    credentials = await _add(boundary, name, tmp_path / "gone.json")
    assert credentials.topic is not None
    kafka = KafkaConnection.from_credentials(credentials)
    connected = producer_for(kafka)
    await connected.start()  # logged in before the revocation
    try:
        await connected.send_and_wait(credentials.topic, b"before", key=b"s")
        code, stdout, stderr = await _cli(boundary, "automation", "revoke", name)
        assert code == 0, stderr
        assert f"revoked {name}" in stdout
        with pytest.raises(TopicAuthorizationFailedError):
            await connected.send_and_wait(credentials.topic, b"after", key=b"s")
    finally:
        await connected.stop()
    await login_refused(kafka)

    code, stdout, _ = await _cli(boundary, "automation", "list", "--json")
    assert code == 0
    [row] = [r for r in json.loads(stdout) if r["name"] == name]
    assert row["revoked_at"] is not None and row["topic"] == credentials.topic
    # A name is never given out again, revoked or not.
    code, _, stderr = await _cli(
        boundary, "automation", "add", name, "--tenant", "default", "--out", str(tmp_path / "x")
    )
    assert code == 1 and "never reused" in stderr
    assert not (tmp_path / "x").exists()


async def test_the_cli_refuses_what_it_cannot_do(boundary: Sandbox, tmp_path: Path) -> None:
    add = ("automation", "add")
    code, _, stderr = await _cli(boundary, *add, "Not_OK", "--tenant", "default")
    assert code == 2 and "lowercase" in stderr
    code, _, stderr = await _cli(boundary, *add, "fine", "--tenant", "no-such-tenant")
    assert code == 2 and "unknown tenant 'no-such-tenant'" in stderr
    existing = tmp_path / "taken.json"
    existing.write_text("keep me")
    code, _, stderr = await _cli(
        boundary, *add, "fine", "--tenant", "default", "--out", str(existing)
    )
    assert code == 1 and "exists" in stderr
    assert existing.read_text() == "keep me"
    code, _, stderr = await _cli(boundary, "automation", "revoke", "never-added")
    assert code == 1 and "no automation 'never-added'" in stderr


# ---- least privilege: each service of the mesh may do what its stage does, nothing more --

# The Topics fields each service may write: its stage's outputs and, where it runs the
# stage loop, the dead letters; the ingress writes turns and replays a dead letter to the
# internal topic it came from (one from an automation's inbound topic to the requests
# topic). Stated apart from gateway_runtime/broker_admin.py's table, which this checks.
WRITES = {
    "ingress": {"requested", "authorized", "contextualized", "completed", "tool_requested"},
    "policy_worker": {"authorized", "dead_letter"},
    "context_worker": {"contextualized", "completed", "dead_letter"},
    "llm_worker": {"tool_requested", "completed", "dead_letter"},
    "tool_dispatcher": {"contextualized", "dead_letter"},
    "persistence_worker": {"dead_letter"},
    "deadletter_index": set(),
}
# The input each stage's service consumes, in its stage's consumer group.
READS = {stage.service: (stage.input, stage.name) for stage in STAGES}


def _service(boundary: Sandbox, principal: str) -> KafkaConnection:
    return KafkaConnection.for_principal(
        boundary.kafka_bootstrap_servers, boundary.kafka_credentials_dir, principal
    )


async def _writes(kafka: KafkaConnection, topics: list[str]) -> dict[str, bool]:
    """topic -> whether the broker took a record from `kafka`'s principal."""
    producer = producer_for(kafka)
    taken = {}
    try:
        try:
            await producer.start()
        except ClusterAuthorizationFailedError:  # allowed to write no topic at all, the
            return dict.fromkeys(topics, False)  # idempotent producer cannot even start
        for topic in topics:
            try:
                await producer.send_and_wait(topic, b"probe", key=b"least-privilege")
                taken[topic] = True
            except TopicAuthorizationFailedError:
                taken[topic] = False
    finally:
        await producer.stop()
    return taken


async def _reads(kafka: KafkaConnection, topic: str, group: str) -> bool:
    """Whether `kafka`'s principal may consume `topic` as a member of `group`."""
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    consumer.subscribe([topic])
    try:
        await asyncio.wait_for(consumer.start(), REFUSED_S)
        await asyncio.wait_for(consumer.getmany(timeout_ms=200), REFUSED_S)
        return True
    except (TopicAuthorizationFailedError, GroupAuthorizationFailedError):
        return False
    finally:
        await consumer.stop()


async def test_each_service_writes_only_what_its_stage_produces(
    boundary: Sandbox, tmp_path: Path
) -> None:
    topics = Topics.for_namespace(boundary.namespace)
    named = {f.name: getattr(topics, f.name).name for f in dataclasses.fields(topics)}
    bot = await _add(boundary, f"lp-{uuid.uuid4().hex[:6]}", tmp_path / "lp.json")
    assert bot.topic is not None
    expected, actual = {}, {}
    for principal in creds.MESH_PRINCIPALS:
        taken = await _writes(_service(boundary, principal), [*named.values(), bot.topic])
        actual[principal] = {field for field, name in named.items() if taken[name]}
        expected[principal] = WRITES[principal]
        # No service of the mesh writes an automation's inbound topic, the ingress included.
        assert taken[bot.topic] is False, principal
    assert actual == expected


async def test_each_service_reads_only_its_input(boundary: Sandbox) -> None:
    topics = Topics.for_namespace(boundary.namespace)
    for principal, (field, stage) in READS.items():
        kafka, group = _service(boundary, principal), f"{boundary.namespace}.{stage}"
        assert await _reads(kafka, getattr(topics, field).name, group), principal
        other = "requested" if field != "requested" else "authorized"
        assert not await _reads(kafka, getattr(topics, other).name, group), principal
    # The ingress reads no topic at all (it only describes them, for /v1/health).
    for topic in (topics.requested, topics.completed):
        group = f"{boundary.namespace}.persistence"
        assert not await _reads(_service(boundary, "ingress"), topic.name, group)


async def test_the_ingress_sees_every_stage_group_for_health(
    boundary: Sandbox, tmp_path: Path
) -> None:
    """/v1/health's view (ingress/consumer_groups.py) works with the ingress's grants: group
    states and lags, an automation's inbound topic in the policy stage's lag too."""
    bot = await _add(boundary, f"hl-{uuid.uuid4().hex[:6]}", tmp_path / "hl.json")
    assert bot.topic is not None
    producer = producer_for(KafkaConnection.from_credentials(bot))
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(bot.topic, b"turn", partition=0)
    finally:
        await producer.stop()

    async def policy_lag() -> int:
        ingress = _service(boundary, "ingress")
        admin = make_admin(ingress, client_id="health")
        offsets = AIOKafkaConsumer(**ingress.client_kwargs(), group_id=None)
        await admin.start()
        await offsets.start()
        try:
            groups = ConsumerGroups(admin, offsets, boundary.namespace, cache_s=0)
            views = {view.stage: view for view in await groups.inspect()}
        finally:
            await offsets.stop()
            await admin.close()
        assert set(views) == {stage.name for stage in STAGES}
        return views["policy"].lag

    # The policy stage takes the first record, then the other two: each commit shows.
    policy = AIOKafkaConsumer(
        **_service(boundary, "policy_worker").client_kwargs(),
        group_id=f"{boundary.namespace}.policy",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    policy.subscribe([bot.topic])
    await policy.start()
    try:
        first = await asyncio.wait_for(policy.getone(), REFUSED_S)
        partition = TopicPartition(bot.topic, 0)
        await policy.commit({partition: first.offset + 1})
        behind = await policy_lag()
        await policy.commit({partition: first.offset + 3})
        assert await policy_lag() == behind - 2
    finally:
        await policy.stop()


def _broad_grants(namespace: str) -> list[AclBinding]:
    """What provisioning gave every service before: all of the namespace's topics and groups."""
    return [
        AclBinding(kind, f"{namespace}.", ResourcePatternType.PREFIXED, f"User:{principal}",
                   "*", op, AclPermissionType.ALLOW)
        for principal in creds.MESH_PRINCIPALS
        for kind, ops in (
            (ResourceType.TOPIC, (AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE)),
            (ResourceType.GROUP, (AclOperation.READ, AclOperation.DESCRIBE)),
        )
        for op in ops
    ]  # fmt: skip


async def test_provisioning_replaces_the_broad_grants_of_an_older_install(
    boundary: Sandbox,
) -> None:
    admin = BrokerAdmin(boundary.kafka)
    broad = _broad_grants(boundary.namespace)
    await admin.grant(broad)  # an install provisioned before least privilege
    await run_module(_env(boundary), "gateway_runtime.provision")
    after = await admin.acls()
    assert not set(broad) & after
    requested = Topics.for_namespace(boundary.namespace).requested.name
    assert await _writes(_service(boundary, "context_worker"), [requested]) == {requested: False}
    # Again: nothing to change.
    await run_module(_env(boundary), "gateway_runtime.provision")
    assert await admin.acls() == after


async def test_two_concurrent_adds_of_one_name_leave_the_winner_working(
    boundary: Sandbox, tmp_path: Path
) -> None:
    name = f"race-{uuid.uuid4().hex[:6]}"
    outs = [tmp_path / "first.json", tmp_path / "second.json"]
    results = await asyncio.gather(
        *(
            _cli(boundary, "automation", "add", name, "--tenant", "default", "--out", str(o))
            for o in outs
        )
    )
    codes = [code for code, _, _ in results]
    assert sorted(codes) == [0, 1], results
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    # The winner's credentials work: the loser changed nothing of its user, ACLs or topic.
    credentials = creds.load(outs[winner])
    assert credentials.topic is not None
    producer = producer_for(KafkaConnection.from_credentials(credentials))
    await producer.start()
    try:
        sent = await producer.send_and_wait(credentials.topic, b"turn", key=b"s")
        assert sent.topic == credentials.topic
    finally:
        await producer.stop()
    assert f"automation {name!r} exists" in results[loser][2]
    assert not outs[loser].exists()
