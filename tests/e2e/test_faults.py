"""Nothing acknowledged is lost or doubled while processes die, the broker freezes and Redis and
PostgreSQL restart.

One system (every service its own process, console included, private PostgreSQL, broker and Redis) serves
short load phases; each phase injects one fault while cameras stream frames with edge detections and GPS
devices stream signed telemetry, then checks every acknowledged item: in its topic under one event id,
applied by analytics, in analytics.telemetry_readings exactly once; vehicle passages are never stored
twice. Phases that touch auth, the console or alert also check that sessions, the status endpoint and
the alerts raised through analytics' outbox survive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.simulator.driver import RunProgress
from services.simulator.plan import Plan
from tests.e2e.fault_checks import (
    Operator,
    console_status,
    mesh_client,
    settled_alert_ledger,
    settled_truth_comparison,
    until_ok,
    wait_unsent,
)
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
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultSystem]:
    async with fault_system(tmp_path_factory.mktemp("faults")) as running:
        yield running


async def _phase(
    system: FaultSystem,
    seed: int,
    fault: Callable[[], Awaitable[None]],
    load_s: float = LOAD_S,
    fault_after_s: float = 1.0,
    truth: bool = False,
) -> tuple[Plan, RunProgress]:
    """One load phase with `fault`, checked; `truth`: also compare the passages with the ground truth
    (for faults that leave analytics' tracker state alone, and seeds whose counted vehicles all cross
    at least 2 s before the end, so no passage waits for the camera's idle flush)."""
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
    exited = {
        n: s.proc.returncode for n, s in system.services.items() if s.proc and s.proc.returncode is not None
    }
    assert exited == {}, "a service process exited"
    if truth:
        compared = await settled_truth_comparison(
            system.database_url, plan, progress.start_time, timeout_s=10.0
        )
        assert compared.truth.total() > 0
        assert compared.missing == []
        assert compared.extra == []
        assert compared.stored == compared.truth
    # the figures the README quotes (visible with -s)
    print(
        f"\n{seed}: {len(expected.frames)} frames, {len(expected.readings)} readings acknowledged; "
        f"last item settled {settled_after_s:.1f} s after the load ended; "
        f"{outcome.redelivered_records} records redelivered; {passages} passages "
        f"(truth: {counted_vehicles(plan, progress.start_time)})"
    )
    return plan, progress


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


async def test_auth_killed_and_restarted_under_load(system):
    async with mesh_client(system) as mesh:
        operator = Operator(mesh)
        before = await operator.login()

        async def fault() -> None:
            await system.services["auth"].kill()
            await asyncio.sleep(2.0)
            # auth is down: the token it issued before still verifies where it is used (cached JWKS)
            await operator.pipeline_status(before.access_token)
            print(f"\nauth serving again {await system.services['auth'].restart():.1f} s after kill -9")

        # vehicles cross at 7.0 and 8.2 s
        await _phase(system, 505, fault, load_s=12.0, truth=True)
        _, waited = await until_ok(operator.login)
        refreshed = await operator.refresh(before.refresh_token)
        assert refreshed.access_token
        assert refreshed.refresh_token != before.refresh_token
        introspected = await operator.introspect(before.access_token, refreshed.access_token)
        assert introspected.active
        await operator.pipeline_status(before.access_token)
        await operator.pipeline_status(refreshed.access_token)
        print(f"login answered {waited:.1f} s after the phase")


async def test_console_killed_and_restarted_under_load(system):
    async with mesh_client(system) as mesh:
        token = (await Operator(mesh).login()).access_token
    code, _, _ = await console_status(system, token)
    assert code == 200

    async def fault() -> None:
        await system.services["console"].kill()
        print(f"\nconsole serving again {await system.services['console'].restart():.1f} s after kill -9")

    await _phase(system, 106, fault)
    code, body, took_s = await console_status(system, token)
    assert code == 200, body
    components = {c["name"]: c for c in body["components"]}
    for name in ("streaming", "analytics", "alert", "auth"):
        assert any(n.startswith(name) for n in components), sorted(components)
    print(f"/api/status answered in {took_s * 1000:.0f} ms: {body['overview']}")


async def test_alert_killed_and_restarted_under_load(system):
    delivered_before: list[int] = []

    async def fault() -> None:
        delivered_before.append(
            (await settled_alert_ledger(system.database_url, timeout_s=10.0))[0].delivered
        )
        await system.services["alert"].kill()
        # down until analytics has stored a violation or anomaly it cannot relay
        waiting = await wait_unsent(system.database_url, timeout_s=15.0)
        assert waiting.unsent, "no violation or anomaly while alert was down"
        print(f"\n{len(waiting.unsent)} alerts waiting in the outbox while alert was down")
        print(f"alert serving again {await system.services['alert'].restart():.1f} s after kill -9")

    # the geofence exit of the second device comes 0.6 of the way through; vehicles cross at 6.6 and 8.9 s
    await _phase(system, 702, fault, load_s=12.0, truth=True)
    ledger, waited = await settled_alert_ledger(system.database_url)
    assert ledger.without_entry == []
    assert ledger.unsent == []
    assert ledger.without_raise == []
    assert ledger.miscounted == []
    assert ledger.delivered == ledger.sources >= delivered_before[0]
    print(
        f"{ledger.sources} violations and anomalies, each raised once "
        f"({delivered_before[0]} before the kill); outbox empty {waited:.1f} s after the phase"
    )


async def test_postgres_stopped_and_restarted_under_load(system):
    async def fault() -> None:
        started = time.monotonic()
        await system.restart_postgres(down_s=3.0)
        print(f"\nPostgreSQL back after {time.monotonic() - started:.1f} s")

    await _phase(system, 108, fault)
    # an entry the relay had leased when the database went away waits for its lease (30 s) to run out
    ledger, waited = await settled_alert_ledger(system.database_url, timeout_s=45.0)
    assert ledger.consistent, ledger
    print(f"{ledger.sources} violations and anomalies, each raised once; outbox empty {waited:.1f} s after")
