"""Domain values → protos the I/O side needs: passages and metric buckets for the API, RaiseAlert requests for
the outbox."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from itsmesh.v1 import alert_pb2, analytics_pb2, common_pb2, events_pb2
from services.analytics.model import Anomaly, Passage, TrackPoint, Violation
from services.analytics.queries import MetricsRow, class_counts

ALERT_SOURCE: Final = "analytics"

# Which oneof member of Violation.details carries the evidence of each kind.
_DETAILS_FIELD: Final[Mapping[str, str]] = {
    "speeding": "speeding",
    "wrong_way": "wrong_way",
    "stopped_vehicle": "stopped_vehicle",
    "zone_intrusion": "zone_intrusion",
    "congestion": "congestion",
    "telemetry_overspeed": "telemetry_overspeed",
    "geofence_exit": "geofence",
    "geofence_entry": "geofence",
}
_LABEL_NAME_INVALID = re.compile(r"[^A-Za-z0-9_]")


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """An aware datetime as a Timestamp."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def duration(seconds: float) -> duration_pb2.Duration:
    """Seconds as a Duration."""
    span = duration_pb2.Duration()
    span.FromNanoseconds(round(seconds * 1e9))
    return span


def enum_value(enum: Any, prefix: str, name: str) -> Any:
    """The proto number of a lower-case domain name (``"car"``, prefix OBJECT_CLASS_ → 2); 0 if unknown."""
    # Any: the stubs type each enum's numbers as its own NewType
    try:
        return enum.Value(f"{prefix}{name.upper()}")
    except ValueError:
        return 0


def object_class(name: str) -> Any:
    """ObjectClass number of a domain class name."""
    return enum_value(common_pb2.ObjectClass, "OBJECT_CLASS_", name)


def severity(name: str) -> Any:
    """Severity number of a domain severity name."""
    return enum_value(common_pb2.Severity, "SEVERITY_", name)


def _fill(message: Message, values: Mapping[str, Any]) -> None:
    """Copy a mapping onto ``message``: sub-dicts become messages, ``<name>_s`` a Duration ``<name>``."""
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in values.items():
        if value is None:
            continue
        name = key
        if name not in fields and key.endswith("_s") and key[:-2] in fields:
            name = key[:-2]
        descriptor = fields.get(name)
        if descriptor is None:
            continue  # evidence may carry more than the proto has room for
        if descriptor.message_type is not None:
            target = getattr(message, name)
            if descriptor.message_type.full_name == "google.protobuf.Duration":
                target.CopyFrom(duration(float(value)))
            elif isinstance(value, Mapping):
                _fill(target, value)
        elif descriptor.enum_type is not None and isinstance(value, str):
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.enum_type.name).upper() + "_"
            setattr(message, name, enum_value(descriptor.enum_type, prefix, value))
        else:
            setattr(message, name, value)


def track_point(point: TrackPoint) -> events_pb2.TrackPoint:
    """One evidence position as a proto."""
    message = events_pb2.TrackPoint(observe_time=timestamp(point.time), frame_sequence=point.frame_sequence)
    if point.image_x is not None and point.image_y is not None:
        message.image_position.CopyFrom(common_pb2.ImagePoint(x_px=point.image_x, y_px=point.image_y))
    if point.world_x_m is not None and point.world_y_m is not None:
        message.world_position.CopyFrom(common_pb2.WorldPoint(x_m=point.world_x_m, y_m=point.world_y_m))
    if point.latitude_deg is not None and point.longitude_deg is not None:
        message.geo_position.CopyFrom(
            common_pb2.GeoPoint(latitude_deg=point.latitude_deg, longitude_deg=point.longitude_deg)
        )
    if point.speed_kmh is not None:
        message.speed_kmh = point.speed_kmh
    return message


def violation_proto(violation: Violation) -> events_pb2.Violation:
    """A violation with its evidence as the proto the API returns and the alert carries."""
    message = events_pb2.Violation(
        violation_id=violation.violation_id,
        kind=enum_value(events_pb2.ViolationKind, "VIOLATION_KIND_", violation.kind),
        severity=severity(violation.severity),
        camera_id=violation.camera_id,
        device_id=violation.device_id,
        track_id=violation.track_id,
        lane_id=violation.lane_id,
        object_class=object_class(violation.object_class or "unspecified"),
        start_time=timestamp(violation.start_time),
        end_time=timestamp(violation.end_time),
        detect_time=timestamp(violation.detect_time),
        track=[track_point(p) for p in violation.track],
        evidence_frame_sequences=list(violation.evidence_frame_sequences),
        labels=dict(violation.labels),
        summary=violation.summary,
        camera_config_version=violation.camera_config_version,
    )
    details_field = _DETAILS_FIELD.get(violation.kind)
    if details_field is not None:
        details = getattr(message, details_field)
        details.SetInParent()
        _fill(details, violation.evidence)
    return message


