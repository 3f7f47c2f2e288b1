"""Telemetry rules: overspeed and geofence exit/entry, once per episode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shapely.geometry import Polygon

from services.analytics.telemetry_rules import GeofenceRule, TelemetryRules, boundary_distance_m

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
# About 1.1 km x 1.1 km around (52.50, 13.40)
DEPOT = Polygon([(13.39, 52.495), (13.41, 52.495), (13.41, 52.505), (13.39, 52.505)])


def _rules(*geofences, limit=50.0):
    return TelemetryRules(
        geofences, default_speed_limit_kmh=limit, default_tolerance_kmh=5.0, clock=lambda: T0
    )


def test_overspeed_fires_once_per_episode():
    rules = _rules()
    speeds = [40, 52, 60, 70, 65, 40, 58]
    found = []
    for i, s in enumerate(speeds):
        found += rules.process_reading("bus-1", T0 + timedelta(seconds=i), 52.5, 13.4, float(s), 90.0)
    assert [v.kind for v in found] == ["telemetry_overspeed", "telemetry_overspeed"]
    first = found[0]
    assert first.start_time == T0 + timedelta(seconds=2)
    assert first.device_id == "bus-1"
    assert first.evidence["measured_speed_kmh"] == 60.0
    assert first.evidence["speed_limit_kmh"] == 50.0
    assert first.evidence["tolerance_kmh"] == 5.0


def test_speed_zone_sets_a_stricter_limit_inside():
    school = GeofenceRule("school", "speed_zone", DEPOT, speed_limit_kmh=30.0, severity="high")
    rules = _rules(school)
    (v,) = rules.process_reading("car-7", T0, 52.5, 13.4, 40.0)
    assert v.evidence["geofence_id"] == "school"
    assert v.severity == "high"
    assert rules.process_reading("car-8", T0, 52.6, 13.4, 40.0) == []


def test_leaving_a_keep_inside_geofence_is_an_exit_violation():
    depot = GeofenceRule("depot", "keep_inside", DEPOT, name="Depot", device_ids=frozenset({"van-1"}))
    rules = _rules(depot, limit=200.0)
    track = [
        (52.50, 13.40),
        (52.504, 13.40),
        (52.506, 13.40),
        (52.507, 13.40),
        (52.50, 13.40),
        (52.51, 13.40),
    ]
    found = []
    for i, (lat, lon) in enumerate(track):
        found += rules.process_reading("van-1", T0 + timedelta(seconds=i), lat, lon, 30.0)
    assert [(v.kind, v.start_time) for v in found] == [
        ("geofence_exit", T0 + timedelta(seconds=2)),
        ("geofence_exit", T0 + timedelta(seconds=5)),
    ]
    assert 50.0 < found[0].evidence["distance_from_boundary_m"] < 150.0
    assert rules.process_reading("other", T0, 52.6, 13.4, 30.0) == []  # not one of its devices


def test_entering_a_keep_out_geofence_is_an_entry_violation_and_disabled_ones_are_ignored():
    zone = GeofenceRule("no-go", "keep_out", DEPOT)
    rules = _rules(zone, GeofenceRule("off", "keep_out", DEPOT, disabled=True), limit=200.0)
    assert rules.process_reading("d", T0, 52.6, 13.4, 10.0) == []
    (v,) = rules.process_reading("d", T0 + timedelta(seconds=1), 52.5, 13.4, 10.0)
    assert v.kind == "geofence_entry"
    assert v.evidence["geofence_id"] == "no-go"


def test_hot_reload_keeps_episodes_of_kept_geofences():
    depot = GeofenceRule("depot", "keep_inside", DEPOT)
    rules = _rules(depot, limit=200.0)
    assert len(rules.process_reading("v", T0, 52.6, 13.4, 10.0)) == 1
    rules.set_geofences([depot])
    assert rules.process_reading("v", T0 + timedelta(seconds=1), 52.6, 13.4, 10.0) == []


def test_boundary_distance_is_in_metres():
    # 0.001 degree of latitude is about 111 m
    assert abs(boundary_distance_m(DEPOT, 52.506, 13.40) - 111.2) < 1.0
