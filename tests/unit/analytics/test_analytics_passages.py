"""Counting-line crossings: direction, lane, once per track, interpolated time and centred speed."""

from __future__ import annotations

import numpy as np
import pytest

from services.analytics.camera_config import CalibrationPair, CameraConfig, LaneConfig, LineConfig
from services.analytics.geometry import SceneGeometry
from services.analytics.homography import Homography
from services.analytics.passages import PassageDetector
from services.analytics.tracker import Detections, Tracker

# A top-down camera: 10 px per metre, image y grows with world y.
PAIRS = tuple(
    CalibrationPair((x * 10.0, y * 10.0), (x, y)) for x, y in ((0, 0), (20, 0), (20, 100), (0, 100))
)
LANES = (
    LaneConfig("a", ((0, 0), (100, 0), (100, 1000), (0, 1000)), ((50, 0), (50, 1000))),
    LaneConfig("b", ((100, 0), (200, 0), (200, 1000), (100, 1000)), ((150, 1000), (150, 0))),
)


def _config(lines):
    return CameraConfig("cam", 100.0, PAIRS, lanes=LANES, lines=lines)


def _detector(lines):
    config = _config(lines)
    h = Homography.from_pairs([p.image for p in config.calibration], [p.world for p in config.calibration])
    return PassageDetector("cam", SceneGeometry(config, h), 1.0)


def _det(t, seq, pts):
    a = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    n = len(a)
    return Detections(
        t,
        seq,
        a[:, 0] / 10,
        a[:, 1] / 10,
        np.full(n, 0.01),
        np.full(n, 0.01),
        a[:, 0],
        a[:, 1],
        ("car",) * n,
        (0.9,) * n,
    )


def _drive(detector, paths, times):
    tracker = Tracker()
    for k, t in enumerate(times):
        result = tracker.step(_det(t, k, [p(t) for p in paths]))
        for tr in result.assigned:
            detector.observe(tr)
    return tracker


def test_direction_lane_time_and_speed_of_a_crossing():
    det = _detector((LineConfig("l", (0.0, 500.0), (200.0, 500.0)),))
    times = [k * 0.04 for k in range(100)]
    # lane a moves down the image at 20 m/s (200 px/s): from the line's right side to its left? no:
    # looking from (0,500) to (200,500) the left-hand side is y < 500, so moving down is FORWARD.
    _drive(det, [lambda t: (50.0, 300.0 + 200.0 * t), lambda t: (150.0, 700.0 - 100.0 * t)], times)
    out = det.due(10.0, set())
    assert [(m.passage.lane, m.passage.direction) for m in out] == [("a", "forward"), ("b", "reverse")]
    a, b = out
    assert a.crossing_t == pytest.approx(1.0, abs=1e-9)
    assert b.crossing_t == pytest.approx(2.0, abs=1e-9)
    assert a.passage.speed_kmh == pytest.approx(72.0)
    assert b.passage.speed_kmh == pytest.approx(36.0)
    assert not a.passage.wrong_way
    assert not b.passage.wrong_way


def test_travel_against_the_lane_centreline_is_marked_wrong_way():
    det = _detector((LineConfig("l", (0.0, 500.0), (200.0, 500.0)),))
    _drive(det, [lambda t: (50.0, 700.0 - 150.0 * t)], [k * 0.04 for k in range(100)])
    (m,) = det.due(10.0, set())
    assert m.passage.wrong_way


def test_jitter_back_and_forth_over_the_line_counts_once():
    det = _detector((LineConfig("l", (0.0, 500.0), (200.0, 500.0)),))
    # A slow vehicle (1 m/s = 0.4 px per frame) whose box jitters by ±3 px across the line.
    jitter = [0, 3, -3, 2, -2, 3, -3, 1, -1, 3, -3, 2, -2, 0, 3, -3, 2, -2, 1, -1] * 3
    ys = [495.0 + 0.4 * k + j for k, j in enumerate(jitter)]
    tracker = Tracker()
    for k, y in enumerate(ys):
        for tr in tracker.step(_det(k * 0.04, k, [(50.0, float(y))])).assigned:
            det.observe(tr)
    assert len(det.due(10.0, set())) == 1


def test_passage_waits_for_half_a_speed_window_after_the_crossing():
    det = _detector((LineConfig("l", (0.0, 500.0), (200.0, 500.0)),))
    _drive(det, [lambda t: (50.0, 300.0 + 200.0 * t)], [k * 0.04 for k in range(30)])  # crosses at 1.0
    assert det.due(1.2, set()) == []
    assert len(det.due(1.5, set())) == 1


def test_line_limited_to_lanes_ignores_other_lanes_and_ids_are_deterministic():
    lines = (LineConfig("l", (0.0, 500.0), (200.0, 500.0), lane_ids=("b",)),)
    first, second = _detector(lines), _detector(lines)
    paths = [lambda t: (50.0, 300.0 + 200.0 * t), lambda t: (150.0, 300.0 + 200.0 * t)]
    _drive(first, paths, [k * 0.04 for k in range(60)])
    _drive(second, paths, [k * 0.04 for k in range(60)])
    (a,) = first.due(10.0, set())
    (b,) = second.due(10.0, set())
    assert a.passage.lane == "b"
    assert a.passage.event_id == b.passage.event_id


def test_segment_end_points_bound_the_line():
    det = _detector((LineConfig("l", (0.0, 500.0), (90.0, 500.0)),))
    _drive(det, [lambda t: (150.0, 300.0 + 200.0 * t)], [k * 0.04 for k in range(60)])
    assert det.due(10.0, set()) == []
