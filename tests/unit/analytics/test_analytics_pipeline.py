"""The camera pipeline end to end on synthetic scenes, scored against their ground truth."""

from __future__ import annotations

import functools
import itertools
import statistics
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2

from itsmesh.v1 import common_pb2, events_pb2
from services.analytics.camera_config import ZoneConfig, camera_config_from_proto
from services.analytics.decode import detection_frame_from_event
from services.analytics.model import PipelineOutput
from services.analytics.pipeline import CameraPipeline
from services.analytics.testing import SCENE_START, PinholeCamera, Scene, build_scene

FAR_FUTURE = datetime.max.replace(tzinfo=UTC)


@functools.cache
def _scene(seed: int) -> Scene:
    return build_scene(seed)


@functools.cache
def _output(seed: int) -> PipelineOutput:
    return _run(_scene(seed))


def _clock():
    return datetime(2030, 1, 1, tzinfo=UTC)


def _run(scene: Scene, pipeline: CameraPipeline | None = None) -> PipelineOutput:
    pipeline = pipeline or CameraPipeline(scene.config, clock=_clock)
    out = PipelineOutput()
    for frame in scene.frames:
        out = out.merged(pipeline.process(frame))
    return out.merged(pipeline.flush(FAR_FUTURE))


def _match(scene: Scene, out: PipelineOutput):
    """Pair every ground-truth crossing with the passage nearest in time on the same lane and direction."""
    free = list(out.passages)
    pairs = []
    for truth in scene.truth:
        at = SCENE_START + timedelta(seconds=truth.crossing_s)
        candidates = [p for p in free if p.lane == truth.lane and p.direction == truth.direction]
        best = min(candidates, key=lambda p: abs(p.time - at), default=None)
        assert best is not None, f"no passage for {truth}"
        assert abs(best.time - at) < timedelta(seconds=0.1)
        free.remove(best)
        pairs.append((truth, best))
    return pairs, free


def test_standard_scene_counts_exactly_and_measures_speed_within_tolerance():
    errors = []
    for seed in (1, 2, 3):
        scene = _scene(seed)
        out = _output(seed)
        pairs, extra = _match(scene, out)
        assert extra == []
        assert Counter((p.lane, p.direction) for p in out.passages) == Counter(
            (t.lane, t.direction) for t in scene.truth
        )
        assert all(p.object_class == t.object_class for t, p in pairs)
        errors += [p.speed_kmh - t.speed_kmh for t, p in pairs]
    absolute = sorted(abs(e) for e in errors)
    mae = statistics.fmean(absolute)
    p95 = absolute[int(0.95 * (len(absolute) - 1))]
    bias = statistics.fmean(errors)
    assert mae <= 1.5, mae
    assert p95 <= 3.0, p95
    assert abs(bias) <= 0.5, bias


def test_lane_change_counts_in_the_new_lane_and_occlusion_does_not_double_count():
    scene = _scene(1)
    out = _output(1)
    changer = next(v for v in scene.vehicles if v.lane_change_to)
    hidden = next(v for v in scene.vehicles if v.occluded_s)
    pairs, _ = _match(scene, out)
    by_vehicle = {t.vehicle_id: p for t, p in pairs}
    assert by_vehicle[changer.vehicle_id].lane == "l1"
    assert by_vehicle[hidden.vehicle_id].lane == hidden.lane
    assert len({p.track_id for p in out.passages}) == len(out.passages)


def test_replaying_the_same_frames_gives_the_same_ids_and_duplicates_are_ignored():
    scene = _scene(2)
    first = _output(2)
    doubled = replace(scene, frames=[f for frame in scene.frames for f in (frame, frame)])
    second = _run(doubled)
    assert [p.event_id for p in first.passages] == [p.event_id for p in second.passages]
    assert [m.time for m in first.metrics] == [m.time for m in second.metrics]


def test_metric_windows_are_contiguous_and_count_every_passage():
    out = _output(1)
    camera_rows = [m for m in out.metrics if not m.lane and not m.zone]
    starts = [m.time for m in camera_rows]
    assert starts == sorted(starts)
    assert all(b - a == timedelta(seconds=10) for a, b in itertools.pairwise(starts))
    assert sum(m.vehicle_count for m in camera_rows) == len(out.passages)
    lane_rows = [m for m in out.metrics if m.lane]
    assert sum(m.vehicle_count for m in lane_rows) == len(out.passages)
    assert {m.lane for m in lane_rows} == {"l1", "l2", "l3"}
    busy = [m for m in camera_rows if m.vehicle_count >= 2]
    assert busy
    assert all(m.mean_speed_kmh is not None and m.headway_s is not None for m in busy)
    assert all(0.0 <= (m.occupancy or 0.0) <= 1.0 for m in out.metrics)


