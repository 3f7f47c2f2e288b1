"""The ground-truth file of a whole plan: complete, JSON, consistent with the plan and its frames."""

from __future__ import annotations

import pytest

from services.simulator.command import progress_table
from services.simulator.driver import RunProgress, SourceProgress
from services.simulator.plan import SimulationOptions, build_plan, truth_records
from services.simulator.truth import read_truth, write_truth

OPTIONS = SimulationOptions(cameras=2, devices=3, duration_s=60.0, seed=8, prefix="u")


def test_the_truth_file_covers_every_camera_vehicle_and_device_event(tmp_path) -> None:
    plan = build_plan(OPTIONS)
    path = tmp_path / "truth.jsonl"
    written = write_truth(path, truth_records(plan, 1_700_000_000.0, "run-1", sequence_base=42))
    records = read_truth(path)
    assert len(records) == written
    assert records[0]["type"] == "run"
    assert records[0]["sequence_base"] == 42
    assert records[0]["options"]["seed"] == 8
    cameras = [r for r in records if r["type"] == "camera"]
    assert [c["camera_id"] for c in cameras] == ["u-cam-01", "u-cam-02"]
    for camera in plan.cameras:
        vehicles = [r for r in records if r["type"] == "vehicle" and r["camera_id"] == camera.camera_id]
        entered = [v for v in camera.scene.vehicles if v.entry_s < OPTIONS.duration_s]
        assert {v["vehicle_id"] for v in vehicles} == {v.vehicle_id for v in entered}
        for record in vehicles:
            if record["crossing_time"] is not None:
                assert 1_700_000_000.0 <= record["crossing_time"] < 1_700_000_060.0
                assert record["lane_id"] in {"lane-1", "lane-2", "lane-3"}
    events = [r for r in records if r["type"] == "device_event"]
    assert {e["event"] for e in events} == {"overspeed", "geofence_exit"}
    assert sum(e["event"] == "geofence_exit" for e in events) == 1
    fleet = next(r for r in records if r["type"] == "fleet")
    assert len(fleet["geofence"]["vertices"]) == 4


def test_cameras_differ_but_each_is_reproducible() -> None:
    a, b = build_plan(OPTIONS), build_plan(OPTIONS)
    assert a.cameras[0].scene != a.cameras[1].scene
    assert [c.registration for c in a.cameras] == [c.registration for c in b.cameras]


def test_the_progress_table_has_a_row_per_source() -> None:
    progress = RunProgress("r1", 60.0, start_time=100.0, now=130.0, transport="mesh.edge")
    progress.sources = [SourceProgress("u-cam-01", "camera", 540), SourceProgress("u-gps-001", "device", 60)]
    progress.sources[1].error = "UNAVAILABLE: streaming is down"
    table = progress_table(progress)
    assert table.row_count == 2
    assert "30/60 s" in str(table.title)
    assert progress.elapsed_s == pytest.approx(30.0)


def test_detection_events_mirror_the_frames_as_sent() -> None:
    from dataclasses import replace

    from services.simulator.messages import detection_events, frame_message

    plan = build_plan(replace(OPTIONS, cameras=1, duration_s=20.0, duplicate_rate=0.1, out_of_order_rate=0.1))
    camera = plan.cameras[0]
    frames, stats = camera.frames()
    frames = list(frames)
    events = list(detection_events(camera, 1_000.0, sequence_base=500))
    assert len(events) == len(frames) == stats.captured + len(stats.duplicated)
    for frame, event in zip(frames, events, strict=True):
        assert event.sequence == 500 + frame.sequence
        assert event.capture_time.ToNanoseconds() == round((1_000.0 + frame.t) * 1e9)
        assert [d.box.top_px for d in event.detections] == [d.box.top for d in frame.detections]
        message = frame_message(camera, frame, b"\xff\xd8\xff\xd9", 1_000.0, 500)
        assert list(message.detections) == list(event.detections)
        assert message.capture_time == event.capture_time
