"""The stage loop itself, on an in-memory consumer and publisher (tests/unit/kafka_twin.py).

What it promises (gateway_runtime/stage.py): retries then a dead letter, per-key order,
outputs and offsets in one transaction (all or nothing: an output is never visible before
the offset past its record commits, nor twice), positions at the contiguous finished
prefix with the records finished beyond it listed for the next owner, a drain on revoke,
and a record that is never lost nor left to block silently when the dead letter or the
client notification fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from gateway_runtime.errors import DependencyUnavailable, PublishRefused, RetryableError
from gateway_runtime.ports import FailureNotifier, Output
from gateway_runtime.settings import StageSettings
from gateway_runtime.stage import StageLoop
from schemas.codec import Codec, EncodedEvent, header
from schemas.events import ErrorInfo, Event, TurnAuthorized, TurnRequested
from tests.unit.kafka_twin import MemoryConsumer, MemoryTransactions

IN, OUT, DLQ = "t.in", "t.out", "t.dlq"
CODEC = Codec()
SETTINGS = StageSettings(
    retry_attempts=3,
    retry_backoff_s=0.001,
    retry_backoff_max_s=0.004,
    commit_interval_s=0.005,
    shutdown_grace_s=0.3,
    max_in_flight=16,
)


@dataclass
class ScriptedHandler:
    """Each turn's message says what to do: ok, retry (always), flaky:N, poison, gate."""

    stage: str = "test"
    input_topic: str = IN
    calls: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    def gate(self, message: str) -> asyncio.Event:
        return self.gates.setdefault(message, asyncio.Event())

    async def handle(self, event: Event) -> list[Output]:
        assert isinstance(event, TurnRequested)
        text = event.message
        self.calls.append(text)
        if text not in self.started:
            self.started.append(text)
        if text.startswith("gate"):
            await self.gate(text).wait()
        elif text.startswith("retry"):
            raise DependencyUnavailable("the dependency is down")
        elif text.startswith("flaky") and self.calls.count(text) <= int(text.split(":")[1]):
            raise DependencyUnavailable("down for a moment")
        elif text.startswith("poison"):
            raise ValueError("cannot handle this")
        self.finished.append(text)
        return [Output(OUT, TurnAuthorized(event, "p", 1))]


@dataclass
class Mesh:
    handler: ScriptedHandler
    consumer: MemoryConsumer
    publisher: MemoryTransactions
    loop: StageLoop
    told: list[tuple[str, str, ErrorInfo]]

    def feed(self, session: str, message: str, partition: int = 0) -> TurnRequested:
        event = TurnRequested(uuid.uuid4().hex, session, message, int(time.time() * 1000))
        self.consumer.feed(IN, partition, CODEC.encode(event))
        return event

    def out(self, topic: str = OUT) -> list[EncodedEvent]:
        return self.publisher.published.get(topic, [])

    def committed(self, partition: int = 0) -> int | None:
        return self.consumer.committed(IN, partition)


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Until `condition()` holds, checked at every turn of the event loop."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - the state is in memory, polled each turn
            await asyncio.sleep(0)


def twins(notify: FailureNotifier | None = None, settings: StageSettings = SETTINGS) -> Mesh:
    """A stage loop over the twins, not running yet."""
    handler, consumer = ScriptedHandler(), MemoryConsumer()
    publisher = MemoryTransactions(consumer)
    told: list[tuple[str, str, ErrorInfo]] = []

    async def record(session: str, turn: str, error: ErrorInfo) -> None:
        told.append((session, turn, error))

    loop = StageLoop(
        handler=handler,
        consumer=consumer,
        transactions=publisher,
        codec=CODEC,
        settings=settings,
        dead_letter_topic=DLQ,
        notify_failure=notify or record,
    )
    return Mesh(handler, consumer, publisher, loop, told)


