"""End to end against the simulator's ground truth: simulated cameras stream through a real streaming
service into Kafka, a real analytics service tracks them, and the rows it writes (passages, violations,
metric windows) are scored against the truth file.

One scene has everything: 3 lanes, 20-120 km/h, box jitter, 10 % dropped frames, irregular frame times,
duplicate and out-of-order frames (raw StreamFrames, then replayed straight into Kafka), a lane change, a
0.5 s occlusion at the counting line, far-field vehicles, speeders, a wrong-way driver and a vehicle that
stops in a lane. A second, clean scene (the same drops, jitter and irregular timing, sent through the
mesh.edge client, a lane change and an occlusion, but nobody breaks a rule) must raise no violation at
all. Frames go out faster than real time: capture times come from the scene.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from itsmesh.v1 import analytics_pb2, events_pb2
from mesh.events import CAMERA_DETECTIONS_TOPIC, ensure_topics
from mesh.host import ServiceHost
from services.simulator.config import SimulatorSettings
from services.simulator.driver import RunProgress, RunTarget, Simulation
from services.simulator.frames import ScheduleStats, SimFrame, iter_frames
from services.simulator.messages import detection_events
from services.simulator.plan import CameraPlan, Plan, SimulationOptions, build_plan
from services.simulator.render import Renderer
from services.simulator.scene import build_scene
from services.simulator.truth import read_truth
from tests.e2e.accuracy_scoring import (
    ScaledClock,
    by_lane,
    counted_crossings,
    match,
    measured,
    speed_report,
    speed_score,
)
from tests.integration.analytics_host import (
    Topics,
    analytics_host,
    analytics_stub,
    eventually,
    publish_all,
    start_group_at_end,
)
from tests.integration.streaming_host import streaming_host

pytestmark = pytest.mark.integration

DURATION_S = 45.0
SPEEDUP = 3.0
"""Scene seconds per wall-clock second while streaming."""
COUNTED_MARGIN_S = 1.0
"""The truth counts crossings at least this long before the end of the run (truth.COUNTED_MARGIN_S)."""

MAE_KMH = 1.5
P95_KMH = 3.0
BIAS_KMH = 0.5
WRONG_WAY_WITHIN_S = 1.0
SCENE_KEY = "accuracy"
FAR_M = 120.0

SPEEDING = events_pb2.VIOLATION_KIND_SPEEDING
WRONG_WAY = events_pb2.VIOLATION_KIND_WRONG_WAY
STOPPED = events_pb2.VIOLATION_KIND_STOPPED_VEHICLE


def _options(seed: int, **overrides: Any) -> SimulationOptions:
    return SimulationOptions(
        cameras=1,
        devices=0,
        duration_s=DURATION_S,
        seed=seed,
        drop_rate=0.1,
        irregular=0.25,
        jitter_px=1.5,
        prefix=f"acc{uuid.uuid4().hex[:8]}",
        **overrides,
    )


class _FixedScene(CameraPlan):
    """A camera whose frame schedule, like its scene, does not depend on its (unique) id."""

    def frames(self) -> tuple[Iterator[SimFrame], ScheduleStats]:
        return iter_frames(self.scene, self.camera, self.frame_options, SCENE_KEY)


def _plan(options: SimulationOptions, **scene: Any) -> Plan:
    """A one-camera plan whose scene and frames follow from the seed alone; ``scene`` overrides the
    scene's configuration."""
    plan = build_plan(options)
    (camera,) = plan.cameras
    config = dataclasses.replace(camera.scene.config, **scene)
    built = build_scene(config, SCENE_KEY)
    fields = {f.name: getattr(camera, f.name) for f in dataclasses.fields(camera)}
    fields.update(scene=built, renderer=Renderer(built, camera.camera))
    return dataclasses.replace(plan, cameras=[_FixedScene(**fields)])


async def _simulate(plan: Plan, streaming: ServiceHost, infra: Any, truth: Path) -> RunProgress:
    settings = SimulatorSettings(
        streaming_address=f"127.0.0.1:{streaming.grpc_port}", redis_url=infra.redis_url
    )
    # Capture times stay in the past (streaming refuses future ones) however fast the clock runs.
    clock = ScaledClock(SPEEDUP, lead_s=2 * DURATION_S)
    simulation = Simulation(plan, RunTarget(settings, authenticate=False), truth_path=truth, clock=clock)
    progress = await simulation.run(asyncio.Event())
    for source in progress.sources:
        assert source.error == "", f"{source.source_id}: {source.error}"
    return progress


async def _passages(pg: asyncpg.Connection, camera_id: str) -> list[asyncpg.Record]:
    return await pg.fetch("SELECT * FROM analytics.vehicle_passages WHERE camera_id = $1", camera_id)


