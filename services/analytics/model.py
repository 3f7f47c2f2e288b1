"""Domain values of the analytics pipeline: its inputs (detection frames) and outputs (passages, metric
windows, violations, anomalies). Pure data; the adapters translate protos and rows to and from these.

String vocabularies follow the protos, lower-cased and without the enum prefix:
object classes ``"car"``, ``"truck"`` … (``OBJECT_CLASS_CAR`` → ``"car"``), severities ``"info"`` …
``"critical"``, violation kinds ``"speeding"``, ``"wrong_way"`` …, anomaly kinds ``"flow_high"`` …,
crossing directions ``"forward"`` / ``"reverse"``. Congestion levels are the proto's CongestionLevel
numbers (0 = no data, 1 free flow … 5 standstill). All times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal

Clock = Callable[[], datetime]
"""Wall clock returning an aware UTC datetime (only used for ``detect_time`` stamps)."""

Direction = Literal["forward", "reverse"]
Severity = Literal["unspecified", "info", "low", "medium", "high", "critical"]
ViolationKind = Literal[
    "speeding",
    "wrong_way",
    "stopped_vehicle",
    "zone_intrusion",
    "congestion",
    "telemetry_overspeed",
    "geofence_exit",
    "geofence_entry",
]
AnomalyKind = Literal["flow_high", "flow_low", "speed_high", "speed_low", "flow_drop_to_zero"]

ID_NAMESPACE: Final = uuid.UUID("0b6f4b8e-3c1d-5a77-9e2f-8d4c7a1b2e90")
"""Namespace of the deterministic uuid5 ids of passages, violations and anomalies."""


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


def deterministic_id(*parts: object) -> str:
    """A uuid5 over ``parts`` joined by "/": the same inputs give the same id after any replay."""
    return str(uuid.uuid5(ID_NAMESPACE, "/".join(str(p) for p in parts)))


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Box:
    """One detection: an axis-aligned image box (pixels, origin top-left, y down) with its class."""

    x1: float
    y1: float
    x2: float
    y2: float
    object_class: str = "vehicle"
    confidence: float = 1.0

    @property
    def bottom_centre(self) -> tuple[float, float]:
        """The point where the object touches the road: middle of the box's lower edge."""
        return ((self.x1 + self.x2) * 0.5, self.y2)


@dataclass(frozen=True, slots=True)
class DetectionFrame:
    """The detections of one camera frame, as carried by a ``camera.detections.v1`` event."""

    camera_id: str
    sequence: int
    capture_time: datetime
    boxes: tuple[Box, ...]
    event_id: str
    config_version: int = 0


# ---------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Passage:
    """A vehicle crossing a counting line; a row of ``analytics.vehicle_passages``.

    ``event_id`` is ``deterministic_id("passage", camera_id, track_id, line_id)``; track ids are derived
    from the first frame of the track, so reprocessing the same records yields the same ids.
    ``time`` is the crossing time interpolated between the two observations around the line.
    """

    time: datetime
    camera_id: str
    event_id: str
    track_id: str
    line_id: str
    lane: str
    direction: Direction
    object_class: str
    speed_kmh: float | None
    entry_time: datetime
    exit_time: datetime
    wrong_way: bool = False
    speed_uncertainty_kmh: float = 0.0
    sample_count: int = 0
    crossing_x_m: float = 0.0
    crossing_y_m: float = 0.0
    confidence: float = 0.0


@dataclass(frozen=True, slots=True)
class MetricWindow:
    """Traffic metrics of one camera (lane ``""``, zone ``""``), lane or zone over one window; a row of
    ``analytics.traffic_metrics``. ``time`` is the window start. Optional values are None without data."""

    time: datetime
    camera_id: str
    lane: str
    zone: str
    window_s: int
    vehicle_count: int
    counts_by_class: Mapping[str, int] = field(default_factory=_empty)
    mean_speed_kmh: float | None = None
    p85_speed_kmh: float | None = None
    occupancy: float | None = None
    headway_s: float | None = None
    congestion_level: int = 0


@dataclass(frozen=True, slots=True)
class TrackPoint:
    """One observed position of a tracked object or device, used as evidence (proto TrackPoint)."""

    time: datetime
    frame_sequence: int = 0
    image_x: float | None = None
    image_y: float | None = None
    world_x_m: float | None = None
    world_y_m: float | None = None
    latitude_deg: float | None = None
    longitude_deg: float | None = None
    speed_kmh: float | None = None


@dataclass(frozen=True, slots=True)
class Violation:
    """A rule violation with its evidence (proto itsmesh.v1.Violation).

    ``evidence`` holds the kind-specific details with the proto's field names (``SpeedingDetails`` →
    ``measured_speed_kmh``, ``speed_limit_kmh`` …); durations are seconds under the field name with the
    suffix ``_s`` (``fit_window_s``, ``stopped_duration_s`` …), positions as ``{"x_m", "y_m"}`` or
    ``{"latitude_deg", "longitude_deg"}`` dicts. ``violation_id`` is
    ``deterministic_id("violation", subject, track_id, kind, start_time)``.
    """

    violation_id: str
    kind: ViolationKind
    severity: Severity
    start_time: datetime
    end_time: datetime
    detect_time: datetime
    camera_id: str = ""
    device_id: str = ""
    track_id: str = ""
    lane_id: str = ""
    object_class: str = ""
    track: tuple[TrackPoint, ...] = ()
    evidence_frame_sequences: tuple[int, ...] = ()
    labels: Mapping[str, str] = field(default_factory=_empty)
    summary: str = ""
    camera_config_version: int = 0
    evidence: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A statistical anomaly of a camera's (or lane's) traffic against its time-of-week baseline (proto
    itsmesh.v1.Anomaly). ``anomaly_id`` is ``deterministic_id("anomaly", camera_id, lane_id, kind,
    window_start_time)``. Values are vehicles per hour for flow kinds, km/h for speed kinds."""

    anomaly_id: str
    kind: AnomalyKind
    severity: Severity
    camera_id: str
    lane_id: str
    window_start_time: datetime
    window_s: int
    observed_value: float
    baseline_mean: float
    baseline_stddev: float
    z_score: float
    z_score_threshold: float
    time_of_week_slot: int
    detect_time: datetime
    summary: str = ""
    labels: Mapping[str, str] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class PipelineOutput:
    """Everything one ``process``/``flush`` call produced, in time order within each list."""

    passages: tuple[Passage, ...] = ()
    metrics: tuple[MetricWindow, ...] = ()
    violations: tuple[Violation, ...] = ()
    anomalies: tuple[Anomaly, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.passages or self.metrics or self.violations or self.anomalies)

    def merged(self, other: PipelineOutput) -> PipelineOutput:
        """Both outputs concatenated (self first)."""
        return PipelineOutput(
            self.passages + other.passages,
            self.metrics + other.metrics,
            self.violations + other.violations,
            self.anomalies + other.anomalies,
        )


EMPTY_OUTPUT: Final = PipelineOutput()