@contextlib.asynccontextmanager
async def running_loop(notify: FailureNotifier | None = None) -> AsyncIterator[Mesh]:
    """A stage loop over the twins, running until the block ends."""
    mesh = twins(notify)
    handler, loop = mesh.handler, mesh.loop
    stop = asyncio.Event()
    running = asyncio.create_task(loop.run(stop))
    try:
        yield mesh
    finally:
        for gate in handler.gates.values():
            gate.set()
        stop.set()
        await asyncio.wait_for(running, 5)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    async with running_loop() as mesh:
        yield mesh


async def test_a_retryable_failure_is_tried_n_times_then_dead_lettered(mesh: Mesh) -> None:
    event = mesh.feed("s1", "retry")
    await until(lambda: mesh.committed() == 1)
    assert mesh.handler.calls == ["retry"] * SETTINGS.retry_attempts
    [dead] = mesh.out(DLQ)
    assert dead.key == b"s1" and dead.value == CODEC.encode(event).value
    assert header(dead.headers, "dlq-attempts") == "3"
    assert header(dead.headers, "dlq-error-type") == "DependencyUnavailable"
    assert header(dead.headers, "dlq-source-topic") == IN
    assert header(dead.headers, "dlq-source-offset") == "0"
    assert header(dead.headers, "dlq-stage") == "test"
    await until(lambda: bool(mesh.told))  # told after the dead letter is committed
    assert [(s, t, e.code) for s, t, e in mesh.told] == [("s1", event.event_id, "stage_failed")]
    assert mesh.out() == []


async def test_a_permanent_failure_is_dead_lettered_at_once(mesh: Mesh) -> None:
    mesh.feed("s1", "poison")
    await until(lambda: mesh.committed() == 1)
    assert mesh.handler.calls == ["poison"]
    [dead] = mesh.out(DLQ)
    assert header(dead.headers, "dlq-attempts") == "1"
    assert header(dead.headers, "dlq-error-type") == "ValueError"


async def test_a_brief_outage_is_ridden_out_by_the_retries(mesh: Mesh) -> None:
    mesh.feed("s1", "flaky:2")
    await until(lambda: mesh.committed() == 1)
    assert mesh.handler.calls == ["flaky:2"] * 3
    assert len(mesh.out()) == 1 and mesh.out(DLQ) == []


async def test_a_poison_record_never_blocks_the_records_behind_it(mesh: Mesh) -> None:
    mesh.feed("s1", "poison")
    mesh.feed("s1", "after the poison")
    await until(lambda: mesh.committed() == 2)
    assert mesh.handler.finished == ["after the poison"]


async def test_one_key_in_offset_order_other_keys_concurrently(mesh: Mesh) -> None:
    mesh.feed("a", "gate a1")
    mesh.feed("a", "a2")
    mesh.feed("b", "b1")
    await until(lambda: "b1" in mesh.handler.finished)
    # b ran while a1 was held; a2 waits behind a1, of the same key.
    assert mesh.handler.started == ["gate a1", "b1"]
    mesh.handler.gate("gate a1").set()
    await until(lambda: mesh.committed() == 3)
    assert mesh.handler.finished == ["b1", "gate a1", "a2"]


async def test_only_the_contiguous_finished_prefix_is_committed(mesh: Mesh) -> None:
    mesh.feed("a", "gate a1", partition=0)  # offset 0, held
    mesh.feed("b", "b1", partition=0)  # offset 1, done at once
    mesh.feed("c", "c1", partition=0)  # offset 2, done at once
    await until(lambda: {"b1", "c1"} <= set(mesh.handler.finished))
    mesh.feed("d", "d1", partition=1)  # a commit after b1 and c1 finished
    await until(lambda: mesh.committed(1) == 1)
    await until(lambda: len(mesh.out()) == 3)  # b1, c1, d1: not held back by a1
    assert mesh.committed(0) == 0  # offsets 1 and 2 are done, but 0 is not
    assert mesh.publisher.metadata[(IN, 0)] == "done:1,2"  # for the next owner: skip them
    mesh.handler.gate("gate a1").set()
    await until(lambda: mesh.committed(0) == 3)
    assert len(mesh.out()) == 4 and mesh.publisher.metadata[(IN, 0)] == ""


