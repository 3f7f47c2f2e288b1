"""Camera rules on constructed scenes: each fires on its scenario and never on clean traffic."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from services.analytics.camera_config import (
    CongestionRule,
    RulesConfig,
    SpeedingRule,
    StoppedVehicleRule,
    WrongWayRule,
    ZoneConfig,
    ZoneIntrusionRule,
)
from services.analytics.pipeline import CameraPipeline
from services.analytics.testing import SCENE_START, PinholeCamera, Vehicle, build_scene, scene_config

CAM = PinholeCamera()
ALL_RULES = RulesConfig(
    speeding=SpeedingRule(enabled=True, tolerance_kmh=5.0, severity="medium", critical_excess_kmh=30.0),
    wrong_way=WrongWayRule(enabled=True, min_distance_m=5.0),
    stopped_vehicle=StoppedVehicleRule(enabled=True, max_speed_kmh=3.0, min_stopped_s=5.0),
    zone_intrusion=ZoneIntrusionRule(enabled=True, min_dwell_s=1.0),
    congestion=CongestionRule(enabled=True, max_mean_speed_kmh=20.0, min_occupancy_ratio=0.2, window_s=20),
)


def _run(vehicles, *, limit=100.0, config=None, seconds=None, seed=3):
    cfg = config or replace(scene_config(CAM, ALL_RULES), speed_limit_kmh=limit)
    scene = build_scene(seed, vehicles=vehicles, config=cfg, duration_s=seconds)
    pipeline = CameraPipeline(cfg, clock=lambda: datetime(2030, 1, 1, tzinfo=UTC))
    out = []
    for frame in scene.frames:
        out.extend(pipeline.process(frame).violations)
    out.extend(pipeline.flush(datetime.max.replace(tzinfo=UTC)).violations)
    return scene, out


def test_clean_traffic_raises_nothing():
    rng = random.Random(4)
    from services.analytics.testing import standard_vehicles

    _, violations = _run(standard_vehicles(rng), limit=130.0)
    assert violations == []


def test_speeding_above_limit_plus_tolerance_with_critical_escalation():
    vehicles = [
        Vehicle(0, "l1", 104.0, 0.0),  # within tolerance
        Vehicle(1, "l2", 112.0, 0.5),  # speeding
        Vehicle(2, "l3", 135.0, 1.0),  # 35 over: critical
    ]
    _, violations = _run(vehicles, seconds=12.0)
    speeding = sorted(
        (v for v in violations if v.kind == "speeding"), key=lambda v: v.evidence["measured_speed_kmh"]
    )
    assert [v.lane_id for v in speeding] == ["l2", "l3"]
    assert [v.severity for v in speeding] == ["medium", "critical"]
    assert abs(speeding[0].evidence["measured_speed_kmh"] - 112.0) < 3.0
    assert speeding[0].evidence["speed_limit_kmh"] == 100.0
    assert speeding[0].evidence["passage_id"]
    assert {v.kind for v in violations} == {"speeding"}


def test_wrong_way_is_flagged_within_one_second():
    ghost = Vehicle(0, "l3", 60.0, 0.0, wrong_way=True, start_y_m=12.0)
    scene, violations = _run([ghost], seconds=6.0)
    (v,) = [v for v in violations if v.kind == "wrong_way"]
    first_seen = min(f.capture_time for f in scene.frames if f.boxes)
    assert v.end_time - first_seen <= timedelta(seconds=1.0)
    assert v.lane_id == "l3"
    assert v.evidence["distance_against_m"] >= 5.0
    assert v.evidence["lane_direction_label"] == "southbound"
    assert v.track
    assert v.evidence_frame_sequences


def test_stopped_vehicle_outside_a_stop_zone_after_the_minimum_time():
    parked = Vehicle(0, "l2", 0.0, 0.0, start_y_m=60.0)
    _, violations = _run([parked], seconds=9.0)
    (v,) = violations
    assert v.kind == "stopped_vehicle"
    assert 5.0 <= (v.end_time - v.start_time).total_seconds() < 5.5
    assert v.evidence["max_speed_kmh"] < 3.0
    assert abs(v.evidence["world_position"]["y_m"] - 57.75) < 1.0  # the car's near end


def test_stopped_vehicle_inside_a_stop_zone_is_fine():
    cfg = scene_config(CAM, ALL_RULES)
    stop = ZoneConfig(
        "bus-stop", "stop", (CAM.project(-2, 50), CAM.project(2, 50), CAM.project(2, 70), CAM.project(-2, 70))
    )
    cfg = replace(cfg, zones=(*cfg.zones, stop))
    _, violations = _run([Vehicle(0, "l2", 0.0, 0.0, start_y_m=60.0)], config=cfg, seconds=9.0)
    assert violations == []


def test_zone_intrusion_by_a_restricted_class_only():
    walker = Vehicle(0, "l3", 4.0, 0.0, object_class="pedestrian", start_y_m=40.0, x_m=8.0)
    car = Vehicle(1, "l3", 30.0, 0.0, object_class="car", start_y_m=70.0, x_m=8.0)
    _, violations = _run([walker, car], seconds=5.0)
    (v,) = [v for v in violations if v.kind == "zone_intrusion"]
    assert v.object_class == "pedestrian"
    assert v.evidence["zone_id"] == "shoulder"
    assert v.evidence["dwell_duration_s"] >= 1.0
    assert {x.kind for x in violations} == {"zone_intrusion"}


def test_congestion_over_the_configured_window():
    # Queues crawling over the counting line at 8 km/h, bumper to bumper, in all three lanes.
    queue = [
        Vehicle(i * 3 + k, lane, 8.0, 0.0, start_y_m=45.0 - 7.0 * i if lane != "l3" else 55.0 + 7.0 * i)
        for i in range(12)
        for k, lane in enumerate(("l1", "l2", "l3"))
    ]
    _, violations = _run(queue, seconds=32.0)
    congestion = [v for v in violations if v.kind == "congestion"]
    assert len(congestion) == 1
    (v,) = congestion
    assert v.evidence["mean_speed_kmh"] < 20.0
    assert v.evidence["occupancy_ratio"] > 0.2
    assert v.start_time >= SCENE_START


def test_far_field_jitter_is_not_taken_for_wrong_way_travel():
    # 150 m away a pixel spans several metres along the road: noisy tracks of parked and legal
    # vehicles there must not look like travel against the lane.
    config = scene_config(CAM, RulesConfig(wrong_way=WrongWayRule(enabled=True, min_distance_m=5.0)))
    vehicles = [
        Vehicle(0, "l1", 0.0, 0.0, start_y_m=150.0),
        Vehicle(1, "l2", 0.0, 0.0, start_y_m=140.0),
        *(Vehicle(2 + i, "l3", 30.0 + 20.0 * i, 1.5 * i) for i in range(4)),
    ]
    for seed in (1, 2, 3):
        scene = build_scene(seed, vehicles=vehicles, config=config, duration_s=8.0, fps=10.0, jitter_px=1.5)
        pipeline = CameraPipeline(config, clock=lambda: datetime(2030, 1, 1, tzinfo=UTC))
        for frame in scene.frames:
            assert pipeline.process(frame).violations == ()
