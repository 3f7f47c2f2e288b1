"""Synthetic camera scenes with ground truth for testing and benchmarking the pipeline (pure, seeded).

A pinhole camera 8 m above a straight three-lane road looks along it; vehicles are boxes whose image
boxes are the hull of their projected 3D corners, so the bottom edge is the vehicle's end nearest the
camera, as with a real detector. The scene adds the nuisances a pipeline must survive: box jitter,
dropped, irregularly timed, duplicated and out-of-order frames, a lane change and an occlusion.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from services.analytics.camera_config import (
    CalibrationPair,
    CameraConfig,
    LaneConfig,
    LineConfig,
    RulesConfig,
    ZoneConfig,
)
from services.analytics.model import Box, DetectionFrame

LANE_WIDTH_M = 3.5
LANES = ("l1", "l2", "l3")
"""l1 and l2 carry traffic away from the camera (+y), l3 towards it (-y)."""
LINE_Y_M = 50.0
SCENE_START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
_SIZES = {
    "car": (4.5, 1.8, 1.5),
    "van": (5.5, 2.0, 2.2),
    "truck": (12.0, 2.5, 3.6),
    "bus": (12.0, 2.5, 3.2),
    "pedestrian": (0.5, 0.6, 1.7),
}


@dataclass(frozen=True, slots=True)
class PinholeCamera:
    """A level camera at height ``height_m`` above (0, 0), pitched down, looking along +y."""

    focal_px: float = 1000.0
    cx: float = 640.0
    cy: float = 360.0
    height_m: float = 8.0
    pitch_deg: float = 12.0
    width_px: int = 1280
    height_px: int = 720

    def project(self, x: float, y: float, z: float = 0.0) -> tuple[float, float] | None:
        """Image point of a world point (None when behind the camera)."""
        s, c = math.sin(math.radians(self.pitch_deg)), math.cos(math.radians(self.pitch_deg))
        dz = z - self.height_m
        zc = y * c - dz * s
        if zc <= 0.5:
            return None
        yc = -y * s - dz * c
        return (self.focal_px * x / zc + self.cx, self.focal_px * yc / zc + self.cy)


def lane_centre_x(lane: str) -> float:
    """Lateral centre of a lane in metres."""
    return (LANES.index(lane) - 1) * LANE_WIDTH_M


def scene_config(camera: PinholeCamera | None = None, rules: RulesConfig | None = None) -> CameraConfig:
    """The camera configuration of the synthetic road: 3 lanes, one counting line across them."""
    cam = camera or PinholeCamera()

    def img(x: float, y: float) -> tuple[float, float]:
        p = cam.project(x, y)
        assert p is not None
        return p

    lanes = []
    for lane in LANES:
        x0 = lane_centre_x(lane) - LANE_WIDTH_M / 2
        x1 = x0 + LANE_WIDTH_M
        near, far = 8.0, 400.0
        forward = lane != "l3"
        centre = [img(lane_centre_x(lane), near), img(lane_centre_x(lane), far)]
        lanes.append(
            LaneConfig(
                lane_id=lane,
                vertices=(img(x0, near), img(x1, near), img(x1, far), img(x0, far)),
                centerline=tuple(centre if forward else centre[::-1]),
                direction_label="northbound" if forward else "southbound",
            )
        )
    half_road = LANE_WIDTH_M * 1.5 + 0.5
    calibration = tuple(
        CalibrationPair(image=img(x, y), world=(x, y))
        for x, y in ((-8.0, 15.0), (8.0, 15.0), (-8.0, 120.0), (8.0, 120.0), (0.0, 40.0), (3.0, 70.0))
    )
    return CameraConfig(
        camera_id="cam-synthetic",
        speed_limit_kmh=100.0,
        calibration=calibration,
        lanes=tuple(lanes),
        lines=(LineConfig("line-1", img(-half_road, LINE_Y_M), img(half_road, LINE_Y_M)),),
        zones=(
            ZoneConfig(
                "shoulder",
                "restricted",
                (img(6.0, 20.0), img(12.0, 20.0), img(12.0, 80.0), img(6.0, 80.0)),
                name="hard shoulder",
                restricted_classes=frozenset({"pedestrian"}),
            ),
        ),
        rules=rules or RulesConfig(),
    )


@dataclass(slots=True)
class Vehicle:
    """A simulated vehicle with constant longitudinal speed (and an optional lane change)."""

    vehicle_id: int
    lane: str
    speed_kmh: float
    start_s: float
    object_class: str = "car"
    start_y_m: float | None = None
    lane_change_to: str | None = None
    lane_change_y_m: tuple[float, float] = (20.0, 35.0)
    occluded_s: tuple[float, float] | None = None
    wrong_way: bool = False
    x_m: float | None = None
    """Fixed lateral position overriding the lane centre (for example on the shoulder)."""

    @property
    def heading(self) -> float:
        """+1 travelling away from the camera, -1 towards it."""
        forward = self.lane != "l3"
        return (1.0 if forward else -1.0) * (-1.0 if self.wrong_way else 1.0)

    def y_at(self, t: float) -> float:
        """Longitudinal position of the vehicle's centre."""
        y0 = self.start_y_m if self.start_y_m is not None else (5.0 if self.heading > 0 else 170.0)
        return y0 + self.heading * self.speed_kmh / 3.6 * (t - self.start_s)

    def x_at(self, y: float) -> float:
        """Lateral position (lane change is a smooth step between two longitudinal positions)."""
        x0 = lane_centre_x(self.lane) if self.x_m is None else self.x_m
        if self.lane_change_to is None:
            return x0
        x1 = lane_centre_x(self.lane_change_to)
        a, b = self.lane_change_y_m
        f = min(1.0, max(0.0, (y - a) / (b - a)))
        f = f * f * (3 - 2 * f)
        return x0 + (x1 - x0) * f

    def crossing_time(self) -> float:
        """When the vehicle's measured point (its end nearest the camera) crosses the counting line
        (infinity for a vehicle that does not move)."""
        if self.speed_kmh <= 0.0:
            return math.inf
        length = _SIZES.get(self.object_class, _SIZES["car"])[0]
        # the nearest end is the rear (-L/2) for vehicles going away and the front for those coming
        target = LINE_Y_M + length / 2.0
        y0 = self.y_at(self.start_s)
        return self.start_s + (target - y0) / (self.heading * self.speed_kmh / 3.6)