async def test_a_failed_transaction_is_tried_again_and_shows_nothing_meanwhile(
    mesh: Mesh,
) -> None:
    mesh.consumer.fail_commits = 2
    mesh.feed("a", "a1")
    await until(lambda: mesh.consumer.fail_commits == 1)
    assert mesh.out() == [] and mesh.committed() is None  # neither without the other
    await until(lambda: mesh.committed() == 1)
    assert mesh.consumer.fail_commits == 0
    assert len(mesh.out()) == 1, "the output is in the log once, however often tried"


async def test_a_revoke_drains_in_flight_records_then_commits_them(mesh: Mesh) -> None:
    mesh.feed("a", "gate a1")
    await until(lambda: mesh.handler.started == ["gate a1"])
    asyncio.get_running_loop().call_soon(mesh.handler.gate("gate a1").set)
    await mesh.loop.drain_and_commit([(IN, 0)])
    assert mesh.handler.finished == ["gate a1"]
    assert mesh.committed() == 1


async def test_records_polled_before_a_revoke_are_not_handled_after_it() -> None:
    """A batch larger than the free slots: the loop waits for a slot mid-batch while the
    partition is revoked; the rest of the batch is the next owner's, not handled here."""
    mesh = twins()
    for n in range(SETTINGS.max_in_flight + 4):
        mesh.feed(f"k{n}", f"gate {n}")
    stop = asyncio.Event()
    running = asyncio.create_task(mesh.loop.run(stop))
    await until(lambda: len(mesh.handler.started) == SETTINGS.max_in_flight)
    revoke = asyncio.create_task(mesh.loop.drain_and_commit([(IN, 0)]))
    await asyncio.sleep(0)  # the revoke has begun: it bumped the generation, it drains
    for gate in list(mesh.handler.gates.values()):
        gate.set()
    await revoke
    stop.set()
    await asyncio.wait_for(running, 5)
    assert len(mesh.handler.started) == SETTINGS.max_in_flight  # none of the 4 after it
    assert mesh.committed() == SETTINGS.max_in_flight


async def test_a_revoke_abandons_what_outlives_the_grace_uncommitted(mesh: Mesh) -> None:
    mesh.feed("a", "a1")
    await until(lambda: mesh.committed() == 1)
    mesh.feed("a", "gate a2")  # never released: the next owner gets it again
    await until(lambda: "gate a2" in mesh.handler.started)
    began = time.monotonic()
    await mesh.loop.drain_and_commit([(IN, 0)])
    assert SETTINGS.shutdown_grace_s <= time.monotonic() - began < 2
    assert mesh.committed() == 1
    assert mesh.out(DLQ) == []


async def test_a_dead_letter_that_fails_is_retried_and_holds_its_partition(mesh: Mesh) -> None:
    refusals = 3

    def broker_down(_: EncodedEvent) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise DependencyUnavailable("kafka down")

    mesh.publisher.failures[DLQ] = broker_down
    mesh.feed("a", "poison")
    await until(lambda: mesh.committed() == 1)
    assert mesh.publisher.attempts[DLQ] == 4 and len(mesh.out(DLQ)) == 1


async def test_until_its_dead_letter_lands_a_record_is_not_committed(mesh: Mesh) -> None:
    def broker_down(_: EncodedEvent) -> None:
        raise DependencyUnavailable("kafka down")

    mesh.publisher.failures[DLQ] = broker_down
    mesh.feed("a", "poison", partition=0)
    await until(lambda: mesh.publisher.attempts.get(DLQ, 0) >= 2)
    mesh.feed("b", "ok", partition=1)
    await until(lambda: mesh.publisher.attempts.get(DLQ, 0) >= 5)  # still trying, not dropped
    # One transaction carries both: all or nothing.
    assert mesh.committed(0) is None and mesh.committed(1) is None and mesh.out() == []
    assert mesh.told == []  # the client hears of it once it is in the dead-letter topic
    await mesh.loop.drain_and_commit([(IN, 0), (IN, 1)])  # a revoke: abandoned, redelivered
    assert mesh.committed(0) is None


