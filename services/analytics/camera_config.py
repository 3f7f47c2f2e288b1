"""A camera's analytics configuration (zones, lanes, counting lines, calibration, rules) as plain values,
and its translation from the registry's ``itsmesh.v1.Camera`` proto."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from itsmesh.v1 import common_pb2
from services.analytics.model import Severity

Point = tuple[float, float]
ZoneKind = Literal["detection", "occupancy", "stop", "restricted", "unspecified"]


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    """A zone in image coordinates."""

    zone_id: str
    kind: ZoneKind
    vertices: tuple[Point, ...]
    name: str = ""
    restricted_classes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LaneConfig:
    """A lane in image coordinates; ``centerline`` is ordered in the legal direction of travel."""

    lane_id: str
    vertices: tuple[Point, ...]
    centerline: tuple[Point, ...]
    name: str = ""
    direction_label: str = ""
    speed_limit_kmh: float | None = None


@dataclass(frozen=True, slots=True)
class LineConfig:
    """A counting line: FORWARD is crossing from the left-hand to the right-hand side looking from
    ``start`` to ``end`` in image coordinates (x right, y down). ``lane_ids`` empty = all lanes."""

    line_id: str
    start: Point
    end: Point
    lane_ids: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class CalibrationPair:
    """One image point (pixels) and the same point on the road plane (metres)."""

    image: Point
    world: Point


@dataclass(frozen=True, slots=True)
class SpeedingRule:
    """Speeding: passage speed above the (lane or camera) limit plus tolerance."""

    enabled: bool = False
    tolerance_kmh: float = 0.0
    severity: Severity = "medium"
    critical_excess_kmh: float = 0.0


@dataclass(frozen=True, slots=True)
class WrongWayRule:
    """Wrong-way: travel of at least ``min_distance_m`` against the lane's direction."""

    enabled: bool = False
    min_distance_m: float = 5.0
    severity: Severity = "high"


@dataclass(frozen=True, slots=True)
class StoppedVehicleRule:
    """Stopped vehicle: slower than ``max_speed_kmh`` for ``min_stopped_s`` outside any stop zone."""

    enabled: bool = False
    max_speed_kmh: float = 3.0
    min_stopped_s: float = 30.0
    severity: Severity = "medium"


@dataclass(frozen=True, slots=True)
class ZoneIntrusionRule:
    """Zone intrusion: a restricted class inside a restricted zone for ``min_dwell_s``."""

    enabled: bool = False
    min_dwell_s: float = 0.0
    severity: Severity = "medium"


@dataclass(frozen=True, slots=True)
class CongestionRule:
    """Congestion: over ``window_s`` the mean speed is below and the occupancy above the thresholds."""

    enabled: bool = False
    max_mean_speed_kmh: float = 20.0
    min_occupancy_ratio: float = 0.3
    window_s: int = 60
    severity: Severity = "medium"


@dataclass(frozen=True, slots=True)
class AnomalyRule:
    """Anomaly detection against the time-of-week baseline."""

    enabled: bool = False
    z_score_threshold: float = 3.0
    severity: Severity = "medium"


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """The rules evaluated for a camera."""

    speeding: SpeedingRule = SpeedingRule()
    wrong_way: WrongWayRule = WrongWayRule()
    stopped_vehicle: StoppedVehicleRule = StoppedVehicleRule()
    zone_intrusion: ZoneIntrusionRule = ZoneIntrusionRule()
    congestion: CongestionRule = CongestionRule()
    anomaly: AnomalyRule = AnomalyRule()


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """Everything the pipeline needs to know about one camera."""

    camera_id: str
    speed_limit_kmh: float
    calibration: tuple[CalibrationPair, ...]
    zones: tuple[ZoneConfig, ...] = ()
    lanes: tuple[LaneConfig, ...] = ()
    lines: tuple[LineConfig, ...] = ()
    rules: RulesConfig = RulesConfig()
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    time_zone: str = "UTC"
    config_version: int = 0

    def lane(self, lane_id: str) -> LaneConfig | None:
        """The lane with that id, if configured."""
        return next((lane for lane in self.lanes if lane.lane_id == lane_id), None)

    def speed_limit_for(self, lane_id: str) -> float:
        """The lane's own limit, else the camera's."""
        lane = self.lane(lane_id)
        if lane is not None and lane.speed_limit_kmh is not None:
            return lane.speed_limit_kmh
        return self.speed_limit_kmh


# ---------------------------------------------------------------------------------------------------------
# From the proto
# ---------------------------------------------------------------------------------------------------------


