"""Vehicles on a straight road: who drives where, how fast, and where each one is at any scene time.

Pure and deterministic: ``build_scene(config)`` draws everything from ``config.seed`` with numpy's
generator, so the same config always gives the same vehicles. Scene time ``t`` is seconds from the start
of the run; the driver maps it to wall-clock time.

A vehicle's position is its *reference point*: the centre of the edge of its footprint nearest the
camera, on the road plane. That is the point whose image is the bottom-centre of its bounding box, so
analytics (box bottom-centre → homography → metres) measures exactly this point. The body occupies
``[y, y + length]`` along the road whichever way the vehicle drives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from itsmesh.v1 import common_pb2

Floats = npt.NDArray[np.float64]

KMH: Final = 1 / 3.6
"""km/h → m/s."""

APPROACHING: Final = -1
"""Direction of travel towards the camera (decreasing y)."""
RECEDING: Final = 1
"""Direction of travel away from the camera (increasing y)."""


@dataclass(frozen=True, slots=True)
class VehicleClass:
    """Dimensions (metres) and proto class of a kind of vehicle."""

    name: str
    object_class: common_pb2.ObjectClass.ValueType
    length_m: float
    width_m: float
    height_m: float


CLASSES: Final = {
    "car": VehicleClass("car", common_pb2.OBJECT_CLASS_CAR, 4.5, 1.8, 1.5),
    "van": VehicleClass("van", common_pb2.OBJECT_CLASS_VAN, 5.5, 2.0, 2.2),
    "truck": VehicleClass("truck", common_pb2.OBJECT_CLASS_TRUCK, 12.0, 2.5, 3.6),
    "bus": VehicleClass("bus", common_pb2.OBJECT_CLASS_BUS, 12.0, 2.55, 3.2),
    "motorcycle": VehicleClass("motorcycle", common_pb2.OBJECT_CLASS_MOTORCYCLE, 2.2, 0.8, 1.4),
}
_CLASS_WEIGHTS: Final = {"car": 0.7, "van": 0.12, "truck": 0.1, "bus": 0.03, "motorcycle": 0.05}


@dataclass(frozen=True, slots=True)
class RoadConfig:
    """The road: lanes (numbered from x = 0), their width, their legal direction, the visible stretch."""

    lanes: int = 3
    lane_width_m: float = 3.5
    two_way: bool = False
    """False: every lane approaches the camera. True: the last lane recedes from it."""
    spawn_far_m: float = 220.0
    """Vehicles enter and leave at y = 0 (under the camera) and y = spawn_far_m."""
    counting_line_y_m: float = 50.0
    speed_limit_kmh: float = 100.0

    def lane_direction(self, lane: int) -> int:
        """Legal direction of travel of a lane (APPROACHING or RECEDING)."""
        return RECEDING if self.two_way and lane == self.lanes - 1 else APPROACHING

    def lane_centre_x(self, lane: int) -> float:
        """x of a lane's centre line."""
        return (lane + 0.5) * self.lane_width_m

    @property
    def width_m(self) -> float:
        """Width of all lanes together."""
        return self.lanes * self.lane_width_m

    def lane_at(self, x: float) -> int:
        """The lane a lateral position falls in (clamped to the road)."""
        return min(self.lanes - 1, max(0, int(x // self.lane_width_m)))


@dataclass(frozen=True, slots=True)
class SceneConfig:
    """What one camera's scene contains. Rates are per minute; the special vehicles are one each."""

    seed: int = 1
    duration_s: float = 60.0
    road: RoadConfig = field(default_factory=RoadConfig)
    vehicles_per_minute: float = 40.0
    min_speed_kmh: float = 20.0
    max_legal_speed_kmh: float = 95.0
    speeding_share: float = 0.1
    """Share of ordinary vehicles that drive 110-120 km/h (limit 100)."""
    wrong_way: bool = True
    stopping: bool = True
    lane_change: bool = True
    occlusion: bool = True
    occlusion_s: float = 0.5
    stop_duration_s: float = 20.0
    min_gap_m: float = 8.0
    """Bumper-to-bumper gap kept between vehicles in the same lane (ordinary ones never overtake)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """Constant acceleration from t0: distance s(t) = s0 + v0 (t - t0) + a (t - t0)^2 / 2, up to t1."""

    t0: float
    t1: float
    s0: float
    v0: float
    a: float = 0.0

    def distance(self, t: float) -> float:
        dt = t - self.t0
        return self.s0 + self.v0 * dt + 0.5 * self.a * dt * dt

    def speed(self, t: float) -> float:
        return self.v0 + self.a * (t - self.t0)


@dataclass(frozen=True, slots=True)
class LaneChange:
    """A smooth move from one lane to another over ``duration_s`` starting at ``start_s``."""

    from_lane: int
    to_lane: int
    start_s: float
    duration_s: float = 3.0


@dataclass(frozen=True, slots=True)
class Vehicle:
    """One vehicle: identity, class, where it enters, which way it drives, and how it moves."""

    vehicle_id: str
    kind: VehicleClass
    lane: int
    """The lane it enters in."""
    direction: int
    """APPROACHING or RECEDING."""
    entry_y_m: float
    segments: tuple[Segment, ...]
    lane_change: LaneChange | None = None
    occluded: tuple[float, float] | None = None
    """Scene-time interval [start, end) during which it is hidden (no detection, not drawn)."""
    role: str = "normal"
    """normal, speeding, wrong_way, stopping, lane_change or occlusion."""

    @property
    def entry_s(self) -> float:
        return self.segments[0].t0

    @property
    def exit_s(self) -> float:
        return self.segments[-1].t1

    def _segment(self, t: float) -> Segment:
        for segment in self.segments:
            if t < segment.t1:
                return segment
        return self.segments[-1]

    def distance(self, t: float) -> float:
        """Metres travelled since entry."""
        return self._segment(t).distance(t)

    def speed_ms(self, t: float) -> float:
        """True speed along the road in m/s (never negative)."""
        return max(0.0, self._segment(t).speed(t))

    def speed_kmh(self, t: float) -> float:
        return self.speed_ms(t) * 3.6

    def present(self, t: float) -> bool:
        """On the simulated stretch at time t."""
        return self.entry_s <= t < self.exit_s

    def visible(self, t: float) -> bool:
        """Present and not occluded."""
        if not self.present(t):
            return False
        return self.occluded is None or not self.occluded[0] <= t < self.occluded[1]

    def position(self, t: float, road: RoadConfig) -> tuple[float, float]:
        """Reference point (x, y) in metres at time t."""
        y = self.entry_y_m + self.direction * self.distance(t)
        return self.lateral_x(t, road), y

    def lateral_x(self, t: float, road: RoadConfig) -> float:
        change = self.lane_change
        if change is None:
            return road.lane_centre_x(self.lane)
        start, end = road.lane_centre_x(change.from_lane), road.lane_centre_x(change.to_lane)
        progress = min(1.0, max(0.0, (t - change.start_s) / change.duration_s))
        smooth = 0.5 - 0.5 * math.cos(math.pi * progress)
        return start + (end - start) * smooth

    def track(self, times: npt.NDArray[np.float64], road: RoadConfig) -> tuple[Floats, Floats]:
        """``position`` at many times at once: (x, y) arrays."""
        distance = np.empty_like(times)
        for i, segment in enumerate(self.segments):
            lower = -np.inf if i == 0 else segment.t0
            upper = np.inf if i == len(self.segments) - 1 else segment.t1
            inside = (times >= lower) & (times < upper)
            dt = times[inside] - segment.t0
            distance[inside] = segment.s0 + segment.v0 * dt + 0.5 * segment.a * dt * dt
        y = self.entry_y_m + self.direction * distance
        change = self.lane_change
        if change is None:
            return np.full_like(times, road.lane_centre_x(self.lane)), y
        start, end = road.lane_centre_x(change.from_lane), road.lane_centre_x(change.to_lane)
        progress = np.clip((times - change.start_s) / change.duration_s, 0.0, 1.0)
        return start + (end - start) * (0.5 - 0.5 * np.cos(np.pi * progress)), y

    def crossing_time(self, y_line: float) -> float | None:
        """Scene time its reference point crosses y = y_line (first time), or None if it never does."""
        start_y = self.entry_y_m
        travelled = abs(y_line - start_y)
        if (y_line - start_y) * self.direction < 0:
            return None
        for segment in self.segments:
            end = segment.distance(segment.t1)
            if segment.s0 <= travelled <= end:
                if abs(segment.a) < 1e-12:
                    if segment.v0 <= 0:
                        return None
                    return segment.t0 + (travelled - segment.s0) / segment.v0
                # Solve s0 + v0 dt + a dt^2 / 2 = travelled for the smallest non-negative dt.
                disc = segment.v0 * segment.v0 + 2 * segment.a * (travelled - segment.s0)
                dt = (-segment.v0 + math.sqrt(max(0.0, disc))) / segment.a
                return segment.t0 + dt
        return None

    @property
    def legal(self) -> bool:
        """False for the wrong-way vehicle."""
        return self.role != "wrong_way"


Build = Callable[[float], Vehicle]
"""Makes a vehicle entering at the given scene time (everything else fixed)."""


@dataclass(frozen=True, slots=True)
class Scene:
    """A camera's vehicles, ordered by entry time."""

    config: SceneConfig
    vehicles: tuple[Vehicle, ...]

    @property
    def road(self) -> RoadConfig:
        return self.config.road

    def present(self, t: float) -> list[Vehicle]:
        return [v for v in self.vehicles if v.present(t)]


def _constant(entry_s: float, speed_kmh: float, distance_m: float) -> tuple[Segment, ...]:
    v = speed_kmh * KMH
    return (Segment(entry_s, entry_s + distance_m / v, 0.0, v),)


def _stopping(
    entry_s: float, speed_kmh: float, stop_at_m: float, stop_s: float, distance_m: float
) -> tuple[Segment, ...]:
    """Cruise, brake at 3 m/s^2 to a standstill at ``stop_at_m``, wait, accelerate at 2 m/s^2 and leave."""
    v = speed_kmh * KMH
    brake, accel = 3.0, 2.0
    brake_m = v * v / (2 * brake)
    t_brake = entry_s + (stop_at_m - brake_m) / v
    t_stop = t_brake + v / brake
    t_go = t_stop + stop_s
    t_cruise = t_go + v / accel
    after_accel_m = stop_at_m + v * v / (2 * accel)
    t_exit = t_cruise + (distance_m - after_accel_m) / v
    return (
        Segment(entry_s, t_brake, 0.0, v),
        Segment(t_brake, t_stop, stop_at_m - brake_m, v, -brake),
        Segment(t_stop, t_go, stop_at_m, 0.0),
        Segment(t_go, t_cruise, stop_at_m, 0.0, accel),
        Segment(t_cruise, t_exit, after_accel_m, v),
    )


_STEP_S: Final = 0.1
"""Time step of the planner's overlap check."""
_BUCKET_STEPS: Final = 100


@dataclass(frozen=True, slots=True)
class _Track:
    """A vehicle's positions on the planner's time grid, from grid index ``first``."""

    vehicle: Vehicle
    first: int
    x: Floats
    y: Floats

    @property
    def end(self) -> int:
        """One past its last grid index."""
        return self.first + len(self.x)

    @classmethod
    def of(cls, vehicle: Vehicle, road: RoadConfig) -> _Track:
        first = math.ceil(vehicle.entry_s / _STEP_S)
        last = math.floor(vehicle.exit_s / _STEP_S)
        x, y = vehicle.track(np.arange(first, max(first, last), dtype=np.float64) * _STEP_S, road)
        return cls(vehicle, first, x, y)


class _Planner:
    """Adds vehicles one by one, delaying each until it keeps its distance from every other vehicle."""

    def __init__(self, config: SceneConfig) -> None:
        self.config = config
        self.road = config.road
        self.placed: list[Vehicle] = []
        # Tracks by 10 s bucket of the time grid, so a candidate meets only the vehicles around its time.
        self._buckets: dict[int, list[_Track]] = {}

    def _nearby(self, track: _Track) -> list[_Track]:
        found: dict[int, _Track] = {}
        for bucket in range(track.first // _BUCKET_STEPS, track.end // _BUCKET_STEPS + 1):
            for other in self._buckets.get(bucket, ()):
                found[id(other)] = other
        return list(found.values())

    def conflicts(self, track: _Track) -> bool:
        """Whether the vehicle comes closer than the minimum gap to another one in the same lane."""
        candidate = track.vehicle
        for other in self._nearby(track):
            start = max(track.first, other.first)
            end = min(track.end, other.end)
            if start >= end:
                continue
            a = slice(start - track.first, end - track.first)
            b = slice(start - other.first, end - other.first)
            same_lane = np.abs(track.x[a] - other.x[b]) < self.road.lane_width_m * 0.9
            # Bodies occupy [y, y + length]; keep them at least min_gap apart.
            gap = np.maximum(
                other.y[b] - (track.y[a] + candidate.kind.length_m),
                track.y[a] - (other.y[b] + other.vehicle.kind.length_m),
            )
            if bool(np.any(same_lane & (gap < self.config.min_gap_m))):
                return True
        return False

    def place(self, make: Build, earliest_s: float, latest_s: float) -> Vehicle | None:
        """The first vehicle ``make(entry_s)`` without conflicts, trying entry times every 0.5 s."""
        for entry in np.arange(earliest_s, latest_s, 0.5):
            candidate = make(float(entry))
            track = _Track.of(candidate, self.road)
            if not self.conflicts(track):
                self.placed.append(candidate)
                for bucket in range(track.first // _BUCKET_STEPS, track.end // _BUCKET_STEPS + 1):
                    self._buckets.setdefault(bucket, []).append(track)
                return candidate
        return None


def _builder(
    vehicle_id: str,
    kind: VehicleClass,
    lane: int,
    direction: int,
    entry_y_m: float,
    role: str,
    motion: Callable[[float], tuple[Segment, ...]],
    *,
    lane_change: Callable[[float], LaneChange] | None = None,
    occluded: Callable[[float], tuple[float, float]] | None = None,
) -> Build:
    """A ``Build`` whose motion, lane change and occlusion follow from the entry time."""

    def build(entry_s: float) -> Vehicle:
        return Vehicle(
            vehicle_id,
            kind,
            lane,
            direction,
            entry_y_m,
            motion(entry_s),
            lane_change=lane_change(entry_s) if lane_change else None,
            occluded=occluded(entry_s) if occluded else None,
            role=role,
        )

    return build


def build_scene(config: SceneConfig, camera_key: str = "cam") -> Scene:
    """Every vehicle of one camera's scene, deterministic in ``config.seed`` and ``camera_key``."""
    rng = np.random.default_rng([config.seed, *camera_key.encode()])
    road = config.road
    planner = _Planner(config)
    span = road.spawn_far_m
    count = 0

    def new_id(role: str) -> str:
        nonlocal count
        count += 1
        return f"{camera_key}-v{count:04d}" + ("" if role == "normal" else f"-{role}")

    def entry_y(direction: int) -> float:
        return span if direction == APPROACHING else 0.0

    def pick_class() -> VehicleClass:
        names = list(_CLASS_WEIGHTS)
        weights = np.array(list(_CLASS_WEIGHTS.values()))
        return CLASSES[str(rng.choice(names, p=weights / weights.sum()))]

    def lane_speed(lane: int) -> float:
        # Slower traffic keeps to the outer lane: each lane draws from its own band of the legal range.
        low, high = config.min_speed_kmh, config.max_legal_speed_kmh
        band = (high - low) / road.lanes
        return float(rng.uniform(low + lane * band, low + (lane + 1) * band))

    def simple(lane: int, kind: VehicleClass, speed_kmh: float, role: str) -> Build:
        direction = road.lane_direction(lane)
        return _builder(
            new_id(role),
            kind,
            lane,
            direction,
            entry_y(direction),
            role,
            lambda entry_s: _constant(entry_s, speed_kmh, span),
        )

    specials: list[tuple[float, Build]] = []
    duration = config.duration_s
    car = CLASSES["car"]
    if config.stopping:
        # Stops 25 m past the counting line (in its direction of travel), in view, in the outer lane.
        direction = road.lane_direction(0)
        stop_at = abs(road.counting_line_y_m + 25.0 * direction - entry_y(direction))
        specials.append(
            (
                0.1 * duration,
                _builder(
                    new_id("stopping"),
                    car,
                    0,
                    direction,
                    entry_y(direction),
                    "stopping",
                    lambda entry_s: _stopping(entry_s, 50.0, stop_at, config.stop_duration_s, span),
                ),
            )
        )
    if config.lane_change:
        to_lane = 2 if road.lane_direction(2) == road.lane_direction(1) else 0
        direction = road.lane_direction(1)
        specials.append(
            (
                0.25 * duration,
                _builder(
                    new_id("lane_change"),
                    car,
                    1,
                    direction,
                    entry_y(direction),
                    "lane_change",
                    lambda entry_s: _constant(entry_s, 70.0, span),
                    # Starts 40 m after entry and takes 3 s: over long before the counting line.
                    lane_change=lambda entry_s: LaneChange(1, to_lane, entry_s + 40.0 / (70.0 * KMH)),
                ),
            )
        )
    if config.occlusion:
        direction = road.lane_direction(1)
        to_line_s = abs(road.counting_line_y_m - entry_y(direction)) / (80.0 * KMH)
        hidden = config.occlusion_s
        specials.append(
            (
                0.4 * duration,
                _builder(
                    new_id("occlusion"),
                    car,
                    1,
                    direction,
                    entry_y(direction),
                    "occlusion",
                    lambda entry_s: _constant(entry_s, 80.0, span),
                    # Hidden while it crosses the counting line.
                    occluded=lambda entry_s: (
                        entry_s + to_line_s - 0.4 * hidden,
                        entry_s + to_line_s + 0.6 * hidden,
                    ),
                ),
            )
        )
    if config.wrong_way:
        lane = road.lanes - 1 if not road.two_way else 0
        against = -road.lane_direction(lane)
        specials.append(
            (
                0.55 * duration,
                _builder(
                    new_id("wrong_way"),
                    car,
                    lane,
                    against,
                    entry_y(against),
                    "wrong_way",
                    lambda entry_s: _constant(entry_s, 60.0, span),
                ),
            )
        )
    for earliest, build in specials:
        planner.place(build, earliest, duration)

    # Ordinary traffic: Poisson arrivals, each lane its own speed band; some speeders in the fast lanes.
    rate = config.vehicles_per_minute / 60.0
    t = float(rng.exponential(1 / rate)) if rate > 0 else duration
    while t < duration:
        lane = int(rng.integers(0, road.lanes))
        kind = pick_class()
        if kind.name in ("truck", "bus"):
            lane = 0  # heavy vehicles keep right
        speeding = bool(rng.random() < config.speeding_share) and kind.name not in ("truck", "bus")
        if speeding:
            lane = road.lanes - 1 if road.lane_direction(road.lanes - 1) == APPROACHING else 1
            speed = float(rng.uniform(110.0, 120.0))
        else:
            speed = lane_speed(lane)
        planner.place(simple(lane, kind, speed, "speeding" if speeding else "normal"), t, t + 20.0)
        t += float(rng.exponential(1 / rate))
    vehicles = tuple(sorted(planner.placed, key=lambda v: (v.entry_s, v.vehicle_id)))
    return Scene(config, vehicles)