async def test_once_the_dead_letter_lands_both_records_commit_once(mesh: Mesh) -> None:
    def broker_down(_: EncodedEvent) -> None:
        raise DependencyUnavailable("kafka down")

    mesh.publisher.failures[DLQ] = broker_down
    mesh.feed("a", "poison", partition=0)
    mesh.feed("b", "ok", partition=1)
    await until(lambda: mesh.publisher.attempts.get(DLQ, 0) >= 3)
    del mesh.publisher.failures[DLQ]
    await until(lambda: mesh.committed(0) == 1 and mesh.committed(1) == 1)
    assert len(mesh.out(DLQ)) == 1 and len(mesh.out()) == 1
    await until(lambda: len(mesh.told) == 1)


async def test_an_output_the_broker_refuses_dead_letters_its_record(mesh: Mesh) -> None:
    def too_large(_: EncodedEvent) -> None:
        raise PublishRefused("MessageSizeTooLargeError")

    mesh.publisher.failures[OUT] = too_large
    mesh.feed("a", "ok", partition=0)
    mesh.feed("b", "ok too", partition=1)
    await until(lambda: mesh.committed(0) == 1 and mesh.committed(1) == 1)
    assert mesh.out() == [] and len(mesh.out(DLQ)) == 2
    assert {header(d.headers, "dlq-error-type") for d in mesh.out(DLQ)} == {"RecordRefused"}


async def test_a_new_owner_skips_what_the_last_committed_beyond_its_position() -> None:
    """Records finished beyond a slow one are committed with their outputs; the next
    owner of the partition (after a crash or a revoke) must not produce them again."""
    first = twins()
    stop = asyncio.Event()
    running = asyncio.create_task(first.loop.run(stop))
    slow = first.feed("a", "gate a1")  # offset 0: never finishes here
    quick = first.feed("b", "b1")  # offset 1
    await until(lambda: len(first.out()) == 1)
    assert first.committed() == 0
    metadata = first.publisher.metadata[(IN, 0)]
    await first.loop.drain_and_commit([(IN, 0)])  # abandoned: a1 goes to the next owner
    stop.set()
    await asyncio.wait_for(running, 5)

    second = twins()
    second.consumer.commits = [{(IN, 0): 0}]
    await second.loop.assigned({(IN, 0): (0, metadata)})
    for event in (slow, quick):  # redelivered from the committed position
        second.consumer.feed(IN, 0, CODEC.encode(event))
    stop = asyncio.Event()
    running = asyncio.create_task(second.loop.run(stop))
    second.handler.gate("gate a1").set()
    await until(lambda: second.committed() == 2)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert second.handler.calls == ["gate a1"], "b1 is not handled again"
    assert len(first.out()) + len(second.out()) == 2, "one output per record in all"


async def test_a_dead_letter_refused_for_good_goes_as_its_provenance_alone(mesh: Mesh) -> None:
    def too_large(record: EncodedEvent) -> None:
        if record.value:
            raise PublishRefused("MessageSizeTooLargeError")

    mesh.publisher.failures[DLQ] = too_large
    mesh.feed("a", "poison")
    await until(lambda: mesh.committed() == 1)
    [dead] = mesh.out(DLQ)
    assert dead.value == b"" and dead.key == b"a"
    assert header(dead.headers, "dlq-source-offset") == "0"
    assert "MessageSizeTooLargeError" in (header(dead.headers, "dlq-value-omitted") or "")


