"""Fan-out of status pushes: every client gets every message, a client that falls behind is dropped."""

from __future__ import annotations

import asyncio

import pytest

from services.console.broadcast import Broadcaster


async def test_every_subscriber_gets_the_latest_message_first_then_every_new_one():
    broadcaster = Broadcaster(queue_size=4)
    broadcaster.publish("one")
    async with broadcaster.subscribe() as a, broadcaster.subscribe() as b:
        assert broadcaster.clients == 2
        broadcaster.publish("two")
        assert [await a.get(), await a.get()] == ["one", "two"]
        assert [await b.get(), await b.get()] == ["one", "two"]
    assert broadcaster.clients == 0


async def test_a_client_that_falls_behind_is_dropped_and_the_others_keep_receiving():
    broadcaster = Broadcaster(queue_size=2)
    async with broadcaster.subscribe() as slow, broadcaster.subscribe() as fast:
        for i in range(5):
            broadcaster.publish(str(i))
            assert await fast.get() == str(i)
        assert slow.dropped
        assert await slow.get() is None, "a dropped client's queue ends, its backlog is discarded"
        assert broadcaster.clients == 1
        assert broadcaster.dropped_total == 1


async def test_closing_ends_every_subscription():
    broadcaster = Broadcaster()
    async with broadcaster.subscribe() as subscription:
        waiter = asyncio.create_task(subscription.get())
        await asyncio.sleep(0)
        broadcaster.close()
        assert await asyncio.wait_for(waiter, 1.0) is None


def test_a_queue_must_hold_at_least_one_message():
    with pytest.raises(ValueError, match="queue_size"):
        Broadcaster(queue_size=0)