async def _violations(pg: asyncpg.Connection, camera_id: str) -> list[events_pb2.Violation]:
    rows = await pg.fetch("SELECT payload FROM analytics.violations WHERE camera_id = $1", camera_id)
    return [events_pb2.Violation.FromString(r["payload"]) for r in rows]


def _far_field(camera: CameraPlan) -> int:
    """Detections of vehicles more than 120 m away."""
    frames, _ = camera.frames()
    road = camera.scene.road
    return sum(1 for f in frames for d in f.detections if d.vehicle.position(f.t, road)[1] > FAR_M)


def _first_seen(camera: CameraPlan, vehicle_id: str, start_time: float) -> float:
    """Capture time of the first frame analytics can see the vehicle in (sent in order, not dropped)."""
    frames, _ = camera.frames()
    return start_time + min(
        f.t for f in frames if not f.swapped and any(d.vehicle_id == vehicle_id for d in f.detections)
    )


async def _status(host: ServiceHost) -> analytics_pb2.PipelineStatus:
    async with analytics_stub(host) as stub:
        client: Any = stub  # the generated stub is typed for the synchronous API
        status: analytics_pb2.PipelineStatus = await client.GetPipelineStatus(
            analytics_pb2.GetPipelineStatusRequest()
        )
        return status


async def _lag(host: ServiceHost) -> int | None:
    """Detections not processed yet (None before the partitions are assigned)."""
    status = await _status(host)
    partitions = [p for p in status.partitions if p.topic == CAMERA_DETECTIONS_TOPIC]
    return sum(p.lag for p in partitions) if partitions else None


async def _replay(host: ServiceHost, bootstrap: str, camera: CameraPlan, truth: list[dict[str, Any]]) -> None:
    """Every frame of the camera once more, straight into Kafka as sent (duplicates and disorder
    included, under event ids of their own), as a misbehaving producer would; waits until consumed."""
    run = next(r for r in truth if r["type"] == "run")
    events = list(detection_events(camera, run["start_time"], run["sequence_base"]))
    before = await _status(host)
    seen = before.events_processed_total + before.events_duplicate_total
    await publish_all(bootstrap, CAMERA_DETECTIONS_TOPIC, events, lambda e: e.camera_id)

    async def consumed() -> bool:
        status = await _status(host)
        total = status.events_processed_total + status.events_duplicate_total
        return total >= seen + len(events) and await _lag(host) == 0

    await eventually(consumed, timeout=60, what="the replay")


async def _settled(host: ServiceHost, pg: asyncpg.Connection, camera_ids: list[str], expected: int) -> None:
    """Until no detection is left unprocessed, every crossing is a passage and every window is closed."""

    async def done() -> bool:
        if await _lag(host) != 0:
            return False
        passages = windows = 0
        for camera_id in camera_ids:
            passages += await pg.fetchval(
                "SELECT count(*) FROM analytics.vehicle_passages WHERE camera_id = $1", camera_id
            )
            windows += await pg.fetchval(
                "SELECT coalesce(sum(vehicle_count), 0) FROM analytics.traffic_metrics "
                "WHERE camera_id = $1 AND lane = '' AND zone = ''",
                camera_id,
            )
        return passages >= expected and windows == passages

    await eventually(done, timeout=60, what="analytics to process every frame")


def _check_counts(camera_id: str, truth: list[dict[str, Any]], rows: list[asyncpg.Record]) -> None:
    crossings = counted_crossings(truth, camera_id)
    start = next(r["start_time"] for r in truth if r["type"] == "run")
    cutoff = start + DURATION_S - COUNTED_MARGIN_S
    passages = [p for p in measured(rows) if p.time <= cutoff]
    _, missing, extra = match(crossings, passages)
    assert missing == [], f"{camera_id}: vehicles without a passage"
    assert extra == [], f"{camera_id}: passages without a vehicle"
    assert by_lane(passages) == by_lane(crossings)