@pytest.mark.parametrize(
    "failure", [RuntimeError("a bug in the notifier"), RetryableError("redis and postgres down")]
)
async def test_a_failing_client_notification_never_holds_the_record_back(
    failure: Exception,
) -> None:
    async def broken(session: str, turn: str, error: ErrorInfo) -> None:
        raise failure

    async with running_loop(notify=broken) as mesh:
        mesh.feed("a", "poison")
        mesh.feed("a", "after")
        await until(lambda: mesh.committed() == 2)
        assert len(mesh.out(DLQ)) == 1 and mesh.handler.finished == ["after"]


async def test_a_stop_finishes_in_flight_work_within_the_grace() -> None:
    mesh = twins()
    stop = asyncio.Event()
    running = asyncio.create_task(mesh.loop.run(stop))
    mesh.feed("a", "gate a1")
    await until(lambda: mesh.handler.started == ["gate a1"])
    stop.set()
    asyncio.get_running_loop().call_soon(mesh.handler.gate("gate a1").set)
    await asyncio.wait_for(running, 5)
    assert mesh.committed() == 1


async def test_a_dead_letter_from_an_outsiders_topic_tells_no_session(mesh: Mesh) -> None:
    """A record of an automation's inbound topic names a session the broker did not vouch
    for: its dead letter must not put an `error` event into that session's stream."""
    event = TurnRequested(uuid.uuid4().hex, "victim", "poison", int(time.time() * 1000))
    mesh.consumer.feed("t.inbound.bot", 0, CODEC.encode(event))
    mesh.consumer.feed(IN, 0, CODEC.encode(event))
    await until(lambda: mesh.committed() == 1 and mesh.consumer.committed("t.inbound.bot", 0) == 1)
    assert len(mesh.out(DLQ)) == 2
    await until(lambda: bool(mesh.told))
    assert [s for s, _, _ in mesh.told] == ["victim"], "told once: for the mesh's own record"


async def test_while_transactions_fail_the_loop_stops_taking_records(mesh: Mesh) -> None:
    """Finished records wait in memory for their transaction: past 4 x max_in_flight of
    them, nothing more is polled until they are committed."""
    mesh.consumer.fail_commits = 10**9
    for n in range(4 * SETTINGS.max_in_flight):
        mesh.feed(f"s{n}", f"first {n}")
    await until(lambda: len(mesh.handler.finished) == 4 * SETTINGS.max_in_flight)
    consumer = mesh.consumer
    await until(lambda: not consumer.polling)  # a poll begun below the limit has ended
    polls, refused = consumer.polls, consumer.refused
    mesh.feed("late", "late")
    # The committer tries again and again; the loop polls no more meanwhile.
    await until(lambda: consumer.refused >= refused + 5)
    assert consumer.polls == polls and not consumer.polling
    assert "late" not in mesh.handler.started and mesh.out() == []
    mesh.consumer.fail_commits = 0
    await until(lambda: mesh.committed() == 4 * SETTINGS.max_in_flight + 1, timeout=10)
    assert len(mesh.out()) == 4 * SETTINGS.max_in_flight + 1


async def test_records_finishing_within_the_linger_share_one_transaction() -> None:
    mesh = twins(settings=SETTINGS.model_copy(update={"commit_linger_s": 1.0}))
    stop = asyncio.Event()
    running = asyncio.create_task(mesh.loop.run(stop))
    mesh.feed("a", "a1")
    await until(lambda: mesh.handler.finished == ["a1"])
    mesh.feed("b", "b1")  # finishes while the committer lingers after a1
    await until(lambda: mesh.committed() == 2)
    assert mesh.publisher.transactions == 1 and len(mesh.out()) == 2
    mesh.feed("c", "c1")
    await until(lambda: mesh.handler.finished == ["a1", "b1", "c1"])
    stop.set()  # a stop ends the linger: what finished is committed on the way out
    await asyncio.wait_for(running, 5)
    assert mesh.committed() == 3 and mesh.publisher.transactions == 2
