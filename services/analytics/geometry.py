"""A camera's zones, lanes and counting lines compiled for fast queries (shapely, prepared geometries).

Lanes, zones and lines are drawn in image coordinates; lane directions are also mapped onto the road
plane so that a track's velocity (metres per second) can be compared with them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import Polygon

from services.analytics.camera_config import CameraConfig, LineConfig, Point, ZoneKind
from services.analytics.homography import Homography

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Crossing:
    """Where a movement from p0 to p1 crossed a counting line."""

    fraction: float
    """Position of the crossing between p0 (0) and p1 (1)."""
    u_px: float
    v_px: float
    forward: bool
    """True for a crossing from the line's left-hand side to its right-hand side (see LineConfig)."""


@dataclass(frozen=True, slots=True)
class LaneGeometry:
    """A lane's outline and its legal direction on the road plane."""

    lane_id: str
    polygon: Polygon
    segments: tuple[tuple[float, float, float, float], ...]
    """Centre-line segments on the road plane as (mid x, mid y, unit dx, unit dy)."""
    direction_label: str

    def direction_at(self, x_m: float, y_m: float) -> tuple[float, float] | None:
        """Unit vector of legal travel at the centre-line segment nearest to (x, y)."""
        best: tuple[float, float] | None = None
        best_d = math.inf
        for mx, my, dx, dy in self.segments:
            d = (mx - x_m) ** 2 + (my - y_m) ** 2
            if d < best_d:
                best_d, best = d, (dx, dy)
        return best


@dataclass(frozen=True, slots=True)
class LineGeometry:
    """A counting line in the image and on the road plane."""

    line_id: str
    a: Point
    b: Point
    lane_ids: frozenset[str]
    world_a: Point
    world_b: Point

    def crosses(self, u0: float, v0: float, u1: float, v1: float) -> Crossing | None:
        """The crossing of the movement (u0, v0) → (u1, v1) with this segment, if any."""
        ax, ay = self.a
        dx, dy = self.b[0] - ax, self.b[1] - ay
        s0 = dx * (v0 - ay) - dy * (u0 - ax)
        s1 = dx * (v1 - ay) - dy * (u1 - ax)
        # Image y points down, so a negative cross product is the left-hand side of start → end.
        if (s0 >= 0.0) == (s1 >= 0.0):
            return None
        f = s0 / (s0 - s1)
        pu, pv = u0 + f * (u1 - u0), v0 + f * (v1 - v0)
        along = ((pu - ax) * dx + (pv - ay) * dy) / (dx * dx + dy * dy)
        if not 0.0 <= along <= 1.0:
            return None
        return Crossing(f, pu, pv, forward=s0 < 0.0)

    def distance_m(self, x: FloatArray, y: FloatArray) -> FloatArray:
        """Distance on the road plane from points to the line segment."""
        ax, ay = self.world_a
        dx, dy = self.world_b[0] - ax, self.world_b[1] - ay
        length2 = dx * dx + dy * dy or 1.0
        t = np.clip(((x - ax) * dx + (y - ay) * dy) / length2, 0.0, 1.0)
        result: FloatArray = np.hypot(x - (ax + t * dx), y - (ay + t * dy))
        return result


@dataclass(frozen=True, slots=True)
class ZoneGeometry:
    """A zone's prepared outline."""

    zone_id: str
    kind: ZoneKind
    polygon: Polygon
    name: str
    restricted_classes: frozenset[str]


class SceneGeometry:
    """Lanes, lines and zones of one camera, ready for point queries."""

    def __init__(self, config: CameraConfig, homography: Homography) -> None:
        lanes: list[LaneGeometry] = []
        for lane in config.lanes:
            poly = Polygon(lane.vertices)
            shapely.prepare(poly)
            world = [homography.to_world(*p) for p in lane.centerline]
            segments = []
            for (x0, y0), (x1, y1) in itertools.pairwise(world):
                length = math.hypot(x1 - x0, y1 - y0)
                if length > 0:
                    segments.append(((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / length, (y1 - y0) / length))
            lanes.append(LaneGeometry(lane.lane_id, poly, tuple(segments), lane.direction_label))
        self.lanes: tuple[LaneGeometry, ...] = tuple(lanes)
        self.lines: tuple[LineGeometry, ...] = tuple(_line(line, homography) for line in config.lines)
        zones: list[ZoneGeometry] = []
        for z in config.zones:
            poly = Polygon(z.vertices)
            shapely.prepare(poly)
            zones.append(ZoneGeometry(z.zone_id, z.kind, poly, z.name, z.restricted_classes))
        self.zones: tuple[ZoneGeometry, ...] = tuple(zones)
        self._lane_by_id = {lane.lane_id: lane for lane in self.lanes}

    def lane(self, lane_id: str) -> LaneGeometry | None:
        """The lane with that id."""
        return self._lane_by_id.get(lane_id)

    def lanes_of(self, u: FloatArray, v: FloatArray) -> list[str]:
        """The lane of each image point ("" outside every lane; the first listed lane wins overlaps)."""
        result = [""] * len(u)
        if not len(u):
            return result
        for lane in reversed(self.lanes):
            inside = shapely.contains_xy(lane.polygon, u, v)
            for i in np.flatnonzero(inside).tolist():
                result[i] = lane.lane_id
        return result

    def lane_at(self, u: float, v: float) -> str:
        """The lane of one image point ("" outside every lane)."""
        for lane in self.lanes:
            if shapely.contains_xy(lane.polygon, u, v):
                return lane.lane_id
        return ""

    def zones_of_kind(self, kind: ZoneKind) -> tuple[ZoneGeometry, ...]:
        """Zones of one kind."""
        return tuple(z for z in self.zones if z.kind == kind)

    @staticmethod
    def inside(zone: ZoneGeometry, u: float, v: float) -> bool:
        """Whether an image point lies in a zone."""
        return bool(shapely.contains_xy(zone.polygon, u, v))

    @staticmethod
    def inside_many(zone: ZoneGeometry, u: FloatArray, v: FloatArray) -> BoolArray:
        """Whether each image point lies in a zone."""
        result: BoolArray = np.asarray(shapely.contains_xy(zone.polygon, u, v), dtype=np.bool_)
        return result


def _line(line: LineConfig, homography: Homography) -> LineGeometry:
    return LineGeometry(
        line.line_id,
        line.start,
        line.end,
        frozenset(line.lane_ids),
        homography.to_world(*line.start),
        homography.to_world(*line.end),
    )
