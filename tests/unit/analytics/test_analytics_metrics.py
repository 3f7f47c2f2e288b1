"""10 s metric windows: counts by class, speeds, headway, occupancy and congestion level."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.analytics.metrics import CAMERA, WindowAggregator, congestion_level
from services.analytics.model import Passage

T0 = 1_700_000_000.0  # a multiple of 10


def _passage(track, t, lane, speed, cls="car"):
    at = datetime.fromtimestamp(t, UTC)
    return Passage(at, "cam", f"e{track}", track, "line", lane, "forward", cls, speed, at, at)


def _aggregator():
    return WindowAggregator("cam", 10, ["a", "b"], ["z"], lambda lane: 100.0)


def test_counts_classes_speeds_and_headway_per_camera_and_lane():
    agg = _aggregator()
    speeds = [50.0, 60.0, 70.0, 80.0, 90.0]
    for i, s in enumerate(speeds):
        agg.add_passage(
            _passage(f"t{i}", T0 + 1 + 2 * i, "a" if i < 3 else "b", s, "truck" if i == 0 else "car"),
            T0 + 1 + 2 * i,
        )
    agg.add_passage(_passage("t0", T0 + 9.5, "a", 50.0), T0 + 9.5)  # same track on a second line
    agg.add_interval(T0, T0 + 10, {}, {}, {})
    assert agg.close_until(T0 + 9.9) == []
    rows = {(w.metric.lane, w.metric.zone): w.metric for w in agg.close_until(T0 + 10)}
    camera = rows[CAMERA]
    assert camera.time == datetime.fromtimestamp(T0, UTC)
    assert camera.vehicle_count == 5
    assert dict(camera.counts_by_class) == {"truck": 1, "car": 4}
    assert camera.mean_speed_kmh == pytest.approx(70.0)
    assert camera.p85_speed_kmh == pytest.approx(84.0)  # linear interpolation
    assert camera.headway_s == pytest.approx(2.0)
    assert rows[("a", "")].vehicle_count == 3
    assert rows[("b", "")].vehicle_count == 2
    assert rows[("b", "")].headway_s == pytest.approx(2.0)
    assert rows[("", "z")].vehicle_count == 0


def test_occupancy_is_the_share_of_observed_time_and_split_across_windows():
    agg = _aggregator()
    t = T0 + 5.0
    for k in range(100):  # 10 s of frames at 10 fps; lane a covered in the first 2.5 s only
        occupied = {("a", ""): k < 25, ("", "z"): True}
        agg.add_interval(t + k * 0.1, t + (k + 1) * 0.1, occupied, {CAMERA: (30.0, 1)}, {("", "z"): ["x"]})
    first = {(w.metric.lane, w.metric.zone): w for w in agg.close_until(T0 + 10)}
    assert first[("a", "")].metric.occupancy == pytest.approx(0.5)
    assert first[("b", "")].metric.occupancy == 0.0
    assert first[CAMERA].metric.occupancy == pytest.approx(0.25)  # mean over lanes
    assert first[("", "z")].metric.occupancy == pytest.approx(1.0)
    assert first[("", "z")].metric.vehicle_count == 1
    assert first[CAMERA].tracked_mean_speed_kmh == pytest.approx(30.0)
    second = {(w.metric.lane, w.metric.zone): w for w in agg.close_until(T0 + 20)}
    assert second[("a", "")].metric.occupancy == 0.0


def test_late_data_for_a_closed_window_is_dropped():
    agg = _aggregator()
    agg.add_interval(T0, T0 + 1, {}, {}, {})
    assert len(agg.close_until(T0 + 10)) == 4
    agg.add_passage(_passage("late", T0 + 5, "a", 50.0), T0 + 5)
    assert agg.open_windows == 0


def test_gaps_in_frames_are_not_counted_as_observed_time():
    agg = _aggregator()
    agg.add_interval(T0, T0 + 8.0, {("a", ""): True}, {}, {})
    (camera, *_rest) = agg.close_until(T0 + 10)
    assert camera.observed_s == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("speed", "occupancy", "level"),
    [
        (None, None, 0),
        (None, 0.0, 1),
        (95.0, 0.1, 1),
        (60.0, 0.1, 2),
        (40.0, 0.2, 3),
        (20.0, 0.3, 4),
        (80.0, 0.7, 4),
        (2.0, 0.9, 5),
    ],
)
def test_congestion_level(speed, occupancy, level):
    assert congestion_level(speed, occupancy, 100.0) == level