@dataclass(frozen=True, slots=True)
class Truth:
    """Ground truth of one vehicle's crossing."""

    vehicle_id: int
    lane: str
    direction: str
    speed_kmh: float
    crossing_s: float
    object_class: str


@dataclass(slots=True)
class Scene:
    """Frames in delivery order and the crossings that should be found."""

    config: CameraConfig
    frames: list[DetectionFrame]
    truth: list[Truth]
    vehicles: list[Vehicle] = field(default_factory=list)
    duration_s: float = 0.0
    box_vehicles: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """Per frame sequence, the vehicle id behind each box (in box order)."""


def _box(cam: PinholeCamera, v: Vehicle, t: float) -> tuple[float, float, float, float] | None:
    length, width, height = _SIZES.get(v.object_class, _SIZES["car"])
    yc = v.y_at(t)
    xc = v.x_at(yc)
    pts = []
    for dx in (-width / 2, width / 2):
        for dy in (-length / 2, length / 2):
            for z in (0.0, height):
                p = cam.project(xc + dx, yc + dy, z)
                if p is None:
                    return None
                pts.append(p)
    us = [p[0] for p in pts]
    vs = [p[1] for p in pts]
    x1, x2, y1, y2 = min(us), max(us), min(vs), max(vs)
    if x2 < 0 or x1 > cam.width_px or y2 < 0 or y1 > cam.height_px:
        return None
    if y2 > cam.height_px or x1 < 0 or x2 > cam.width_px:
        return None  # cut by the image border: a real detector would report a truncated box
    if y2 - y1 < 4.0:
        return None  # too small to detect
    return x1, y1, x2, y2


