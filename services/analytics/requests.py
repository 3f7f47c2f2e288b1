"""Analyst requests → validated query values, or INVALID_ARGUMENT naming the field (DESIGN §4)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from itsmesh.v1 import analytics_pb2, common_pb2
from mesh.status import raise_for_violations
from services.analytics.camera_config import object_class_label
from services.analytics.queries import (
    AnomalyQuery,
    Breakdown,
    MetricsQuery,
    PassageQuery,
    ReadingQuery,
    ViolationQuery,
)

MIN_BUCKET_S: Final = 10
MAX_BUCKET_S: Final = 86_400
MAX_CAMERAS: Final = 100
MAX_DEVICES: Final = 100
_BREAKDOWNS: Final[dict[int, Breakdown]] = {
    analytics_pb2.METRICS_BREAKDOWN_UNSPECIFIED: "camera",
    analytics_pb2.METRICS_BREAKDOWN_CAMERA: "camera",
    analytics_pb2.METRICS_BREAKDOWN_LANE: "lane",
    analytics_pb2.METRICS_BREAKDOWN_ZONE: "zone",
}
_DIRECTIONS: Final = {
    common_pb2.CROSSING_DIRECTION_UNSPECIFIED: "",
    common_pb2.CROSSING_DIRECTION_FORWARD: "forward",
    common_pb2.CROSSING_DIRECTION_REVERSE: "reverse",
}

Problems = list[tuple[str, str]]


def time_range(request: Any, problems: Problems, field: str = "time_range") -> tuple[datetime, datetime]:
    """[start, end) of ``request.<field>``; a missing end means now."""
    now = datetime.now(UTC)
    if not request.HasField(field) or not getattr(request, field).HasField("start_time"):
        problems.append((f"{field}.start_time", "required"))
        return now, now
    value = getattr(request, field)
    start = value.start_time.ToDatetime(UTC)
    end = value.end_time.ToDatetime(UTC) if value.HasField("end_time") else now
    if end <= start:
        problems.append((f"{field}.end_time", "must be after start_time"))
    return start, end


def bucket_seconds(request: Any, problems: Problems) -> int:
    """The bucket in seconds: unset = 10 s; else 10 s … 1 day and a multiple of 10 s."""
    if not request.HasField("bucket"):
        return MIN_BUCKET_S
    nanos = request.bucket.ToNanoseconds()
    if nanos % (MIN_BUCKET_S * 10**9) or not MIN_BUCKET_S * 10**9 <= nanos <= MAX_BUCKET_S * 10**9:
        problems.append(("bucket", "must be 10 s … 1 day and a multiple of 10 s"))
        return MIN_BUCKET_S
    return int(nanos // 10**9)


def _time_zone(name: str, problems: Problems) -> str:
    if not name or name == "UTC":
        return ""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(("time_zone", "unknown IANA time zone"))
        return ""
    return name


def _ids(values: Any, field: str, problems: Problems, *, required: bool, maximum: int) -> tuple[str, ...]:
    ids = tuple(dict.fromkeys(values))
    if required and not ids:
        problems.append((field, "at least one is required"))
    elif len(ids) > maximum:
        problems.append((field, f"at most {maximum}"))
    if any(not i for i in ids):
        problems.append((field, "ids must not be empty"))
    return ids


def _newest_first(order: int) -> bool:
    return bool(order != common_pb2.SORT_ORDER_OLDEST_FIRST)


def metrics_query(request: Any) -> MetricsQuery:
    """GetTrafficMetricsRequest / ExportMetricsRequest → MetricsQuery."""
    problems: Problems = []
    cameras = _ids(request.camera_ids, "camera_ids", problems, required=True, maximum=MAX_CAMERAS)
    start, end = time_range(request, problems)
    bucket = bucket_seconds(request, problems)
    zone = _time_zone(request.time_zone, problems)
    breakdown = _BREAKDOWNS.get(request.breakdown)
    if breakdown is None:
        problems.append(("breakdown", "unknown breakdown"))
        breakdown = "camera"
    raise_for_violations(problems)
    return MetricsQuery(cameras, start, end, bucket, breakdown, tuple(request.lane_ids), zone)


def object_classes(request: Any) -> tuple[str, ...]:
    """The requested classes as domain names."""
    return tuple(object_class_label(c) for c in request.object_classes)


def passage_query(request: analytics_pb2.ListPassagesRequest) -> PassageQuery:
    """ListPassagesRequest → PassageQuery."""
    problems: Problems = []
    start, end = time_range(request, problems)
    if request.direction not in _DIRECTIONS:
        problems.append(("direction", "unknown direction"))
    low = request.min_speed_kmh if request.HasField("min_speed_kmh") else None
    high = request.max_speed_kmh if request.HasField("max_speed_kmh") else None
    if low is not None and high is not None and high <= low:
        problems.append(("max_speed_kmh", "must be above min_speed_kmh"))
    raise_for_violations(problems)
    return PassageQuery(
        start=start,
        end=end,
        camera_ids=tuple(request.camera_ids),
        lane_ids=tuple(request.lane_ids),
        line_ids=tuple(request.line_ids),
        object_classes=object_classes(request),
        direction=_DIRECTIONS.get(request.direction, ""),
        min_speed_kmh=low,
        max_speed_kmh=high,
        wrong_way_only=request.wrong_way_only,
        newest_first=_newest_first(request.order),
    )


def violation_query(request: analytics_pb2.ListViolationsRequest) -> ViolationQuery:
    """ListViolationsRequest → ViolationQuery."""
    problems: Problems = []
    start, end = time_range(request, problems)
    raise_for_violations(problems)
    return ViolationQuery(
        start=start,
        end=end,
        camera_ids=tuple(request.camera_ids),
        device_ids=tuple(request.device_ids),
        kinds=tuple(int(k) for k in request.kinds),
        min_severity=int(request.min_severity),
        track_id=request.track_id,
        newest_first=_newest_first(request.order),
    )


def anomaly_query(request: analytics_pb2.ListAnomaliesRequest) -> AnomalyQuery:
    """ListAnomaliesRequest → AnomalyQuery."""
    problems: Problems = []
    start, end = time_range(request, problems)
    raise_for_violations(problems)
    return AnomalyQuery(
        start=start,
        end=end,
        camera_ids=tuple(request.camera_ids),
        kinds=tuple(int(k) for k in request.kinds),
        lane_ids=tuple(request.lane_ids),
        min_severity=int(request.min_severity),
        newest_first=_newest_first(request.order),
    )


def reading_query(request: analytics_pb2.ListTelemetryReadingsRequest) -> ReadingQuery:
    """ListTelemetryReadingsRequest → ReadingQuery (the area's bounding box pre-filters in SQL)."""
    problems: Problems = []
    devices = _ids(request.device_ids, "device_ids", problems, required=True, maximum=MAX_DEVICES)
    start, end = time_range(request, problems)
    bbox = None
    if request.HasField("area"):
        vertices = request.area.vertices
        if len(vertices) < 3:
            problems.append(("area.vertices", "at least 3 vertices"))
        else:
            lons = [v.longitude_deg for v in vertices]
            lats = [v.latitude_deg for v in vertices]
            bbox = (min(lons), min(lats), max(lons), max(lats))
    raise_for_violations(problems)
    return ReadingQuery(
        device_ids=devices,
        start=start,
        end=end,
        bbox=bbox,
        min_speed_kmh=request.min_speed_kmh if request.HasField("min_speed_kmh") else None,
        newest_first=_newest_first(request.order),
    )
