"""The LLM stage's deltas: the first at once, later ones gathered, every piece delivered."""

from __future__ import annotations

import asyncio

import pytest

from llm_worker.deltas import DeltaCoalescer


class Frames:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.arrived = asyncio.Event()

    async def send(self, seq: int, text: str) -> None:
        self.sent.append((seq, text))
        self.arrived.set()


async def test_the_first_piece_goes_at_once_and_the_rest_in_one_frame() -> None:
    frames = Frames()
    deltas = DeltaCoalescer(frames.send, window_s=60)
    await deltas.add("tok0 ")
    assert frames.sent == [(1, "tok0 ")]
    for i in range(1, 20):
        await deltas.add(f"tok{i} ")
    assert frames.sent == [(1, "tok0 ")], "within the window nothing more is sent"
    await deltas.close()
    assert frames.sent == [(1, "tok0 "), (20, "".join(f"tok{i} " for i in range(1, 20)))]


async def test_pieces_are_sent_when_the_window_ends_without_waiting_for_more() -> None:
    frames = Frames()
    deltas = DeltaCoalescer(frames.send, window_s=0.05)
    await deltas.add("a")
    frames.arrived.clear()
    await deltas.add("b")
    await deltas.add("c")
    await asyncio.wait_for(frames.arrived.wait(), 5)  # the timer's frame, no close needed
    assert frames.sent == [(1, "a"), (3, "bc")]
    await deltas.close()
    assert frames.sent == [(1, "a"), (3, "bc")], "nothing was left to send"


async def test_a_window_of_zero_sends_every_piece() -> None:
    frames = Frames()
    deltas = DeltaCoalescer(frames.send, window_s=0)
    for piece in "abc":
        await deltas.add(piece)
    await deltas.close()
    assert frames.sent == [(1, "a"), (2, "b"), (3, "c")]


async def test_a_timed_send_that_failed_is_raised_by_close() -> None:
    failed = asyncio.Event()
    calls: list[int] = []

    async def broken(seq: int, text: str) -> None:
        calls.append(seq)
        if seq > 1:
            failed.set()
            raise ConnectionError("redis went away")

    deltas = DeltaCoalescer(broken, window_s=0.01)
    await deltas.add("a")
    await deltas.add("b")
    await asyncio.wait_for(failed.wait(), 5)  # the timer's send failed, in its own task
    with pytest.raises(ConnectionError):
        await deltas.close()
    assert calls == [1, 2], "close reports the timer's failure instead of sending again"
