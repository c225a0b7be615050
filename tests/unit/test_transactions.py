"""gateway_runtime/transactions.py's recovery, on a scripted producer: a commit whose
outcome is unknown (it timed out, the producer cannot abort) is settled by the group's
committed offsets, never by sending the transaction again blindly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.transactions import KafkaTransactions, TransactionOutcomeUnknown
from schemas.codec import EncodedEvent

TP = ("t.in", 0)
OFFSETS = {TP: (5, "done:2")}
RECORDS = [("t.out", EncodedEvent(b"k", b"v", []))]


class StuckCommit:
    """A producer whose commit never returns and which cannot abort afterwards."""

    def __init__(self, *, hang: bool) -> None:
        self.hang = hang
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")

    async def begin_transaction(self) -> None:
        self.events.append("begin")

    async def send(self, topic: str, **_: Any) -> asyncio.Future[Any]:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        self.events.append("offsets")

    async def commit_transaction(self) -> None:
        self.events.append("commit")
        if self.hang:
            await asyncio.Event().wait()

    async def abort_transaction(self) -> None:
        self.events.append("abort")
        if self.hang:
            raise AssertionError("Invalid state transition COMMITTING -> ABORTING")


def transactions(
    found: Mapping[Any, tuple[int, str]] | Exception,
    *,
    away_for: int = 0,
) -> tuple[KafkaTransactions, list[StuckCommit]]:
    """`found` is what the group's offsets say, after `away_for` tries that fail (the
    broker restarting)."""
    made: list[StuckCommit] = []

    def make() -> Any:
        made.append(StuckCommit(hang=not made))  # the first one hangs, its successor not
        return made[-1]

    async def committed(partitions: Iterable[Any]) -> Mapping[Any, tuple[int, str]]:
        nonlocal away_for
        assert list(partitions) == [TP]
        if away_for:
            away_for -= 1
            raise DependencyUnavailable("kafka restarting")
        if isinstance(found, Exception):
            raise found
        return found

    txn = KafkaTransactions(make, "g", committed, timeout_s=0.05, outcome_wait_s=1.0)
    return txn, made


async def test_a_commit_that_landed_after_all_is_not_sent_again() -> None:
    txn, made = transactions({TP: OFFSETS[TP]})
    await txn.start()
    await txn.commit(RECORDS, OFFSETS)  # returns: it committed
    assert len(made) == 2 and made[1].events == ["start", "begin", "abort"]


async def test_a_commit_that_did_not_land_is_reported_for_another_try() -> None:
    txn, made = transactions({TP: (3, "")})
    await txn.start()
    with pytest.raises(DependencyUnavailable):
        await txn.commit(RECORDS, OFFSETS)
    assert len(made) == 2


async def test_a_broker_away_for_a_while_is_asked_again_not_given_up_on() -> None:
    txn, made = transactions({TP: OFFSETS[TP]}, away_for=2)
    await txn.start()
    await txn.commit(RECORDS, OFFSETS)  # learned on the third try: it committed
    assert len(made) == 4  # the stuck producer, then one per try (never one restarted)


async def test_an_outcome_that_cannot_be_learned_stops_the_stage() -> None:
    txn, _ = transactions(DependencyUnavailable("kafka away"))
    await txn.start()
    with pytest.raises(TransactionOutcomeUnknown):
        await txn.commit(RECORDS, OFFSETS)
