"""Analytics data freshness: how far behind the wall clock the newest queryable metrics are while traffic
flows.

A simulated camera streams rendered frames in real time through a real streaming service and Kafka to a
real analytics service; meanwhile GetTrafficMetrics is asked twice a second for the camera's last minutes
and its ``data_fresh_through_time`` (end of the newest stored window) is compared with the clock. Windows
are 10 s long and final only once they end, so 10 s is the floor any 10 s-window design could show; the
baseline column holds it.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from infrastructure.embedded import InfraUrls
from itsmesh.v1 import analytics_pb2, common_pb2
from mesh.events import CAMERA_DETECTIONS_TOPIC, ensure_topics
from mesh.migrations import apply_migrations
from services.analytics.queries import RAW_WINDOW_S
from services.simulator.config import SimulatorSettings
from services.simulator.driver import RunTarget, Simulation
from services.simulator.plan import SimulationOptions, build_plan
from tests.integration.analytics_host import (
    Topics,
    analytics_host,
    analytics_stub,
    start_group_at_end,
)
from tests.integration.streaming_host import streaming_host
from tests.perf.results import BenchResult

POLL_S = 0.5
WARM_UP_S = 15.0
"""Samples before the first windows could have closed are left out."""


def _request(camera_id: str) -> analytics_pb2.GetTrafficMetricsRequest:
    now = datetime.now(UTC)
    time_range = common_pb2.TimeRange()
    time_range.start_time.FromDatetime(now - timedelta(minutes=5))
    time_range.end_time.FromDatetime(now + timedelta(seconds=RAW_WINDOW_S))
    request = analytics_pb2.GetTrafficMetricsRequest(camera_ids=[camera_id], time_range=time_range)
    request.bucket.seconds = RAW_WINDOW_S
    return request


async def run(quick: bool, urls: InfraUrls) -> list[BenchResult]:
    """Stream one camera for 30 s (quick) or 90 s and sample the freshness of its metrics."""
    await apply_migrations(urls.database_url)
    duration_s = 30.0 if quick else 90.0
    tag = uuid.uuid4().hex[:8]
    infra = SimpleNamespace(
        database_url=urls.database_url,
        redis_url=urls.redis_url,
        kafka_bootstrap_servers=urls.kafka_bootstrap_servers,
    )
    topics = Topics(CAMERA_DETECTIONS_TOPIC, f"bench.tel.{tag}", f"bench.cam.{tag}")
    await ensure_topics(urls.kafka_bootstrap_servers, {topics.telemetry: 1, topics.camera_events: 1})
    group = f"analytics-fresh-{tag}"
    await start_group_at_end(urls.kafka_bootstrap_servers, group, CAMERA_DETECTIONS_TOPIC)
    plan = build_plan(SimulationOptions(cameras=1, devices=0, duration_s=duration_s, prefix=f"fresh{tag}"))
    camera_id = plan.cameras[0].camera_id
    ages: list[float] = []
    async with (
        streaming_host(infra) as streaming,
        analytics_host(infra, topics, group=group, streaming=streaming, relay_alerts=False) as host,
        analytics_stub(host) as stub,
    ):
        settings = SimulatorSettings(
            streaming_address=f"127.0.0.1:{streaming.grpc_port}", redis_url=urls.redis_url
        )
        with tempfile.TemporaryDirectory() as scratch:
            simulation = Simulation(
                plan, RunTarget(settings, authenticate=False), truth_path=Path(scratch) / "truth.jsonl"
            )
            run_task = asyncio.create_task(simulation.run(asyncio.Event()))
            started = time.monotonic()
            while not run_task.done():
                await asyncio.sleep(POLL_S)
                response = await stub.GetTrafficMetrics(_request(camera_id))
                if time.monotonic() - started < WARM_UP_S:
                    continue
                if not response.HasField("data_fresh_through_time"):
                    ages.append(time.monotonic() - started)  # nothing yet: as old as the run
                    continue
                fresh = response.data_fresh_through_time.ToDatetime(tzinfo=UTC)
                ages.append((datetime.now(UTC) - fresh).total_seconds())
            progress = await run_task
    for source in progress.sources:
        if source.error:
            raise RuntimeError(f"simulated {source.source_id} failed: {source.error}")
    if len(ages) < 2:
        raise RuntimeError("no freshness samples were taken")
    scene = f"1 camera streaming rendered frames in real time for {duration_s:.0f} s, {len(ages)} samples"
    return [
        BenchResult(
            name="analytics_freshness_p95_s",
            value=statistics.quantiles(ages, n=20)[18],
            unit="s",
            baseline=float(RAW_WINDOW_S),
            baseline_name="one 10 s window (final only once it ends)",
            target=f"≤ 60 s ({scene})",
        ),
        BenchResult(
            name="analytics_freshness_max_s",
            value=max(ages),
            unit="s",
            baseline=float(RAW_WINDOW_S),
            baseline_name="one 10 s window (final only once it ends)",
            target=f"≤ 60 s ({scene})",
        ),
    ]