def test_late_frames_are_dropped_and_windows_close_only_after_the_grace():
    scene = _scene(1)
    pipeline = CameraPipeline(scene.config, clock=_clock)
    frames = sorted({f.sequence: f for f in scene.frames}.values(), key=lambda f: f.capture_time)
    for frame in frames[:300]:
        pipeline.process(frame)
    assert pipeline.watermark is not None
    assert not pipeline.process(frames[10])  # duplicate
    late = replace(frames[10], sequence=10_000)
    assert not pipeline.process(late)  # too late to reorder
    assert pipeline.frames_dropped == 2


def test_reconfigure_keeps_tracks_and_flush_finishes_everything():
    scene = _scene(1)
    pipeline = CameraPipeline(scene.config, clock=_clock)
    out = PipelineOutput()
    half = len(scene.frames) // 2
    for frame in scene.frames[:half]:
        out = out.merged(pipeline.process(frame))
    tracks = pipeline.active_tracks
    assert tracks > 0
    pipeline.reconfigure(replace(scene.config, speed_limit_kmh=80.0, config_version=2))
    assert pipeline.active_tracks == tracks
    for frame in scene.frames[half:]:
        out = out.merged(pipeline.process(frame))
    out = out.merged(pipeline.flush(FAR_FUTURE))
    assert pipeline.active_tracks == 0
    _match(scene, out)  # every crossing still found exactly once
    assert not pipeline.flush(FAR_FUTURE)


def test_camera_without_calibration_still_runs_but_reports_no_speed():
    # Without a road plane the tracker works on scaled pixels, where perspective breaks the constant
    # velocity model: counts become approximate, so only their presence is checked here.
    scene = _scene(1)
    config = replace(scene.config, calibration=scene.config.calibration[:3])
    pipeline = CameraPipeline(config, clock=_clock)
    out = _run(replace(scene, config=config), pipeline)
    assert not pipeline.calibrated
    assert len(out.passages) >= len(scene.truth)
    assert all(p.speed_kmh is None for p in out.passages)
    assert all(v.kind != "speeding" for v in out.violations)


def _camera_proto():
    def pt(x, y):
        return common_pb2.ImagePoint(x_px=x, y_px=y)

    square = common_pb2.Polygon(vertices=[pt(0, 0), pt(100, 0), pt(100, 100), pt(0, 100)])
    return common_pb2.Camera(
        camera_id="cam-1",
        speed_limit_kmh=80.0,
        time_zone="Europe/Berlin",
        config_version=7,
        labels={"site": "a4"},
        zones=[
            common_pb2.Zone(
                zone_id="z",
                kind=common_pb2.ZONE_KIND_RESTRICTED,
                area=square,
                restricted_classes=[common_pb2.OBJECT_CLASS_PEDESTRIAN],
            )
        ],
        lanes=[
            common_pb2.Lane(
                lane_id="l1", area=square, centerline=[pt(50, 100), pt(50, 0)], speed_limit_kmh=60.0
            )
        ],
        counting_lines=[
            common_pb2.CountingLine(
                line_id="c", segment=common_pb2.LineSegment(start=pt(0, 50), end=pt(100, 50)), lane_ids=["l1"]
            )
        ],
        calibration=common_pb2.Calibration(
            point_pairs=[
                common_pb2.CalibrationPointPair(
                    image_point=pt(x, y), world_point=common_pb2.WorldPoint(x_m=x / 10, y_m=y / 10)
                )
                for x, y in ((0, 0), (100, 0), (100, 100), (0, 100))
            ]
        ),
        rules=common_pb2.RulesConfig(
            speeding=common_pb2.SpeedingRule(
                enabled=True, tolerance_kmh=4.0, severity=common_pb2.SEVERITY_HIGH
            ),
            stopped_vehicle=common_pb2.StoppedVehicleRule(
                enabled=True, min_stopped_duration=duration_pb2.Duration(seconds=20)
            ),
            congestion=common_pb2.CongestionRule(enabled=True, window=duration_pb2.Duration(seconds=65)),
        ),
    )