def standard_vehicles(rng: random.Random, per_lane: int = 8, gap_s: float = 4.0) -> list[Vehicle]:
    """Traffic on all three lanes at 20 to 120 km/h, with one lane change and one occlusion at the line."""
    vehicles: list[Vehicle] = []
    bands = {"l1": (120.0, 70.0), "l2": (95.0, 40.0), "l3": (80.0, 20.0)}
    vid = 0
    for lane in LANES:
        hi, lo = bands[lane]
        for k in range(per_lane):
            speed = hi - (hi - lo) * k / max(1, per_lane - 1) + rng.uniform(-2.0, 2.0)
            cls = "truck" if k % 5 == 3 else ("van" if k % 4 == 1 else "car")
            start = k * gap_s + rng.uniform(0.0, 1.0) + LANES.index(lane) * 0.7
            vehicles.append(Vehicle(vid, lane, speed, start, cls))
            vid += 1
    # A lane change from l2 into l1, finished well before the counting line.
    changer = next(v for v in vehicles if v.lane == "l2" and v.object_class == "car" and v.vehicle_id > 9)
    changer.lane_change_to = "l1"
    # Make sure it cannot run into l1 traffic: it leaves after everything in l1 has gone.
    changer.start_s = max(v.start_s for v in vehicles if v.lane == "l1") + 3.0
    # A 0.5 s occlusion while crossing the line.
    occluded = next(v for v in vehicles if v.lane == "l3" and v.vehicle_id % 2 == 0 and v.speed_kmh > 50)
    tc = occluded.crossing_time()
    occluded.occluded_s = (tc - 0.25, tc + 0.25)
    return vehicles


def build_scene(
    seed: int = 1,
    *,
    vehicles: list[Vehicle] | None = None,
    camera: PinholeCamera | None = None,
    config: CameraConfig | None = None,
    fps: float = 25.0,
    jitter_px: float = 1.0,
    drop_rate: float = 0.10,
    time_jitter_s: float = 0.006,
    duplicate_rate: float = 0.01,
    swap_rate: float = 0.01,
    duration_s: float | None = None,
) -> Scene:
    """Render a scene: frames at ``fps`` with Gaussian jitter of each box edge (clipped to ±2 px), a share
    of dropped frames, irregular capture times, and some duplicated and swapped (out-of-order) frames."""
    rng = random.Random(seed)  # noqa: S311  # a seeded simulation, not a secret
    cam = camera or PinholeCamera()
    cars = vehicles if vehicles is not None else standard_vehicles(rng)
    cfg = config or scene_config(cam)
    end = duration_s or max(v.start_s for v in cars) + 35.0
    frames: list[DetectionFrame] = []
    owners: dict[int, tuple[int, ...]] = {}
    n = int(end * fps)
    for k in range(n):
        if rng.random() < drop_rate:
            continue
        t = k / fps + max(-0.4 / fps, min(0.4 / fps, rng.gauss(0.0, time_jitter_s)))
        boxes: list[tuple[Box, int]] = []
        for v in cars:
            if t < v.start_s or (v.occluded_s and v.occluded_s[0] <= t <= v.occluded_s[1]):
                continue
            b = _box(cam, v, t)
            if b is None:
                continue
            j = [max(-2.0, min(2.0, rng.gauss(0.0, jitter_px))) for _ in range(4)]
            box = Box(b[0] + j[0], b[1] + j[1], b[2] + j[2], b[3] + j[3], v.object_class, 0.9)
            boxes.append((box, v.vehicle_id))
        rng.shuffle(boxes)
        owners[k + 1] = tuple(vid for _, vid in boxes)
        frames.append(
            DetectionFrame(
                camera_id=cfg.camera_id,
                sequence=k + 1,
                capture_time=SCENE_START + timedelta(seconds=t),
                boxes=tuple(box for box, _ in boxes),
                event_id=f"e{k + 1}",
            )
        )
    delivered: list[DetectionFrame] = []
    for f in frames:
        delivered.append(f)
        if rng.random() < duplicate_rate:
            delivered.append(f)
    for i in range(1, len(delivered)):
        if rng.random() < swap_rate and delivered[i].sequence != delivered[i - 1].sequence:
            delivered[i - 1], delivered[i] = delivered[i], delivered[i - 1]
    truth = []
    for v in cars:
        tc = v.crossing_time()
        if not 0.0 < tc < end - 1.0:
            continue
        y_line = LINE_Y_M
        x = v.x_at(y_line)
        lane = min(LANES, key=lambda name: abs(lane_centre_x(name) - x))
        direction = "reverse" if v.heading > 0 else "forward"
        truth.append(Truth(v.vehicle_id, lane, direction, v.speed_kmh, tc, v.object_class))
    return Scene(cfg, delivered, truth, cars, end, owners)
