"""Checks of a camera configuration: pure functions returning (field path, why) pairs, empty when valid.

``server.py`` turns a non-empty result into INVALID_ARGUMENT with a google.rpc.BadRequest naming every
bad field; nothing below the server re-checks.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Sequence
from typing import Final

from itsmesh.v1 import common_pb2

Violation = tuple[str, str]

ID_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_NAME_CHARS: Final = 200
MAX_LABEL_CHARS: Final = 63
MIN_RESOLUTION_PX: Final = 16
MAX_RESOLUTION_PX: Final = 8192
MAX_FPS: Final = 120.0
MAX_SPEED_LIMIT_KMH: Final = 300.0
MIN_CALIBRATION_PAIRS: Final = 4
MAX_POLYGON_VERTICES: Final = 64

IMMUTABLE_FIELDS: Final = frozenset({"camera_id", "create_time", "update_time", "config_version", "etag"})
"""Camera fields an update mask may not name (identity and output-only)."""


def validate_camera(camera: common_pb2.Camera, prefix: str = "camera") -> list[Violation]:
    """Every problem of a full camera configuration."""
    out: list[Violation] = []
    if not ID_PATTERN.match(camera.camera_id):
        out.append((f"{prefix}.camera_id", "1-63 characters of [a-z0-9._-], starting with a letter or digit"))
    if not camera.name.strip():
        out.append((f"{prefix}.name", "required"))
    elif len(camera.name) > MAX_NAME_CHARS:
        out.append((f"{prefix}.name", f"at most {MAX_NAME_CHARS} characters"))
    if camera.HasField("location"):
        out.extend(_geo(camera.location, f"{prefix}.location"))
    width, height = camera.resolution.width_px, camera.resolution.height_px
    resolution_ok = True
    for name, value in (("width_px", width), ("height_px", height)):
        if not MIN_RESOLUTION_PX <= value <= MAX_RESOLUTION_PX:
            resolution_ok = False
            out.append(
                (
                    f"{prefix}.resolution.{name}",
                    f"must be between {MIN_RESOLUTION_PX} and {MAX_RESOLUTION_PX}",
                )
            )
    if not (math.isfinite(camera.fps) and 0 < camera.fps <= MAX_FPS):
        out.append((f"{prefix}.fps", f"must be > 0 and at most {MAX_FPS:g}"))
    if not _positive_limit(camera.speed_limit_kmh):
        out.append((f"{prefix}.speed_limit_kmh", f"must be > 0 and at most {MAX_SPEED_LIMIT_KMH:g}"))
    if camera.time_zone:
        try:
            zoneinfo.ZoneInfo(camera.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            out.append((f"{prefix}.time_zone", "not an IANA time zone"))
    size = (float(width), float(height)) if resolution_ok else None
    out.extend(_zones(camera.zones, size, prefix))
    lane_ids, lane_violations = _lanes(camera.lanes, size, prefix)
    out.extend(lane_violations)
    out.extend(_lines(camera.counting_lines, size, lane_ids, prefix))
    if camera.HasField("calibration"):
        out.extend(validate_calibration(camera.calibration, f"{prefix}.calibration"))
    out.extend(_rules(camera.rules, f"{prefix}.rules"))
    for label, label_value in camera.labels.items():
        if not label or len(label) > MAX_LABEL_CHARS:
            out.append((f"{prefix}.labels", f"key {label!r} must be 1-{MAX_LABEL_CHARS} characters"))
        if len(label_value) > MAX_LABEL_CHARS:
            out.append((f"{prefix}.labels[{label}]", f"value at most {MAX_LABEL_CHARS} characters"))
    return out


def validate_calibration(calibration: common_pb2.Calibration, field: str) -> list[Violation]:
    """At least 4 point pairs, no 3 collinear in the image or on the road plane."""
    pairs = calibration.point_pairs
    if len(pairs) < MIN_CALIBRATION_PAIRS:
        return [(f"{field}.point_pairs", f"at least {MIN_CALIBRATION_PAIRS} point pairs required")]
    out: list[Violation] = []
    image = [(p.image_point.x_px, p.image_point.y_px) for p in pairs]
    world = [(p.world_point.x_m, p.world_point.y_m) for p in pairs]
    for name, points in (("image_point", image), ("world_point", world)):
        if not all(math.isfinite(c) for point in points for c in point):
            out.append((f"{field}.point_pairs", f"{name} coordinates must be finite"))
        elif _has_collinear_triple(points):
            out.append((f"{field}.point_pairs", f"three {name}s are collinear"))
    if calibration.HasField("world_origin"):
        out.extend(_geo(calibration.world_origin, f"{field}.world_origin"))
    return out


def validate_polygon(
    polygon: common_pb2.Polygon, size: tuple[float, float] | None, field: str
) -> list[Violation]:
    """3-64 vertices inside the image, non-zero area, edges not crossing each other."""
    points = [(v.x_px, v.y_px) for v in polygon.vertices]
    if not 3 <= len(points) <= MAX_POLYGON_VERTICES:
        return [(f"{field}.vertices", f"3 to {MAX_POLYGON_VERTICES} vertices required")]
    if size is not None and not all(_inside(p, size) for p in points):
        return [(f"{field}.vertices", "every vertex must lie inside the image")]
    if abs(_signed_area(points)) < 1e-9:
        return [(f"{field}.vertices", "the polygon has no area")]
    if _self_intersects(points):
        return [(f"{field}.vertices", "edges cross each other")]
    return []


def _zones(
    zones: Sequence[common_pb2.Zone], size: tuple[float, float] | None, prefix: str
) -> list[Violation]:
    out: list[Violation] = []
    seen: set[str] = set()
    for i, zone in enumerate(zones):
        field = f"{prefix}.zones[{i}]"
        out.extend(_id(zone.zone_id, seen, f"{field}.zone_id"))
        if zone.kind == common_pb2.ZONE_KIND_UNSPECIFIED:
            out.append((f"{field}.kind", "required"))
        out.extend(validate_polygon(zone.area, size, f"{field}.area"))
        if zone.kind == common_pb2.ZONE_KIND_RESTRICTED and not zone.restricted_classes:
            out.append((f"{field}.restricted_classes", "a restricted zone needs at least one class"))
    return out


def _lanes(
    lanes: Sequence[common_pb2.Lane], size: tuple[float, float] | None, prefix: str
) -> tuple[set[str], list[Violation]]:
    out: list[Violation] = []
    seen: set[str] = set()
    for i, lane in enumerate(lanes):
        field = f"{prefix}.lanes[{i}]"
        out.extend(_id(lane.lane_id, seen, f"{field}.lane_id"))
        out.extend(validate_polygon(lane.area, size, f"{field}.area"))
        line = [(p.x_px, p.y_px) for p in lane.centerline]
        if len(line) < 2:
            out.append((f"{field}.centerline", "at least 2 points required"))
        elif size is not None and not all(_inside(p, size) for p in line):
            out.append((f"{field}.centerline", "every point must lie inside the image"))
        if lane.HasField("speed_limit_kmh") and not _positive_limit(lane.speed_limit_kmh):
            out.append((f"{field}.speed_limit_kmh", f"must be > 0 and at most {MAX_SPEED_LIMIT_KMH:g}"))
    return seen, out


def _lines(
    lines: Sequence[common_pb2.CountingLine],
    size: tuple[float, float] | None,
    lane_ids: set[str],
    prefix: str,
) -> list[Violation]:
    out: list[Violation] = []
    seen: set[str] = set()
    for i, line in enumerate(lines):
        field = f"{prefix}.counting_lines[{i}]"
        out.extend(_id(line.line_id, seen, f"{field}.line_id"))
        start = (line.segment.start.x_px, line.segment.start.y_px)
        end = (line.segment.end.x_px, line.segment.end.y_px)
        if not line.HasField("segment") or start == end:
            out.append((f"{field}.segment", "start and end must differ"))
        elif size is not None and not (_inside(start, size) and _inside(end, size)):
            out.append((f"{field}.segment", "both ends must lie inside the image"))
        unknown = [lane for lane in line.lane_ids if lane not in lane_ids]
        if unknown:
            out.append((f"{field}.lane_ids", f"unknown lanes: {', '.join(unknown)}"))
    return out


def _rules(rules: common_pb2.RulesConfig, field: str) -> list[Violation]:
    out: list[Violation] = []
    if rules.speeding.tolerance_kmh < 0 or not math.isfinite(rules.speeding.tolerance_kmh):
        out.append((f"{field}.speeding.tolerance_kmh", "must be >= 0"))
    if rules.speeding.critical_excess_kmh < 0:
        out.append((f"{field}.speeding.critical_excess_kmh", "must be >= 0"))
    if rules.wrong_way.enabled and not rules.wrong_way.min_distance_m > 0:
        out.append((f"{field}.wrong_way.min_distance_m", "must be > 0"))
    if rules.stopped_vehicle.max_speed_kmh < 0:
        out.append((f"{field}.stopped_vehicle.max_speed_kmh", "must be >= 0"))
    congestion = rules.congestion
    if not 0 <= congestion.min_occupancy_ratio <= 1:
        out.append((f"{field}.congestion.min_occupancy_ratio", "must be between 0 and 1"))
    if congestion.enabled and congestion.window.ToSeconds() % 10 != 0:
        out.append((f"{field}.congestion.window", "must be a multiple of 10 s"))
    if rules.anomaly.z_score_threshold < 0:
        out.append((f"{field}.anomaly.z_score_threshold", "must be > 0"))
    return out


def _id(value: str, seen: set[str], field: str) -> list[Violation]:
    if not ID_PATTERN.match(value):
        return [(field, "1-63 characters of [a-z0-9._-]")]
    if value in seen:
        return [(field, f"duplicate id {value!r}")]
    seen.add(value)
    return []


def _geo(point: common_pb2.GeoPoint, field: str) -> list[Violation]:
    out: list[Violation] = []
    if not -90 <= point.latitude_deg <= 90:
        out.append((f"{field}.latitude_deg", "must be between -90 and 90"))
    if not -180 <= point.longitude_deg <= 180:
        out.append((f"{field}.longitude_deg", "must be between -180 and 180"))
    return out


def _positive_limit(value: float) -> bool:
    return math.isfinite(value) and 0 < value <= MAX_SPEED_LIMIT_KMH


def _inside(point: tuple[float, float], size: tuple[float, float]) -> bool:
    x, y = point
    return math.isfinite(x) and math.isfinite(y) and 0 <= x <= size[0] and 0 <= y <= size[1]


def _signed_area(points: Sequence[tuple[float, float]]) -> float:
    return 0.5 * sum(
        x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(points, [*points[1:], points[0]], strict=True)
    )


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _has_collinear_triple(points: Sequence[tuple[float, float]]) -> bool:
    n = len(points)
    scale = max((abs(c) for p in points for c in p), default=1.0) or 1.0
    tolerance = 1e-9 * scale * scale
    return any(
        abs(_cross(points[i], points[j], points[k])) <= tolerance
        for i in range(n)
        for j in range(i + 1, n)
        for k in range(j + 1, n)
    )


def _segments_cross(
    a: tuple[float, float], b: tuple[float, float], c: tuple[float, float], d: tuple[float, float]
) -> bool:
    d1, d2 = _cross(c, d, a), _cross(c, d, b)
    d3, d4 = _cross(a, b, c), _cross(a, b, d)
    return ((d1 > 0) != (d2 > 0)) and ((d3 > 0) != (d4 > 0)) and 0 not in (d1, d2, d3, d4)


def _self_intersects(points: Sequence[tuple[float, float]]) -> bool:
    edge_list = [(i, (i + 1) % len(points)) for i in range(len(points))]
    for i, (a, b) in enumerate(edge_list):
        for c, d in edge_list[i + 1 :]:
            if len({a, b, c, d}) < 4:
                continue  # adjacent edges share a vertex
            if _segments_cross(points[a], points[b], points[c], points[d]):
                return True
    return False
