"""GPS devices do what the ground truth says: overspeed in their window, one leaves the geofence."""

from __future__ import annotations

import itertools
import math

import pytest
from shapely.geometry import Point, Polygon

from services.simulator.gps import FleetConfig, build_fleet
from services.simulator.scene import KMH

FLEET = build_fleet(FleetConfig(seed=9, devices=4, duration_s=120.0))


def test_overspeed_events_match_the_readings() -> None:
    limit = FLEET.config.speed_limit_kmh
    overspeeding = [e for e in FLEET.events if e.kind == "overspeed"]
    assert overspeeding
    for device in FLEET.devices:
        windows = [(e.start_s, e.end_s) for e in device.events if e.kind == "overspeed"]
        for reading in FLEET.readings(device):
            inside = any(start <= reading.t < end for start, end in windows if end is not None)
            assert (reading.speed_kmh > limit) == inside


def test_exactly_one_device_leaves_the_geofence_when_the_truth_says() -> None:
    fence = Polygon([(lon, lat) for lat, lon in FLEET.geofence()])
    exits = [e for e in FLEET.events if e.kind == "geofence_exit"]
    assert len(exits) == 1
    for device in FLEET.devices:
        readings = FLEET.readings(device)
        outside = [r.t for r in readings if not fence.contains(Point(r.longitude_deg, r.latitude_deg))]
        if device.device_id == exits[0].device_id:
            assert outside
            assert min(outside) == pytest.approx(exits[0].start_s, abs=1.0)
            assert all(t >= exits[0].start_s for t in outside)
        else:
            assert not outside


def test_positions_move_as_fast_as_the_reported_speed_and_heading() -> None:
    device = FLEET.devices[0]
    readings = FLEET.readings(device)
    for a, b in itertools.pairwise(readings):
        if a.speed_kmh != b.speed_kmh:
            continue  # the speed changed somewhere between the two fixes
        dy = (b.latitude_deg - a.latitude_deg) * 111_320.0
        dx = (b.longitude_deg - a.longitude_deg) * 111_320.0 * math.cos(math.radians(a.latitude_deg))
        chord = math.hypot(dx, dy)
        # A chord of a circle is a little shorter than the arc driven.
        assert chord == pytest.approx(a.speed_kmh * KMH * (b.t - a.t), rel=0.01)
        bearing = math.degrees(math.atan2(dx, dy)) % 360
        turn = (bearing - a.heading_deg + 180) % 360 - 180
        assert abs(turn) < 15  # heading points along the route
        assert 0 <= a.heading_deg < 360
