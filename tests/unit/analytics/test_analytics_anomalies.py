"""Time-of-week EWMA baselines: z-score anomalies of flow and speed, and sudden drops to zero."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from services.analytics.anomalies import AnomalyDetector, AnomalySettings, time_of_week_slot
from services.analytics.camera_config import AnomalyRule
from services.analytics.model import MetricWindow

RULE = AnomalyRule(enabled=True, z_score_threshold=3.0, severity="high")
MONDAY = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _window(start, count, speed, lane=""):
    return MetricWindow(start, "cam", lane, "", 10, count, mean_speed_kmh=speed)


def _feed(detector, weeks, rng, *, count_mean=5.0, speed=80.0, rule=RULE):
    """The same slot (Monday 08:00-08:15) for several weeks of Poisson traffic; returns anomalies."""
    found = []
    for week in range(weeks):
        for k in range(90):
            start = MONDAY + timedelta(weeks=week, seconds=10 * k)
            count = sum(rng.random() < count_mean / 20 for _ in range(20))
            found += detector.on_window(
                _window(start, count, speed + rng.gauss(0, 3)),
                rule,
                time_zone="UTC",
                labels={},
                detect_time=start,
            )
    return found


def test_steady_traffic_raises_no_anomalies():
    assert _feed(AnomalyDetector(), 3, random.Random(1)) == []


def test_flow_and_speed_far_from_the_baseline_are_anomalies():
    detector = AnomalyDetector()
    _feed(detector, 2, random.Random(2))
    at = MONDAY + timedelta(weeks=2)
    found = detector.on_window(
        _window(at, 30, 20.0), RULE, time_zone="UTC", labels={"site": "a"}, detect_time=at
    )
    kinds = {a.kind: a for a in found}
    assert set(kinds) == {"flow_high", "speed_low"}
    flow = kinds["flow_high"]
    assert flow.observed_value == pytest.approx(30 * 360.0)
    assert flow.z_score > 3.0
    assert flow.baseline_mean == pytest.approx(1800.0, rel=0.2)
    assert flow.severity == "high"
    assert flow.labels == {"site": "a"}
    assert flow.time_of_week_slot == 32  # Monday 08:00 in 15-minute slots
    again = detector.on_window(_window(at, 30, 20.0), RULE, time_zone="UTC", labels={}, detect_time=at)
    assert {a.anomaly_id for a in again} == {a.anomaly_id for a in found}  # deterministic ids


def test_sudden_drop_to_zero_where_traffic_is_expected():
    detector = AnomalyDetector(AnomalySettings(drop_min_expected_count=3.0))
    _feed(detector, 2, random.Random(3), count_mean=6.0)
    at = MONDAY + timedelta(weeks=2)
    detector.on_window(_window(at, 6, 80.0), RULE, time_zone="UTC", labels={}, detect_time=at)
    later = at + timedelta(seconds=10)
    (drop,) = detector.on_window(_window(later, 0, None), RULE, time_zone="UTC", labels={}, detect_time=later)
    assert drop.kind == "flow_drop_to_zero"
    assert drop.observed_value == 0.0


def test_nothing_is_reported_before_the_slot_has_history_or_when_disabled():
    detector = AnomalyDetector()
    assert (
        detector.on_window(_window(MONDAY, 50, 10.0), RULE, time_zone="UTC", labels={}, detect_time=MONDAY)
        == []
    )
    off = AnomalyRule(enabled=False)
    fresh = AnomalyDetector()
    _feed(fresh, 2, random.Random(4), rule=off)
    at = MONDAY + timedelta(weeks=2)
    assert fresh.on_window(_window(at, 40, 10.0), off, time_zone="UTC", labels={}, detect_time=at) == []


def test_baselines_survive_a_snapshot_round_trip():
    detector = AnomalyDetector()
    _feed(detector, 2, random.Random(5))
    copy = AnomalyDetector()
    copy.restore(detector.snapshot())
    at = MONDAY + timedelta(weeks=2)
    a = detector.on_window(_window(at, 30, 80.0), RULE, time_zone="UTC", labels={}, detect_time=at)
    b = copy.on_window(_window(at, 30, 80.0), RULE, time_zone="UTC", labels={}, detect_time=at)
    assert a == b
    assert a


def test_slots_use_the_cameras_local_time():
    # 23:30 UTC on Sunday is 00:30 on Monday in Berlin (winter time).
    sunday_night = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    assert time_of_week_slot(sunday_night, "Europe/Berlin", 900) == 2
    assert time_of_week_slot(sunday_night, "UTC", 900) == 6 * 96 + 94
    assert time_of_week_slot(sunday_night, "No/Such_Zone", 900) == 6 * 96 + 94
