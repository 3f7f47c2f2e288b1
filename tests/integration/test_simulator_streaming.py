"""The simulator against a real streaming service and broker: cameras registered, frames in Kafka."""

from __future__ import annotations

import asyncio
import uuid
from functools import partial

import pytest

from itsmesh.v1 import events_pb2, streaming_pb2
from mesh.events import CAMERA_DETECTIONS_TOPIC
from services.simulator.config import SimulatorSettings
from services.simulator.driver import RunTarget, Simulation
from services.simulator.plan import SimulationOptions, build_plan
from services.simulator.truth import read_truth
from tests.integration.streaming_host import records, streaming_host, stub

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def host(infra):
    async with streaming_host(infra) as running:
        yield running


def _at_least(count: int, found: list) -> bool:
    return len(found) >= count


def _settings(host, infra) -> SimulatorSettings:
    return SimulatorSettings(streaming_address=f"127.0.0.1:{host.grpc_port}", redis_url=infra.redis_url)


async def test_cameras_are_registered_and_every_acked_frame_reaches_kafka(
    host, infra, kafka_bootstrap, tmp_path
):
    options = SimulationOptions(
        cameras=2, devices=0, fps=5.0, duration_s=3.0, seed=11, prefix=f"t{uuid.uuid4().hex[:8]}"
    )
    plan = build_plan(options)
    truth = tmp_path / "truth.jsonl"
    seen = []
    simulation = Simulation(
        plan, RunTarget(_settings(host, infra), authenticate=False), truth_path=truth, on_progress=seen.append
    )
    progress = await simulation.run(asyncio.Event())
    assert progress.transport == "mesh.edge"
    assert seen, "no live progress was reported"

    run = read_truth(truth)[0]
    base = run["sequence_base"]
    async with stub(host) as client:
        for camera in plan.cameras:
            stored = await client.GetCamera(streaming_pb2.GetCameraRequest(camera_id=camera.camera_id))
            assert list(stored.lanes) == list(camera.registration.lanes)
            assert list(stored.calibration.point_pairs) == list(camera.registration.calibration.point_pairs)
            assert list(stored.counting_lines) == list(camera.registration.counting_lines)

    for source in progress.sources:
        assert source.error == ""
        assert source.counters.acked == source.planned > 0
    for camera in plan.cameras:
        expected, _ = camera.frames()
        by_sequence = {base + f.sequence: f for f in expected}
        found = await records(
            kafka_bootstrap,
            CAMERA_DETECTIONS_TOPIC,
            camera.camera_id,
            partial(_at_least, len(by_sequence)),
        )
        events = [events_pb2.CameraDetectionEvent.FromString(r.value) for r in found]
        assert sorted(e.sequence for e in events) == sorted(by_sequence)
        for event in events:
            frame = by_sequence[event.sequence]
            assert event.capture_time.ToNanoseconds() == round((run["start_time"] + frame.t) * 1e9)
            assert [d.box.left_px for d in event.detections] == pytest.approx(
                [d.box.left for d in frame.detections]
            )


async def test_duplicate_and_out_of_order_frames_go_out_raw_and_are_settled(host, infra, tmp_path):
    # The frame schedule is seeded by the (unique) camera id: take the first plan whose 28 frames include
    # both a resent and a swapped frame, so the test never depends on the draw.
    for _ in range(100):
        options = SimulationOptions(
            cameras=1,
            devices=0,
            fps=10.0,
            duration_s=3.0,
            seed=12,
            duplicate_rate=0.2,
            out_of_order_rate=0.2,
            prefix=f"t{uuid.uuid4().hex[:8]}",
        )
        plan = build_plan(options)
        _, planned = plan.cameras[0].frames()
        if planned.duplicated and planned.swapped:
            break
    simulation = Simulation(
        plan, RunTarget(_settings(host, infra), authenticate=False), truth_path=tmp_path / "t"
    )
    progress = await simulation.run(asyncio.Event())
    assert progress.transport == "raw StreamFrames"
    _, stats = plan.cameras[0].frames()
    counters = progress.sources[0].counters
    assert stats.duplicated
    assert stats.swapped
    # A resent frame is re-acknowledged as a duplicate, or refused as out of order when its ack had not
    # arrived yet; an earlier frame sent after a later one is always refused as out of order (never
    # acknowledged, even once the later one was). Either way only first copies are accepted.
    assert counters.sent == stats.captured + len(stats.duplicated)
    assert counters.duplicate + counters.rejected == len(stats.duplicated) + len(stats.swapped)
    assert counters.rejected >= len(stats.swapped)
    assert counters.acked == stats.captured - len(stats.swapped)
    assert counters.buffered == 0


async def test_a_stop_while_streaming_is_unreachable_ends_the_run_at_once(infra, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = SimulatorSettings(streaming_address=f"127.0.0.1:{port}", redis_url=infra.redis_url)
    plan = build_plan(
        SimulationOptions(cameras=1, devices=0, duration_s=5.0, prefix=f"t{uuid.uuid4().hex[:8]}")
    )
    stop = asyncio.Event()
    run = asyncio.create_task(
        Simulation(plan, RunTarget(settings, authenticate=False), truth_path=tmp_path / "t").run(stop)
    )
    await asyncio.sleep(1.0)
    assert not run.done()  # still waiting for streaming to come up
    stop.set()
    async with asyncio.timeout(5):
        progress = await run
    assert progress.sources == []
    assert not (tmp_path / "t").exists()