def enum_label(enum: Any, value: int, prefix: str) -> str:
    """A proto enum value as this package's vocabulary: ``OBJECT_CLASS_CAR`` → ``"car"``."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return "unspecified"
    return name.removeprefix(prefix).lower()


def object_class_label(value: int) -> str:
    """``common_pb2.ObjectClass`` value → ``"car"`` etc."""
    return enum_label(common_pb2.ObjectClass, value, "OBJECT_CLASS_")


def _severity(value: int, default: Severity) -> Severity:
    label = enum_label(common_pb2.Severity, value, "SEVERITY_")
    return default if label == "unspecified" else label  # type: ignore[return-value]  # enum names


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


def _points(polygon: Any) -> tuple[Point, ...]:
    return tuple((float(v.x_px), float(v.y_px)) for v in polygon.vertices)


_DEFAULTS = RulesConfig()


def camera_config_from_proto(camera: Any) -> CameraConfig:
    """Translate a registry ``itsmesh.v1.Camera`` (``common_pb2.Camera``) into a CameraConfig.

    The registry has validated the camera; unset thresholds get the documented defaults (stopped below
    3 km/h, anomaly z-score 3, congestion window 60 s).
    """
    zones = tuple(
        ZoneConfig(
            zone_id=z.zone_id,
            kind=enum_label(common_pb2.ZoneKind, z.kind, "ZONE_KIND_"),  # type: ignore[arg-type]
            vertices=_points(z.area),
            name=z.name,
            restricted_classes=frozenset(object_class_label(c) for c in z.restricted_classes),
        )
        for z in camera.zones
    )
    lanes = tuple(
        LaneConfig(
            lane_id=lane.lane_id,
            vertices=_points(lane.area),
            centerline=tuple((float(p.x_px), float(p.y_px)) for p in lane.centerline),
            name=lane.name,
            direction_label=lane.direction_label,
            speed_limit_kmh=lane.speed_limit_kmh if lane.HasField("speed_limit_kmh") else None,
        )
        for lane in camera.lanes
    )
    lines = tuple(
        LineConfig(
            line_id=line.line_id,
            start=(float(line.segment.start.x_px), float(line.segment.start.y_px)),
            end=(float(line.segment.end.x_px), float(line.segment.end.y_px)),
            lane_ids=tuple(line.lane_ids),
            name=line.name,
        )
        for line in camera.counting_lines
    )
    calibration = tuple(
        CalibrationPair(
            image=(float(p.image_point.x_px), float(p.image_point.y_px)),
            world=(float(p.world_point.x_m), float(p.world_point.y_m)),
        )
        for p in camera.calibration.point_pairs
    )
    r = camera.rules
    rules = RulesConfig(
        speeding=SpeedingRule(
            enabled=r.speeding.enabled,
            tolerance_kmh=r.speeding.tolerance_kmh,
            severity=_severity(r.speeding.severity, "medium"),
            critical_excess_kmh=r.speeding.critical_excess_kmh,
        ),
        wrong_way=WrongWayRule(
            enabled=r.wrong_way.enabled,
            min_distance_m=r.wrong_way.min_distance_m or _DEFAULTS.wrong_way.min_distance_m,
            severity=_severity(r.wrong_way.severity, "high"),
        ),
        stopped_vehicle=StoppedVehicleRule(
            enabled=r.stopped_vehicle.enabled,
            max_speed_kmh=r.stopped_vehicle.max_speed_kmh or _DEFAULTS.stopped_vehicle.max_speed_kmh,
            min_stopped_s=(
                _seconds(r.stopped_vehicle.min_stopped_duration)
                if r.stopped_vehicle.HasField("min_stopped_duration")
                else _DEFAULTS.stopped_vehicle.min_stopped_s
            ),
            severity=_severity(r.stopped_vehicle.severity, "medium"),
        ),
        zone_intrusion=ZoneIntrusionRule(
            enabled=r.zone_intrusion.enabled,
            min_dwell_s=_seconds(r.zone_intrusion.min_dwell_duration),
            severity=_severity(r.zone_intrusion.severity, "medium"),
        ),
        congestion=CongestionRule(
            enabled=r.congestion.enabled,
            max_mean_speed_kmh=r.congestion.max_mean_speed_kmh or _DEFAULTS.congestion.max_mean_speed_kmh,
            min_occupancy_ratio=r.congestion.min_occupancy_ratio or _DEFAULTS.congestion.min_occupancy_ratio,
            window_s=(
                max(10, int(_seconds(r.congestion.window)) // 10 * 10)
                if r.congestion.HasField("window")
                else _DEFAULTS.congestion.window_s
            ),
            severity=_severity(r.congestion.severity, "medium"),
        ),
        anomaly=AnomalyRule(
            enabled=r.anomaly.enabled,
            z_score_threshold=r.anomaly.z_score_threshold or _DEFAULTS.anomaly.z_score_threshold,
            severity=_severity(r.anomaly.severity, "medium"),
        ),
    )
    return CameraConfig(
        camera_id=camera.camera_id,
        speed_limit_kmh=camera.speed_limit_kmh,
        calibration=calibration,
        zones=zones,
        lanes=lanes,
        lines=lines,
        rules=rules,
        labels=MappingProxyType(dict(camera.labels)),
        time_zone=camera.time_zone or "UTC",
        config_version=camera.config_version,
    )