def anomaly_proto(anomaly: Anomaly) -> events_pb2.Anomaly:
    """An anomaly as its proto."""
    return events_pb2.Anomaly(
        anomaly_id=anomaly.anomaly_id,
        kind=enum_value(events_pb2.AnomalyKind, "ANOMALY_KIND_", anomaly.kind),
        severity=severity(anomaly.severity),
        camera_id=anomaly.camera_id,
        lane_id=anomaly.lane_id,
        window_start_time=timestamp(anomaly.window_start_time),
        window=duration(anomaly.window_s),
        observed_value=anomaly.observed_value,
        baseline_mean=anomaly.baseline_mean,
        baseline_stddev=anomaly.baseline_stddev,
        z_score=anomaly.z_score,
        z_score_threshold=anomaly.z_score_threshold,
        time_of_week_slot=anomaly.time_of_week_slot,
        detect_time=timestamp(anomaly.detect_time),
        summary=anomaly.summary,
        labels=dict(anomaly.labels),
    )


def passage_proto(passage: Passage) -> analytics_pb2.VehiclePassage:
    """A passage as the API's VehiclePassage."""
    return analytics_pb2.VehiclePassage(
        passage_id=passage.event_id,
        camera_id=passage.camera_id,
        track_id=passage.track_id,
        lane_id=passage.lane,
        line_id=passage.line_id,
        direction=enum_value(common_pb2.CrossingDirection, "CROSSING_DIRECTION_", passage.direction),
        wrong_way=passage.wrong_way,
        object_class=object_class(passage.object_class),
        crossing_time=timestamp(passage.time),
        entry_time=timestamp(passage.entry_time),
        exit_time=timestamp(passage.exit_time),
        speed_kmh=passage.speed_kmh or 0.0,
        speed_uncertainty_kmh=passage.speed_uncertainty_kmh,
        sample_count=passage.sample_count,
        crossing_position=common_pb2.WorldPoint(x_m=passage.crossing_x_m, y_m=passage.crossing_y_m),
        confidence=passage.confidence,
    )


