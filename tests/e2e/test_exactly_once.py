"""Exactly-once stage transitions: a stage process killed (kill -9) after it handled
records but before the transaction carrying their outputs committed never makes an
output record twice, and loses none.

The stage is tests/e2e/exactly_once_stage.py run by `serve_stage` like every worker (the
stage loop, its transactional producer, read_committed consumer and offsets sent in the
transaction). Turns stream into its input topic at a steady rate while it is killed and
started again under the same instance name (its transactional id: the new process fences
the dead one and aborts what it left open). Each process notes every turn it handled:
a turn noted twice proves a kill fell between handling and commit. The output topic is
then read with read_committed: every turn is there, each exactly once. The same read
with read_uncommitted shows what the aborted transactions had written (printed, `-s`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from gateway_runtime.settings import CommonSettings
from schemas.codec import Codec, header
from schemas.events import TurnRequested
from schemas.topics import Topic, Topics
from testbed.mesh import Mesh, mesh_env, provision
from testbed.sandbox import open_sandbox

RATE = 200  # turns per second into the stage
SESSIONS = 40
MAX_KILLS = 6
STAGE = "eos-stage"  # the process name, and so its STAGE_INSTANCE
MODULE = "tests.e2e.exactly_once_stage"


@pytest.fixture(scope="module")
async def stage_mesh(settings: CommonSettings, fake_llm: str) -> AsyncIterator[Mesh]:
    """A namespace of its own (topics, ACLs, databases), and no mesh workers: the one
    stage under test is started by the test."""
    async with open_sandbox("eos", settings) as sandbox:
        mesh = Mesh(env=mesh_env(sandbox, fake_llm + "/v1"), log_dir=sandbox.dir)
        try:
            await provision(mesh.env)
            yield mesh
        finally:
            mesh.stop_all()
            print(f"exactly-once logs: {sandbox.dir}")


async def send_turns(mesh: Mesh, topic: str, stop: asyncio.Event) -> list[str]:
    """TurnRequested records at RATE per second until `stop`; their event ids."""
    producer = AIOKafkaProducer(**mesh.kafka.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    sent: list[str] = []
    codec, began = Codec(), time.monotonic()
    try:
        while not stop.is_set():
            event = TurnRequested(
                uuid.uuid4().hex, f"s-{len(sent) % SESSIONS}", "hi", int(time.time() * 1000)
            )
            record = codec.encode(event)
            await producer.send_and_wait(
                topic, value=record.value, key=record.key, headers=record.headers
            )
            sent.append(event.event_id)
            await asyncio.sleep(max(0.0, began + len(sent) / RATE - time.monotonic()))
    finally:
        await producer.stop()
    return sent


async def read_output(
    mesh: Mesh, topic: Topic, isolation: str, expected: set[str], timeout: float
) -> list[str]:
    """The event-id header of every record in `topic`, read from the start until every
    id of `expected` is seen and nothing more arrives for a second (or `timeout`)."""
    consumer = AIOKafkaConsumer(
        **mesh.kafka.client_kwargs(), isolation_level=isolation, enable_auto_commit=False
    )
    await consumer.start()
    ids: list[str] = []
    try:
        partitions = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline, quiet_since = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                ids += [header(list(r.headers), "event-id") or "" for r in records]
            if batches:
                quiet_since = time.monotonic()
            elif expected <= set(ids) and time.monotonic() - quiet_since > 1.0:
                break
    finally:
        await consumer.stop()
    return ids


def handled(path: Path) -> list[str]:
    return path.read_text().split()


def noted(path: Path) -> int:
    """How many turns were handled: each note is an event id (32 hex digits) and a newline."""
    return path.stat().st_size // 33


async def until(condition: Callable[[], bool], timeout: float, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(every)


async def test_a_stage_killed_between_handling_and_commit_never_doubles_an_output(
    stage_mesh: Mesh, tmp_path: Path
) -> None:
    mesh = stage_mesh
    topics = Topics.for_namespace(mesh.env["KAFKA_NAMESPACE"])
    notes = tmp_path / "handled"
    notes.touch()
    mesh.start(STAGE, MODULE, [str(notes)])
    await mesh.wait_group_members("policy")
    stop = asyncio.Event()
    sender = asyncio.create_task(send_turns(mesh, topics.requested.name, stop))
    kills = 0
    try:
        while kills < MAX_KILLS:
            seen = noted(notes)
            # Checked every millisecond: the kill comes just after a turn was handled, while
            # the transaction carrying its output is still on its way.
            await until(lambda seen=seen: noted(notes) >= seen + 60, 60, every=0.001)
            # The stage started after the last kill has handled again what that one had
            # handled without committing: the kills fell where they must.
            if kills and any(n > 1 for n in Counter(handled(notes)).values()):
                break
            mesh.kill(STAGE)  # kill -9: no drain, no commit, its transaction left open
            kills += 1
            mesh.start(STAGE, MODULE, [str(notes)])
        seen = len(handled(notes))
        await until(lambda: len(handled(notes)) > seen, 60)  # the last start takes turns
    finally:
        stop.set()
        sent = await sender
    expected = set(sent)
    try:
        await until(lambda: expected <= set(handled(notes)), 120)  # the stage caught up
        committed = await read_output(mesh, topics.authorized, "read_committed", expected, 120)
        everything = await read_output(mesh, topics.authorized, "read_uncommitted", expected, 5)
    finally:
        mesh.stop(STAGE)  # SIGTERM: its last transaction, then it leaves the group
    counts = Counter(committed)
    twice = [i for i, n in Counter(handled(notes)).items() if n > 1]
    print(
        f"kills={kills} sent={len(sent)} handled twice={len(twice)}"
        f" committed records={len(committed)} records in the log={len(everything)}"
    )
    assert twice, "no kill fell between handling and commit: the test proved nothing"
    assert set(counts) == expected, f"lost: {len(expected - set(counts))}"
    doubled = {i: n for i, n in counts.items() if n > 1}
    assert not doubled, f"output records made twice: {doubled}"


async def test_a_replica_killed_for_good_is_taken_over_without_doubles(
    stage_mesh: Mesh, tmp_path: Path
) -> None:
    """Two replicas (transactional ids of their own); one is killed and not started
    again: the other takes its partitions once the group drops it (session timeout), and
    what it had handled without committing is handled again there (the count is
    printed: a kill need not fall in that window). Its open transaction is aborted by the
    broker's timeout (TRANSACTION_TIMEOUT_S): until then it holds back the readers of
    the partitions it wrote, never lets them read its records."""
    mesh = stage_mesh
    topics = Topics.for_namespace(mesh.env["KAFKA_NAMESPACE"])
    notes = tmp_path / "handled"
    notes.touch()
    for name in ("eos-a", "eos-b"):
        mesh.start(name, MODULE, [str(notes)])
    await mesh.wait_group_members("policy", count=2)
    stop = asyncio.Event()
    sender = asyncio.create_task(send_turns(mesh, topics.requested.name, stop))
    try:
        await until(lambda: noted(notes) >= 200, 60, every=0.001)
        mesh.kill("eos-a")
        killed = time.monotonic()
        # The load goes on, to eos-a's partitions too, past its session timeout (10 s):
        # the length of the fault, not a wait for readiness.
        await asyncio.sleep(15)
    finally:
        stop.set()
        sent = await sender
    expected = set(sent)
    try:
        # Every turn handled: eos-a's partitions were taken over by eos-b.
        await until(lambda: expected <= set(handled(notes)), 60)
        took_over = time.monotonic() - killed
        committed = await read_output(mesh, topics.authorized, "read_committed", expected, 120)
    finally:
        mesh.stop("eos-b")
    twice = [i for i, n in Counter(handled(notes)).items() if n > 1]
    print(f"sent={len(sent)} handled {took_over:.1f} s after the kill, twice: {len(twice)}")
    counts = Counter(committed)
    assert set(counts) >= expected, f"lost: {len(expected - set(counts))}"
    doubled = {i: n for i, n in counts.items() if n > 1}
    assert not doubled, f"output records made twice: {doubled}"