def test_camera_config_from_proto():
    config = camera_config_from_proto(_camera_proto())
    assert config.camera_id == "cam-1"
    assert config.time_zone == "Europe/Berlin"
    assert config.config_version == 7
    assert dict(config.labels) == {"site": "a4"}
    assert config.zones[0].kind == "restricted"
    assert config.zones[0].restricted_classes == frozenset({"pedestrian"})
    assert config.speed_limit_for("l1") == 60.0
    assert config.speed_limit_for("other") == 80.0
    assert config.lines[0].lane_ids == ("l1",)
    assert config.calibration[1].world == (10.0, 0.0)
    rules = config.rules
    assert (rules.speeding.enabled, rules.speeding.tolerance_kmh, rules.speeding.severity) == (
        True,
        4.0,
        "high",
    )
    assert rules.stopped_vehicle.max_speed_kmh == 3.0  # unset: the documented default
    assert rules.stopped_vehicle.min_stopped_s == 20.0
    assert rules.congestion.window_s == 60
    assert not rules.wrong_way.enabled
    CameraPipeline(config, clock=_clock)  # compiles


def test_detection_event_decodes_to_a_frame():
    event = events_pb2.CameraDetectionEvent(
        event_id="e-1",
        camera_id="cam-1",
        sequence=42,
        camera_config_version=3,
        detections=[
            common_pb2.Detection(
                object_class=common_pb2.OBJECT_CLASS_TRUCK,
                confidence=0.5,
                box=common_pb2.BoundingBox(left_px=10, top_px=20, width_px=30, height_px=40),
            )
        ],
    )
    event.capture_time.FromDatetime(SCENE_START)
    frame = detection_frame_from_event(event)
    assert frame.capture_time == SCENE_START
    assert (frame.sequence, frame.config_version, frame.event_id) == (42, 3, "e-1")
    (box,) = frame.boxes
    assert (box.x1, box.y1, box.x2, box.y2, box.object_class) == (10, 20, 40, 60, "truck")
    assert box.bottom_centre == (25, 60)


def test_frames_swapped_within_the_reorder_delay_give_the_same_result_as_in_order():
    scene = _scene(3)
    in_order = sorted({f.sequence: f for f in scene.frames}.values(), key=lambda f: f.capture_time)
    swapped = list(in_order)
    for i in range(0, len(swapped) - 1, 2):
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    a = _run(replace(scene, frames=in_order))
    b = _run(replace(scene, frames=swapped))
    assert a.passages == b.passages
    assert [m.vehicle_count for m in a.metrics] == [m.vehicle_count for m in b.metrics]


def test_a_new_calibration_moves_live_tracks_onto_the_new_road_plane():
    scene = _scene(1)
    pipeline = CameraPipeline(scene.config, clock=_clock)
    shifted = tuple(
        replace(pair, world=(pair.world[0] + 10.0, pair.world[1] + 100.0))
        for pair in scene.config.calibration
    )
    out = PipelineOutput()
    half = len(scene.frames) // 2
    for frame in scene.frames[:half]:
        out = out.merged(pipeline.process(frame))
    pipeline.reconfigure(replace(scene.config, calibration=shifted, config_version=2))
    for frame in scene.frames[half:]:
        out = out.merged(pipeline.process(frame))
    out = out.merged(pipeline.flush(FAR_FUTURE))
    pairs, extra = _match(scene, out)
    assert extra == []
    assert max(abs(p.speed_kmh - t.speed_kmh) for t, p in pairs) < 5.0


def test_only_detections_inside_a_detection_zone_are_tracked():
    scene = _scene(1)
    cam = PinholeCamera()
    # a region of interest covering lanes l1 and l2 only (x from -5.25 to 1.75 m)
    roi = ZoneConfig(
        "roi",
        "detection",
        (cam.project(-5.5, 10), cam.project(1.7, 10), cam.project(1.7, 300), cam.project(-5.5, 300)),
    )
    config = replace(scene.config, zones=(*scene.config.zones, roi))
    out = _run(replace(scene, config=config), CameraPipeline(config, clock=_clock))
    assert {p.lane for p in out.passages} == {"l1", "l2"}
    assert len(out.passages) == sum(1 for t in scene.truth if t.lane != "l3")
