"""The fan-out hub's followers (ingress/hub.py): what wakes a waiting stream, and what a
slow one is told. No Redis is needed: the hub's subscription is not started, and events
are handed to it as its subscription hands them."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from gateway_runtime.redis_keys import RedisKeys
from ingress.hub import FanoutHub, Follower

KEYS = RedisKeys("unit")
LIMIT = 3
LONG = 3600.0  # an alarm that never rings in a test


def _hub() -> FanoutHub:
    # A client that is never used: the hub only connects once started.
    return FanoutHub(Redis(), KEYS, queue_size=LIMIT)


def _publish(hub: FanoutHub, session_id: str, event_id: str, kind: str = "assistant.delta") -> None:
    """A message as the live channel carries it: `<stream id> <type>` and the payload."""
    payload = f'{{"type":"{kind}","session_id":"{session_id}"}}'
    hub._deliver(KEYS.live(session_id).encode(), f"{event_id} {kind}\n{payload}".encode())


def _waiting(hub: FanoutHub, until: float) -> tuple[Follower, asyncio.Future[None]]:
    """A new follower of session s1, and its wait."""
    follower = hub.add("s1")
    return follower, follower.wait(until)


async def test_an_event_of_its_session_wakes_a_waiting_stream_and_others_not() -> None:
    hub = _hub()
    loop = asyncio.get_running_loop()
    mine, theirs = hub.add("s1"), hub.add("s2")
    waits = [f.wait(loop.time() + LONG) for f in (mine, theirs)]
    _publish(hub, "s1", "1-0")
    _publish(hub, "s1", "2-0", "assistant.final")
    async with asyncio.timeout(5):
        await waits[0]
    assert not waits[1].done()
    events, mine.pending = mine.pending, []
    assert [(e.id, e.type) for e in events] == [
        ("1-0", "assistant.delta"),
        ("2-0", "assistant.final"),
    ]
    assert events[0].sse.startswith(b"id: 1-0\nevent: assistant.delta\ndata: {")
    assert theirs.pending == []
    assert hub.client_count == 2
    hub.remove("s2", theirs)
    assert hub.client_count == 1
    waits[1].cancel()


async def test_one_event_object_goes_to_every_client_of_the_session() -> None:
    """Its SSE frame is encoded once, however many clients."""
    hub = _hub()
    followers = [hub.add("s1") for _ in range(3)]
    _publish(hub, "s1", "5-1")
    [first, *rest] = [f.pending for f in followers]
    assert all(r[0] is first[0] for r in rest)


async def test_alarms_ring_in_time_order_and_an_earlier_one_replaces_a_later_one() -> None:
    hub = _hub()
    loop = asyncio.get_running_loop()
    now = loop.time()
    _, late = _waiting(hub, now + 0.2)
    _, early = _waiting(hub, now + 0.05)
    rang: list[str] = []
    late.add_done_callback(lambda _: rang.append("late"))
    early.add_done_callback(lambda _: rang.append("early"))
    async with asyncio.timeout(5):
        await asyncio.gather(late, early)
    assert rang == ["early", "late"]
    assert loop.time() >= now + 0.2
    # Woken before its alarm (at LONG), a follower that then waits until sooner is woken
    # at that time: the earlier alarm replaces the later one.
    follower = hub.add("s3")
    first = follower.wait(loop.time() + LONG)
    follower.wake()
    assert first.done()
    async with asyncio.timeout(5):
        await follower.wait(loop.time() + 0.05)


async def test_a_slow_stream_is_told_to_resync_and_holds_no_more_than_the_limit() -> None:
    hub = _hub()
    follower = hub.add("s1")
    for i in range(LIMIT):
        _publish(hub, "s1", f"{i}-0")
    assert len(follower.pending) == LIMIT and not follower.resync
    _publish(hub, "s1", f"{LIMIT}-0")  # one over: the log has them all
    assert follower.resync and follower.pending == []
    _publish(hub, "s1", f"{LIMIT + 1}-0")
    assert [e.id for e in follower.pending] == [f"{LIMIT + 1}-0"]
    follower.resync = False  # (its stream read the log)
    hub.resync("s2")  # another session's news: nothing for this one
    assert not follower.resync
    hub.resync("s1")
    assert follower.resync


async def test_a_closed_stream_wakes_and_sends_nothing_more() -> None:
    hub = _hub()
    loop = asyncio.get_running_loop()
    follower = hub.add("s1")
    _publish(hub, "s1", "1-0")  # not sent yet
    waiting = follower.wait(loop.time() + LONG)
    assert not waiting.done()
    follower.close()
    assert waiting.done()
    assert follower.closed and follower.pending == []  # what was pending is not sent
    assert follower.wait(loop.time() + LONG).done()  # closed: no more waiting
    hub.remove("s1", follower)
    hub.remove("s1", follower)  # twice is harmless
    assert hub.client_count == 0
    _publish(hub, "s1", "2-0")  # nobody follows s1 any more
    assert follower.pending == []