async def test_analytics_matches_the_simulators_ground_truth(infra, pg, tmp_path) -> None:
    tag = uuid.uuid4().hex[:10]
    topics = Topics(CAMERA_DETECTIONS_TOPIC, f"test.tel.{tag}", f"test.cam.{tag}")
    await ensure_topics(infra.kafka_bootstrap_servers, {topics.telemetry: 1, topics.camera_events: 1})
    group = f"analytics-{tag}"
    await start_group_at_end(infra.kafka_bootstrap_servers, group, CAMERA_DETECTIONS_TOPIC)
    busy = _plan(_options(7, duplicate_rate=0.05, out_of_order_rate=0.05))
    # Lane change and occlusion stay in the clean scene: they are clean traffic.
    clean = _plan(_options(8), speeding_share=0.0, wrong_way=False, stopping=False)
    async with (
        streaming_host(infra) as streaming,
        analytics_host(
            infra, topics, group=group, streaming=streaming, idle_flush_s=4.0, relay_alerts=False
        ) as host,
    ):
        busy_run, clean_run = await asyncio.gather(
            _simulate(busy, streaming, infra, tmp_path / "busy.jsonl"),
            _simulate(clean, streaming, infra, tmp_path / "clean.jsonl"),
        )
        assert busy_run.transport == "raw StreamFrames"
        assert clean_run.transport == "mesh.edge"
        truth = read_truth(tmp_path / "busy.jsonl")
        clean_truth = read_truth(tmp_path / "clean.jsonl")
        camera, clean_camera = busy.cameras[0], clean.cameras[0]
        crossings = counted_crossings(truth, camera.camera_id)
        clean_crossings = counted_crossings(clean_truth, clean_camera.camera_id)
        await _settled(
            host, pg, [camera.camera_id, clean_camera.camera_id], len(crossings) + len(clean_crossings)
        )
        await _replay(host, infra.kafka_bootstrap_servers, camera, truth)

    # the scene really has what it should
    stats = next(r for r in truth if r["type"] == "camera")["frames"]
    assert stats["dropped"]
    assert stats["duplicated"]
    assert stats["swapped"]
    roles = Counter(c.role for c in crossings)
    assert roles.keys() >= {"lane_change", "occlusion", "wrong_way", "stopping"}
    assert roles["speeding"] == 2
    assert min(c.speed_kmh for c in crossings if c.role != "stopping") < 30
    assert max(c.speed_kmh for c in crossings) > 115
    assert _far_field(camera) > 0

    # counts and directions per lane, exactly; the occluded vehicle once
    rows = await _passages(pg, camera.camera_id)
    clean_rows = await _passages(pg, clean_camera.camera_id)
    _check_counts(camera.camera_id, truth, rows)
    _check_counts(clean_camera.camera_id, clean_truth, clean_rows)

    # speeds
    all_crossings = crossings + clean_crossings
    found, _, _ = match(all_crossings, measured(rows) + measured(clean_rows))
    score = speed_score(all_crossings, found)
    report = f"{score} over {len(score.errors)} passages\n{speed_report(all_crossings, found)}"
    assert len(score.errors) == len(all_crossings), report
    assert score.mae <= MAE_KMH, report
    assert score.p95 <= P95_KMH, report
    assert abs(score.bias) <= BIAS_KMH, report

    # metric windows hold every passage, per lane too
    for camera_id, passages in ((camera.camera_id, rows), (clean_camera.camera_id, clean_rows)):
        per_lane = dict(
            await pg.fetch(
                "SELECT lane, sum(vehicle_count) FROM analytics.traffic_metrics "
                "WHERE camera_id = $1 AND lane <> '' AND zone = '' GROUP BY lane",
                camera_id,
            )
        )
        lanes: dict[str, int] = {}
        for p in passages:
            lanes[p["lane"]] = lanes.get(p["lane"], 0) + 1
        assert {k: v for k, v in per_lane.items() if v} == lanes

    # rules: each fires on its scenario, once
    violations = await _violations(pg, camera.camera_id)

    def kinds(kind: int) -> list[events_pb2.Violation]:
        return [v for v in violations if v.kind == kind]

    speeders = [c for c in crossings if c.speeding]
    speeding = kinds(SPEEDING)
    assert len(speeding) == len(speeders), [v.summary for v in speeding]
    for vehicle in speeders:
        assert any(abs(v.start_time.ToNanoseconds() / 1e9 - vehicle.time) <= 0.5 for v in speeding), (
            f"{vehicle.vehicle_id} ({vehicle.speed_kmh:.1f} km/h) not flagged"
        )

    wrong_way = kinds(WRONG_WAY)
    driver = next(c for c in crossings if c.role == "wrong_way")
    assert len(wrong_way) == 1, [v.summary for v in wrong_way]
    assert wrong_way[0].lane_id == driver.lane
    start = next(r["start_time"] for r in truth if r["type"] == "run")
    seen = _first_seen(camera, driver.vehicle_id, start)
    flagged = wrong_way[0].end_time.ToNanoseconds() / 1e9
    assert 0 <= flagged - seen <= WRONG_WAY_WITHIN_S, (
        f"wrong-way flagged {flagged - seen:.2f} s after entering"
    )

    stopped = kinds(STOPPED)
    stop = next(r for r in truth if r["type"] == "vehicle" and r["role"] == "stopping")["stopped"]
    assert len(stopped) == 1, [v.summary for v in stopped]
    began = stopped[0].start_time.ToNanoseconds() / 1e9
    assert stop["start_time"] - 1.0 <= began <= stop["start_time"] + 3.0
    assert stopped[0].end_time.ToNanoseconds() / 1e9 < stop["end_time"]
    assert len(violations) == len(speeding) + 2, [v.summary for v in violations]

    # and never on clean traffic
    assert await _violations(pg, clean_camera.camera_id) == []
