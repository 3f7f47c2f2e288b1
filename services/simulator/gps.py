"""GPS devices driving routes around a centre point: pure and seeded, with the events they cause.

Every device but one loops a circle inside a square geofence at town speed; some of them speed up past
the limit for a while (overspeed events). One drives straight east and leaves the geofence at a known
time (a geofence-exit event). Positions are computed in local metres (x east, y north) and converted to
WGS 84 with a flat-earth approximation, which is exact enough over a few kilometres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from services.simulator.scene import KMH

METRES_PER_DEGREE: Final = 111_320.0
GEOFENCE_ID: Final = "sim-area"


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """What the GPS fleet does."""

    seed: int = 1
    devices: int = 3
    duration_s: float = 60.0
    readings_per_second: float = 1.0
    centre: tuple[float, float] = (52.52, 13.405)
    geofence_half_size_m: float = 1500.0
    speed_limit_kmh: float = 50.0
    overspeed_share: float = 0.34
    """Share of looping devices that overspeed once (at least one when there are two or more devices)."""
    geofence_exit: bool = True


@dataclass(frozen=True, slots=True)
class Reading:
    """One GPS fix."""

    sequence: int
    t: float
    latitude_deg: float
    longitude_deg: float
    speed_kmh: float
    heading_deg: float


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """Something a device did that analytics should find: overspeed (with end) or geofence_exit."""

    device_id: str
    kind: str
    start_s: float
    end_s: float | None = None
    max_speed_kmh: float | None = None
    limit_kmh: float | None = None
    geofence_id: str | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """A device and its route: a circle (radius, centre) or, when ``radius_m`` is 0, a straight line east."""

    device_id: str
    start_m: tuple[float, float]
    radius_m: float
    cruise_kmh: float
    overspeed: tuple[float, float, float] | None = None
    """(start, end, speed km/h) of its overspeed window."""
    events: tuple[DeviceEvent, ...] = field(default=())

    def speed_kmh(self, t: float) -> float:
        if self.overspeed is not None and self.overspeed[0] <= t < self.overspeed[1]:
            return self.overspeed[2]
        return self.cruise_kmh

    def distance(self, t: float) -> float:
        """Metres driven by time t (speed is piecewise constant)."""
        cruise = self.cruise_kmh * KMH
        if self.overspeed is None:
            return cruise * t
        start, end, fast = self.overspeed
        fast_s = max(0.0, min(t, end) - start)
        return cruise * (t - fast_s) + fast * KMH * fast_s

    def local(self, t: float) -> tuple[float, float, float]:
        """(x east, y north, heading degrees clockwise from north) at time t."""
        s = self.distance(t)
        if self.radius_m <= 0:
            return self.start_m[0] + s, self.start_m[1], 90.0
        # Anticlockwise around the circle whose centre is start_m; angle 0 points east.
        angle = s / self.radius_m
        x = self.start_m[0] + self.radius_m * math.cos(angle)
        y = self.start_m[1] + self.radius_m * math.sin(angle)
        # Direction of travel (-sin, cos) as a compass bearing.
        heading = math.degrees(math.atan2(-math.sin(angle), math.cos(angle))) % 360.0
        return x, y, heading


@dataclass(frozen=True, slots=True)
class Fleet:
    """The devices, the geofence (square, local metres) and how to convert to degrees."""

    config: FleetConfig
    devices: tuple[Device, ...]

    def to_geo(self, x: float, y: float) -> tuple[float, float]:
        lat0, lon0 = self.config.centre
        lat = lat0 + y / METRES_PER_DEGREE
        lon = lon0 + x / (METRES_PER_DEGREE * math.cos(math.radians(lat0)))
        return lat, lon

    def geofence(self) -> list[tuple[float, float]]:
        """The geofence's vertices as (lat, lon), anticlockwise."""
        h = self.config.geofence_half_size_m
        return [self.to_geo(x, y) for x, y in ((-h, -h), (h, -h), (h, h), (-h, h))]

    def readings(self, device: Device) -> list[Reading]:
        """Every fix of a device over the run, one per 1/readings_per_second."""
        period = 1.0 / self.config.readings_per_second
        out = []
        for k in range(int(self.config.duration_s / period)):
            t = k * period
            x, y, heading = device.local(t)
            lat, lon = self.to_geo(x, y)
            out.append(Reading(k + 1, t, lat, lon, device.speed_kmh(t), heading))
        return out

    @property
    def events(self) -> list[DeviceEvent]:
        return [event for device in self.devices for event in device.events]


def build_fleet(config: FleetConfig, prefix: str = "sim-gps") -> Fleet:
    """The devices of a run, deterministic in ``config.seed``."""
    rng = np.random.default_rng([config.seed, 101])
    half = config.geofence_half_size_m
    limit = config.speed_limit_kmh
    devices: list[Device] = []
    looping = config.devices - (1 if config.geofence_exit and config.devices > 0 else 0)
    speeders = min(looping, max(1 if looping >= 2 else 0, round(looping * config.overspeed_share)))
    for i in range(looping):
        device_id = f"{prefix}-{i + 1:03d}"
        radius = float(rng.uniform(200.0, 800.0))
        # The circle stays at least 200 m inside the geofence.
        reach = half - radius - 200.0
        centre = (float(rng.uniform(-reach, reach)), float(rng.uniform(-reach, reach)))
        cruise = float(rng.uniform(0.6, 0.9)) * limit
        overspeed = None
        events: tuple[DeviceEvent, ...] = ()
        if i < speeders:
            start = float(rng.uniform(0.2, 0.5)) * config.duration_s
            end = start + min(15.0, 0.25 * config.duration_s)
            fast = limit + float(rng.uniform(20.0, 30.0))
            overspeed = (start, end, fast)
            events = (DeviceEvent(device_id, "overspeed", start, end, fast, limit),)
        devices.append(Device(device_id, centre, radius, cruise, overspeed, events))
    if config.geofence_exit and config.devices > 0:
        device_id = f"{prefix}-{config.devices:03d}"
        cruise = 0.9 * limit
        v = cruise * KMH
        exit_s = 0.6 * config.duration_s
        x0 = max(-half + 100.0, half - v * exit_s)
        exit_s = (half - x0) / v
        event = DeviceEvent(device_id, "geofence_exit", exit_s, geofence_id=GEOFENCE_ID)
        devices.append(Device(device_id, (x0, 0.0), 0.0, cruise, None, (event,)))
    return Fleet(config, tuple(devices))