def _labels(extra: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    # Camera labels may use names the alert service refuses ("site-id"); underscores keep them routable.
    labels = {_LABEL_NAME_INVALID.sub("_", k) or "_": v for k, v in base.items()}
    labels.update({k: v for k, v in extra.items() if v})
    return labels


def violation_alert(violation: Violation, proto: events_pb2.Violation) -> alert_pb2.RaiseAlertRequest:
    """The RaiseAlert request of a violation; its id is the client_alert_id, so a resend is a no-op."""
    labels = _labels(
        {
            "kind": f"violation_{violation.kind}",
            "camera_id": violation.camera_id,
            "device_id": violation.device_id,
            "track_id": violation.track_id,
            "lane_id": violation.lane_id,
        },
        violation.labels,
    )
    return alert_pb2.RaiseAlertRequest(
        client_alert_id=violation.violation_id,
        labels=labels,
        annotations={"summary": violation.summary or f"{violation.kind} violation"},
        severity=severity(violation.severity) or common_pb2.SEVERITY_MEDIUM,
        source=ALERT_SOURCE,
        start_time=timestamp(violation.start_time),
        evidence=alert_pb2.AlertEvidence(violation=proto),
    )


def anomaly_alert(anomaly: Anomaly, proto: events_pb2.Anomaly) -> alert_pb2.RaiseAlertRequest:
    """The RaiseAlert request of an anomaly."""
    labels = _labels(
        {"kind": f"anomaly_{anomaly.kind}", "camera_id": anomaly.camera_id, "lane_id": anomaly.lane_id},
        anomaly.labels,
    )
    return alert_pb2.RaiseAlertRequest(
        client_alert_id=anomaly.anomaly_id,
        labels=labels,
        annotations={"summary": anomaly.summary or f"{anomaly.kind} anomaly"},
        severity=severity(anomaly.severity) or common_pb2.SEVERITY_MEDIUM,
        source=ALERT_SOURCE,
        start_time=timestamp(anomaly.window_start_time),
        evidence=alert_pb2.AlertEvidence(anomaly=proto),
    )


_F = analytics_pb2


_NO_COUNTS: Final[Mapping[str, int]] = MappingProxyType({})


class MetricBucketShape:
    """Turns stored sums (a MetricsRow) into a TrafficMetricBucket with the requested fields.

    Runs once per bucket — a day of 10 s buckets is 8,640 — so the choices that hold for the whole request
    (which fields, which classes) are settled here once, and each distinct class mix becomes its
    ClassCount messages once.
    """

    def __init__(self, bucket_s: int, fields: frozenset[int], classes: Sequence[str]) -> None:
        self._bucket_s = bucket_s
        self._classes = tuple(classes)
        self._count = _F.TRAFFIC_METRIC_FIELD_VEHICLE_COUNT in fields
        self._class_counts = _F.TRAFFIC_METRIC_FIELD_CLASS_COUNTS in fields
        self._mean_speed = _F.TRAFFIC_METRIC_FIELD_MEAN_SPEED in fields
        self._p85_speed = _F.TRAFFIC_METRIC_FIELD_P85_SPEED in fields
        self._occupancy = _F.TRAFFIC_METRIC_FIELD_OCCUPANCY in fields
        self._headway = _F.TRAFFIC_METRIC_FIELD_HEADWAY in fields
        self._congestion = _F.TRAFFIC_METRIC_FIELD_CONGESTION_LEVEL in fields
        self._entries: dict[tuple[tuple[str, int], ...], list[analytics_pb2.ClassCount]] = {}
        self._needs_classes = bool(self._classes) or self._class_counts

    @property
    def needs_classes(self) -> bool:
        """Whether per-class counts must be read."""
        return self._needs_classes

    def bucket(
        self, row: MetricsRow, message: analytics_pb2.TrafficMetricBucket | None = None
    ) -> analytics_pb2.TrafficMetricBucket:
        """The bucket of ``row``, filled into ``message`` when given (``response.buckets.add()``:
        appending a built message would copy it)."""
        message = message if message is not None else analytics_pb2.TrafficMetricBucket()
        message.camera_id = row.camera_id
        message.lane_id = row.lane
        message.zone_id = row.zone
        message.window_count = row.window_count
        start = row.bucket_start.timestamp()
        seconds = int(start // 1)
        stamp = message.bucket_start_time
        stamp.seconds = seconds
        stamp.nanos = round((start - seconds) * 1e9)
        message.bucket.seconds = self._bucket_s
        counts = row.counts_by_class
        if self._count:
            count = sum(counts.get(c, 0) for c in self._classes) if self._classes else row.vehicle_count
            message.vehicle_count = count
            message.flow_vehicles_per_hour = count * 3600.0 / self._bucket_s
        if self._class_counts and counts:
            message.class_counts.extend(self._class_entries(counts))
        if self._mean_speed and row.speed_weight:
            message.mean_speed_kmh = row.speed_sum / row.speed_weight
        if self._p85_speed:
            if row.window_count == 1 and row.p85_single is not None:
                message.p85_speed_kmh = row.p85_single
            elif row.p85_weight:
                # windows' percentiles averaged by their vehicle counts: close, not exact
                message.p85_speed_kmh = row.p85_sum / row.p85_weight
                message.approximate = True
        if self._occupancy and row.occupancy_n:
            message.occupancy_ratio = row.occupancy_sum / row.occupancy_n
        if self._headway and row.headway_weight:
            message.mean_headway_s = row.headway_sum / row.headway_weight
        if self._congestion:
            message.congestion_level = row.congestion_max  # type: ignore[assignment]  # proto numbers
        return message

    def window(
        self, record: Sequence[Any], message: analytics_pb2.TrafficMetricBucket | None = None
    ) -> analytics_pb2.TrafficMetricBucket:
        """The bucket of one stored 10 s window, a ``queries.metric_windows`` row (WINDOW_COLUMNS): the
        values as stored, with what ``bucket`` would derive from their sums."""
        camera_id, lane, zone, start_us, count, counts_json, mean, p85, occupancy, headway, level = record
        message = message if message is not None else analytics_pb2.TrafficMetricBucket()
        message.camera_id = camera_id
        if lane:
            message.lane_id = lane
        if zone:
            message.zone_id = zone
        message.window_count = 1
        seconds, micros = divmod(start_us, 1_000_000)
        stamp = message.bucket_start_time
        stamp.seconds = seconds
        if micros:
            stamp.nanos = micros * 1000
        message.bucket.seconds = self._bucket_s
        counts = class_counts(counts_json) if counts_json and self._needs_classes else _NO_COUNTS
        if self._count:
            if self._classes:
                count = sum(counts.get(c, 0) for c in self._classes)
            message.vehicle_count = count
            message.flow_vehicles_per_hour = count * 3600.0 / self._bucket_s
        if self._class_counts and counts:
            message.class_counts.extend(self._class_entries(counts))
        # as in ``bucket``: means over vehicles need vehicles (a window without any has no mean speed)
        if self._mean_speed and mean is not None and record[4]:
            message.mean_speed_kmh = mean
        if self._p85_speed and p85 is not None:
            message.p85_speed_kmh = p85
        if self._occupancy and occupancy is not None:
            message.occupancy_ratio = occupancy
        if self._headway and headway is not None and record[4]:
            message.mean_headway_s = headway
        if self._congestion:
            message.congestion_level = level
        return message

    def _class_entries(self, counts: Mapping[str, int]) -> list[analytics_pb2.ClassCount]:
        key = tuple(counts.items())
        entries = self._entries.get(key)
        if entries is None:
            chosen = sorted(c for c in counts if not self._classes or c in self._classes)
            entries = [
                analytics_pb2.ClassCount(object_class=object_class(c), count=counts[c]) for c in chosen
            ]
            self._entries[key] = entries
        return entries
