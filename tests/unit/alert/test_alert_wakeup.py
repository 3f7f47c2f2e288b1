"""The workers' doorbell: a ring wakes a sleeping worker at once; otherwise it sleeps its interval."""

from __future__ import annotations

import asyncio
import time

from services.alert.wakeup import Wakeup


async def test_a_ring_wakes_the_worker_before_its_interval():
    wakeup = Wakeup()
    asyncio.get_running_loop().call_later(0.01, wakeup.ring)
    started = time.monotonic()
    await wakeup.wait(5.0)
    assert time.monotonic() - started < 2.0


async def test_a_ring_while_busy_is_not_lost_and_clear_forgets_it():
    wakeup = Wakeup()
    wakeup.ring()
    await asyncio.wait_for(wakeup.wait(5.0), 1.0)  # rung before waiting: returns at once
    wakeup.clear()
    started = time.monotonic()
    await wakeup.wait(0.05)
    assert time.monotonic() - started >= 0.04


async def test_a_cancelled_wait_ends_the_worker():
    wakeup = Wakeup()
    task = asyncio.create_task(wakeup.wait(5.0))
    await asyncio.sleep(0.01)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1.0)
    assert task in done
    assert task.cancelled()
