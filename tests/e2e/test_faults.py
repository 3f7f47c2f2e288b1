"""Nothing acknowledged is lost or doubled while processes die, the broker freezes and Redis restarts.

One system (every service its own process, private PostgreSQL, broker and Redis) serves four short load
phases; each phase injects one fault while cameras stream frames with edge detections and GPS devices
stream signed telemetry, then checks every acknowledged item: in its topic under one event id, and in
analytics.telemetry_readings exactly once; vehicle passages are never stored twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.e2e.fault_system import (
    FaultSystem,
    acknowledged,
    counted_vehicles,
    delivery,
    fault_system,
    passage_duplicates,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LOAD_S = 5.0
"""Seconds of load per phase; the fault comes 1 s in."""


@pytest.fixture(scope="module")
async def system(infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultSystem]:
    async with fault_system(tmp_path_factory.mktemp("faults"), infra.database_url) as running:
        yield running


async def _phase(
    system: FaultSystem,
    seed: int,
    fault: Callable[[], Awaitable[None]],
    load_s: float = LOAD_S,
    fault_after_s: float = 1.0,
) -> None:
    plan = system.plan(load_s, seed)
    progress = await system.run_load(plan, fault, fault_after_s)
    settled_after_s = progress.now - progress.start_time - load_s
    expected = acknowledged(plan, progress)
    assert expected.frames
    assert expected.readings
    outcome = await delivery(system, plan, expected)
    assert outcome.missing_in_topic == []
    assert outcome.two_event_ids == []
    assert outcome.missing_rows == []
    assert outcome.duplicate_rows == []
    assert outcome.unprocessed_frames == []
    passages, duplicated = await passage_duplicates(system.database_url, [c.camera_id for c in plan.cameras])
    assert duplicated == []
    # the figures the README quotes (visible with -s)
    print(
        f"\n{seed}: {len(expected.frames)} frames, {len(expected.readings)} readings acknowledged; "
        f"last item settled {settled_after_s:.1f} s after the load ended; "
        f"{outcome.redelivered_records} records redelivered; {passages} passages "
        f"(truth: {counted_vehicles(plan, progress.start_time)})"
    )


async def test_streaming_killed_and_restarted_under_load(system):
    async def fault() -> None:
        await system.services["streaming"].kill()
        print(f"\nstreaming serving again {await system.services['streaming'].restart():.1f} s after kill -9")

    await _phase(system, 101, fault)


async def test_analytics_killed_and_restarted_under_load(system):
    async def fault() -> None:
        await system.services["analytics"].kill()
        print(f"\nanalytics serving again {await system.services['analytics'].restart():.1f} s after kill -9")

    # long enough for vehicles to cross the counting line (about 11 s in), killed while they do
    await _phase(system, 102, fault, load_s=15.0, fault_after_s=11.0)


async def test_broker_frozen_under_load(system):
    async def fault() -> None:
        async with system.kafka_frozen():
            await asyncio.sleep(5.0)

    await _phase(system, 103, fault)


async def test_redis_stopped_and_restarted_under_load(system):
    async def fault() -> None:
        started = time.monotonic()
        await system.restart_redis(down_s=3.0)
        assert time.monotonic() - started >= 3.0

    await _phase(system, 104, fault)
