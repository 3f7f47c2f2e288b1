"""gRPC front of the analytics service: proto ↔ domain translation and input validation."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

import asyncpg
import grpc
from google.protobuf import empty_pb2
from shapely.geometry import Point, Polygon

from itsmesh.v1 import analytics_pb2, analytics_pb2_grpc, common_pb2, events_pb2
from mesh.pg_pool import DATABASE_DOWN
from mesh.status import StatusError, errors_as_status, raise_for_violations, status_error
from services.analytics import geofences as geofence_rules
from services.analytics import queries
from services.analytics.camera_config import enum_label, object_class_label
from services.analytics.consumer import AnalyticsConsumer
from services.analytics.encode import MetricBucketShape, duration, passage_proto, timestamp
from services.analytics.geofences import GeofenceStore
from services.analytics.live import LiveMetrics
from services.analytics.model import MetricWindow, Passage
from services.analytics.outbox import outbox_state
from services.analytics.paging import page_of
from services.analytics.queries import MetricsRow
from services.analytics.requests import (
    anomaly_query,
    metrics_query,
    object_classes,
    passage_query,
    reading_query,
    violation_query,
)

Context = grpc.aio.ServicerContext[Any, Any]

METRICS_PAGE: Final = (1000, 10_000)
PASSAGES_PAGE: Final = (100, 10_000)
LIST_PAGE: Final = (100, 1000)
EXPORT_CHUNK_BYTES: Final = 64 * 1024
ALL_METRICS: Final = frozenset(analytics_pb2.TrafficMetricField.values()) - {0}
_F = analytics_pb2


def _errors(context: Context) -> errors_as_status:
    return errors_as_status(context, _status_of)


def _status_of(exc: BaseException) -> StatusError | None:
    if isinstance(exc, DATABASE_DOWN):
        return status_error(
            grpc.StatusCode.UNAVAILABLE, "the analytics database is unreachable", retry_delay_s=1.0
        )
    return None


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    """Answers itsmesh.v1.AnalyticsService from the time-series tables and this instance's pipeline."""

    def __init__(self, instance_id: str = "", live: LiveMetrics | None = None) -> None:
        self.instance_id = instance_id
        self.start_time = datetime.now(UTC)
        self.live = live or LiveMetrics()
        self.pool: asyncpg.Pool | None = None
        self.consumer: AnalyticsConsumer | None = None
        self.geofences: GeofenceStore | None = None
        self.geofences_changed: Callable[[], None] = lambda: None
        self.timescaledb = False
        self.draining = asyncio.Event()

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise status_error(grpc.StatusCode.UNAVAILABLE, "analytics is starting", retry_delay_s=1.0)
        return self.pool

    def _geofences(self) -> GeofenceStore:
        if self.geofences is None:
            raise status_error(grpc.StatusCode.UNAVAILABLE, "analytics is starting", retry_delay_s=1.0)
        return self.geofences

    # --- traffic metrics -------------------------------------------------------------------------------

    async def GetTrafficMetrics(
        self, request: analytics_pb2.GetTrafficMetricsRequest, context: Context
    ) -> analytics_pb2.GetTrafficMetricsResponse:
        async with _errors(context):
            query = metrics_query(request)
            page = page_of(request, *METRICS_PAGE)
            source = queries.choose_source(query)
            pool = self._pool()
            shape = MetricBucketShape(query.bucket_s, _fields(request.metrics), object_classes(request))
            (rows, build), fresh = await asyncio.gather(  # two pooled connections: one wait
                _metric_rows(pool, query, source, shape, page.offset, page.fetch),
                queries.fresh_through(pool, query.camera_ids),
            )
            buckets, token = page.split(rows)
            response = analytics_pb2.GetTrafficMetricsResponse(next_page_token=token, source=_SOURCES[source])
            add = response.buckets.add
            for row in buckets:
                build(row, add())
            if fresh is not None:
                response.data_fresh_through_time.CopyFrom(timestamp(fresh))
            return response
        raise AssertionError("unreachable")

    async def ExportMetrics(
        self, request: analytics_pb2.ExportMetricsRequest, context: Context
    ) -> AsyncIterator[analytics_pb2.ExportMetricsResponse]:
        async with _errors(context):
            query = metrics_query(request)
            if request.format not in (_F.EXPORT_FORMAT_UNSPECIFIED, _F.EXPORT_FORMAT_CSV):
                raise_for_violations([("format", "only CSV is supported")])
            fields = _fields(request.metrics)
            shape = MetricBucketShape(query.bucket_s, fields, ())
            source = queries.choose_source(query)
            zone = ZoneInfo(query.time_zone or "UTC")
            header = ["camera_id", "lane_id", "zone_id", "bucket_start_time", "bucket_s"]
            header += [column for field, column in _CSV_COLUMNS if field in fields]
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(header)
            first, rows_in_chunk, offset = True, 0, 0
            stamp = query.start.astimezone(zone).strftime("%Y%m%d")
            name = f"metrics_{query.camera_ids[0] if len(query.camera_ids) == 1 else 'cameras'}_{stamp}.csv"
            while True:
                rows, build = await _metric_rows(self._pool(), query, source, shape, offset, METRICS_PAGE[1])
                for row in rows:
                    writer.writerow(_csv_row(build(row, None), fields, zone))
                    rows_in_chunk += 1
                    if out.tell() >= EXPORT_CHUNK_BYTES:
                        yield _chunk(out, rows_in_chunk, first, name)
                        first, rows_in_chunk = False, 0
                offset += len(rows)
                if len(rows) < METRICS_PAGE[1]:
                    break
            if first or out.tell():
                yield _chunk(out, rows_in_chunk, first, name)

    async def StreamLiveMetrics(
        self, request: analytics_pb2.StreamLiveMetricsRequest, context: Context
    ) -> AsyncIterator[analytics_pb2.StreamLiveMetricsResponse]:
        async with _errors(context):
            breakdown = metrics_breakdown(request.breakdown)
            cameras = frozenset(request.camera_ids)
            fields = _fields(request.metrics)
            with self.live.subscribe() as queue:
                if request.send_latest:
                    latest = await queries.latest_windows(self._pool(), sorted(cameras), breakdown)
                    windows = [queries.window_of(r) for r in latest]
                    if windows:
                        yield _live_update(windows, fields)
                while not self.draining.is_set():
                    try:
                        batch = await asyncio.wait_for(queue.get(), timeout=1.0)
                    except TimeoutError:
                        continue
                    chosen = [w for w in batch if _selected(w, cameras, breakdown)]
                    if chosen:
                        yield _live_update(chosen, fields)

    # --- lists -----------------------------------------------------------------------------------------

    async def ListPassages(
        self, request: analytics_pb2.ListPassagesRequest, context: Context
    ) -> analytics_pb2.ListPassagesResponse:
        async with _errors(context):
            query = passage_query(request)
            page = page_of(request, *PASSAGES_PAGE)
            rows, token = page.split(await queries.passages(self._pool(), query, page.offset, page.fetch))
            return analytics_pb2.ListPassagesResponse(
                passages=[passage_proto(_passage_of(r)) for r in rows], next_page_token=token
            )
        raise AssertionError("unreachable")

    async def ListViolations(
        self, request: analytics_pb2.ListViolationsRequest, context: Context
    ) -> analytics_pb2.ListViolationsResponse:
        async with _errors(context):
            query = violation_query(request)
            page = page_of(request, *LIST_PAGE)
            payloads, token = page.split(
                await queries.violations(self._pool(), query, page.offset, page.fetch)
            )
            return analytics_pb2.ListViolationsResponse(
                violations=[events_pb2.Violation.FromString(p) for p in payloads], next_page_token=token
            )
        raise AssertionError("unreachable")

    async def GetViolation(
        self, request: analytics_pb2.GetViolationRequest, context: Context
    ) -> events_pb2.Violation:
        async with _errors(context):
            if not request.violation_id:
                raise_for_violations([("violation_id", "required")])
            payload = await queries.violation(self._pool(), request.violation_id)
            if payload is None:
                raise status_error(
                    grpc.StatusCode.NOT_FOUND,
                    f"violation {request.violation_id!r} not found",
                    reason="VIOLATION_NOT_FOUND",
                )
            return events_pb2.Violation.FromString(payload)
        raise AssertionError("unreachable")

    async def ListAnomalies(
        self, request: analytics_pb2.ListAnomaliesRequest, context: Context
    ) -> analytics_pb2.ListAnomaliesResponse:
        async with _errors(context):
            query = anomaly_query(request)
            page = page_of(request, *LIST_PAGE)
            payloads, token = page.split(
                await queries.anomalies(self._pool(), query, page.offset, page.fetch)
            )
            return analytics_pb2.ListAnomaliesResponse(
                anomalies=[events_pb2.Anomaly.FromString(p) for p in payloads], next_page_token=token
            )
        raise AssertionError("unreachable")

    async def ListTelemetryReadings(
        self, request: analytics_pb2.ListTelemetryReadingsRequest, context: Context
    ) -> analytics_pb2.ListTelemetryReadingsResponse:
        async with _errors(context):
            query = reading_query(request)
            page = page_of(request, *PASSAGES_PAGE)
            rows, token = page.split(await queries.readings(self._pool(), query, page.offset, page.fetch))
            area = (
                Polygon([(v.longitude_deg, v.latitude_deg) for v in request.area.vertices])
                if request.HasField("area")
                else None
            )
            # The bounding box filtered in SQL; the exact outline here, so a page may come back short.
            kept = [r for r in rows if area is None or area.covers(Point(r["lon"], r["lat"]))]
            return analytics_pb2.ListTelemetryReadingsResponse(
                readings=[_reading_of(r) for r in kept], next_page_token=token
            )
        raise AssertionError("unreachable")

    # --- geofences -------------------------------------------------------------------------------------

    async def CreateGeofence(
        self, request: analytics_pb2.CreateGeofenceRequest, context: Context
    ) -> analytics_pb2.Geofence:
        async with _errors(context):
            raise_for_violations(geofence_rules.validate(request.geofence))
            if request.validate_only:
                return request.geofence
            created = await self._geofences().create(request.geofence)
            self.geofences_changed()
            return created
        raise AssertionError("unreachable")

    async def GetGeofence(
        self, request: analytics_pb2.GetGeofenceRequest, context: Context
    ) -> analytics_pb2.Geofence:
        async with _errors(context):
            if not request.geofence_id:
                raise_for_violations([("geofence_id", "required")])
            return await self._geofences().get(request.geofence_id)
        raise AssertionError("unreachable")

    async def ListGeofences(
        self, request: analytics_pb2.ListGeofencesRequest, context: Context
    ) -> analytics_pb2.ListGeofencesResponse:
        async with _errors(context):
            page = page_of(request, *LIST_PAGE)
            found, token = page.split(
                await self._geofences().page(request.device_id, page.offset, page.fetch)
            )
            return analytics_pb2.ListGeofencesResponse(geofences=found, next_page_token=token)
        raise AssertionError("unreachable")

    async def UpdateGeofence(
        self, request: analytics_pb2.UpdateGeofenceRequest, context: Context
    ) -> analytics_pb2.Geofence:
        async with _errors(context):
            paths = list(request.update_mask.paths)
            problems: list[tuple[str, str]] = []
            if not request.geofence.geofence_id:
                problems.append(("geofence.geofence_id", "required"))
            if not paths:
                problems.append(("update_mask", "name at least one field"))
            problems += [
                ("update_mask", f"{p!r} cannot be updated")
                for p in paths
                if p not in geofence_rules.UPDATABLE
            ]
            raise_for_violations(problems)
            updated = await self._geofences().update(request.geofence, paths)
            self.geofences_changed()
            return updated
        raise AssertionError("unreachable")

    async def DeleteGeofence(
        self, request: analytics_pb2.DeleteGeofenceRequest, context: Context
    ) -> empty_pb2.Empty:
        async with _errors(context):
            if not request.geofence_id:
                raise_for_violations([("geofence_id", "required")])
            await self._geofences().delete(request.geofence_id, request.etag)
            self.geofences_changed()
            return empty_pb2.Empty()
        raise AssertionError("unreachable")

    # --- introspection ---------------------------------------------------------------------------------

    async def GetPipelineStatus(
        self, request: analytics_pb2.GetPipelineStatusRequest, context: Context
    ) -> analytics_pb2.PipelineStatus:
        async with _errors(context):
            status = analytics_pb2.PipelineStatus(
                instance_id=self.instance_id,
                start_time=timestamp(self.start_time),
                timescaledb_enabled=self.timescaledb,
            )
            state = await outbox_state(self._pool())
            status.outbox_pending = state.pending
            status.outbox_oldest_age.CopyFrom(duration(state.oldest_age_s))
            consumer = self.consumer
            if consumer is not None:
                stats = consumer.stats
                status.consumer_group = consumer.group_id
                status.active_tracks = consumer.active_tracks
                status.cameras_tracked = len(consumer.pipelines)
                status.devices_tracked = consumer.devices_tracked
                status.detections_per_second = stats.detections_per_second(asyncio.get_running_loop().time())
                status.events_processed_total = stats.events_processed
                status.events_duplicate_total = stats.events_duplicate
                if stats.last_commit_time is not None:
                    status.last_commit_time.CopyFrom(timestamp(stats.last_commit_time))
                for tp, committed, end in await consumer.partitions():
                    status.partitions.add(
                        topic=tp.topic,
                        partition=tp.partition,
                        committed_offset=committed,
                        end_offset=end,
                        lag=max(0, end - committed),
                    )
            return status
        raise AssertionError("unreachable")


# --- translation ------------------------------------------------------------------------------------------

_SOURCES: Final = {
    "raw": _F.METRICS_SOURCE_RAW,
    "1m": _F.METRICS_SOURCE_ROLLUP_1M,
    "1h": _F.METRICS_SOURCE_ROLLUP_1H,
}
_CSV_COLUMNS: Final = (
    (_F.TRAFFIC_METRIC_FIELD_VEHICLE_COUNT, "vehicle_count"),
    (_F.TRAFFIC_METRIC_FIELD_VEHICLE_COUNT, "flow_vehicles_per_hour"),
    (_F.TRAFFIC_METRIC_FIELD_CLASS_COUNTS, "class_counts"),
    (_F.TRAFFIC_METRIC_FIELD_MEAN_SPEED, "mean_speed_kmh"),
    (_F.TRAFFIC_METRIC_FIELD_P85_SPEED, "p85_speed_kmh"),
    (_F.TRAFFIC_METRIC_FIELD_OCCUPANCY, "occupancy_ratio"),
    (_F.TRAFFIC_METRIC_FIELD_HEADWAY, "mean_headway_s"),
    (_F.TRAFFIC_METRIC_FIELD_CONGESTION_LEVEL, "congestion_level"),
)


def _fields(requested: Iterable[int]) -> frozenset[int]:
    chosen = frozenset(int(m) for m in requested) & ALL_METRICS
    return chosen or ALL_METRICS


def metrics_breakdown(value: int) -> queries.Breakdown:
    """The breakdown of a live stream (unset = per camera)."""
    if value == _F.METRICS_BREAKDOWN_LANE:
        return "lane"
    if value == _F.METRICS_BREAKDOWN_ZONE:
        return "zone"
    return "camera"


BucketBuilder = Callable[[Any, analytics_pb2.TrafficMetricBucket | None], analytics_pb2.TrafficMetricBucket]


async def _metric_rows(
    pool: asyncpg.Pool,
    query: queries.MetricsQuery,
    source: queries.Source,
    shape: MetricBucketShape,
    offset: int,
    limit: int,
) -> tuple[Sequence[Any], BucketBuilder]:
    """``limit`` buckets from ``offset``, and how ``shape`` turns each into a TrafficMetricBucket: 10 s
    buckets are the stored windows as they are, longer ones sums over windows or rollups."""
    if queries.single_windows(query, source):
        return await queries.metric_windows(pool, query, offset, limit), shape.window
    rows = await queries.traffic_metrics(pool, query, source, offset, limit, classes=shape.needs_classes)
    return rows, shape.bucket


def _row_of_window(window: MetricWindow) -> MetricsRow:
    count = window.vehicle_count
    return MetricsRow(
        camera_id=window.camera_id,
        lane=window.lane,
        zone=window.zone,
        bucket_start=window.time,
        vehicle_count=count,
        counts_by_class=dict(window.counts_by_class),
        speed_sum=(window.mean_speed_kmh or 0.0) * count,
        speed_weight=count if window.mean_speed_kmh is not None else 0,
        p85_sum=0.0,
        p85_weight=0,
        p85_single=window.p85_speed_kmh,
        occupancy_sum=window.occupancy or 0.0,
        occupancy_n=1 if window.occupancy is not None else 0,
        headway_sum=(window.headway_s or 0.0) * count,
        headway_weight=count if window.headway_s is not None else 0,
        congestion_max=window.congestion_level,
        window_count=1,
    )


def _live_update(
    windows: Sequence[MetricWindow], fields: frozenset[int]
) -> analytics_pb2.StreamLiveMetricsResponse:
    update = analytics_pb2.StreamLiveMetricsResponse(generate_time=timestamp(datetime.now(UTC)))
    for window in windows:
        shape = MetricBucketShape(window.window_s or queries.RAW_WINDOW_S, fields, ())
        shape.bucket(_row_of_window(window), update.windows.add())
    return update


def _selected(window: MetricWindow, cameras: frozenset[str], breakdown: queries.Breakdown) -> bool:
    if cameras and window.camera_id not in cameras:
        return False
    if breakdown == "camera":
        return not window.lane and not window.zone
    if breakdown == "lane":
        return bool(window.lane) and not window.zone
    return bool(window.zone)


def _passage_of(row: asyncpg.Record) -> Passage:
    return Passage(
        time=row["time"],
        camera_id=row["camera_id"],
        event_id=str(row["event_id"]),
        track_id=row["track_id"],
        line_id=row["line_id"],
        lane=row["lane"],
        direction=row["direction"],
        object_class=row["object_class"],
        speed_kmh=row["speed_kmh"],
        entry_time=row["entry_time"] or row["time"],
        exit_time=row["exit_time"] or row["time"],
        wrong_way=row["wrong_way"],
        speed_uncertainty_kmh=row["speed_uncertainty_kmh"] or 0.0,
        sample_count=row["sample_count"] or 0,
        crossing_x_m=row["crossing_x_m"] or 0.0,
        crossing_y_m=row["crossing_y_m"] or 0.0,
        confidence=row["confidence"] or 0.0,
    )


def _reading_of(row: asyncpg.Record) -> events_pb2.TelemetryReading:
    reading = events_pb2.TelemetryReading(
        event_id=str(row["event_id"]),
        device_id=row["device_id"],
        sequence=row["seq"],
        reading_time=timestamp(row["time"]),
        position=common_pb2.GeoPoint(latitude_deg=row["lat"], longitude_deg=row["lon"]),
        speed_kmh=row["speed_kmh"] or 0.0,
        heading_deg=row["heading_deg"] or 0.0,
        horizontal_accuracy_m=row["horizontal_accuracy_m"] or 0.0,
    )
    if row["measurements"]:
        reading.measurements.update(json.loads(row["measurements"]))
    return reading


def _csv_row(bucket: analytics_pb2.TrafficMetricBucket, fields: frozenset[int], zone: ZoneInfo) -> list[str]:
    start = bucket.bucket_start_time.ToDatetime(UTC).astimezone(zone).isoformat()
    values = {
        "vehicle_count": str(bucket.vehicle_count),
        "flow_vehicles_per_hour": f"{bucket.flow_vehicles_per_hour:.1f}",
        "class_counts": ";".join(
            f"{object_class_label(c.object_class)}={c.count}" for c in bucket.class_counts
        ),
        "mean_speed_kmh": f"{bucket.mean_speed_kmh:.2f}" if bucket.HasField("mean_speed_kmh") else "",
        "p85_speed_kmh": f"{bucket.p85_speed_kmh:.2f}" if bucket.HasField("p85_speed_kmh") else "",
        "occupancy_ratio": f"{bucket.occupancy_ratio:.4f}" if bucket.HasField("occupancy_ratio") else "",
        "mean_headway_s": f"{bucket.mean_headway_s:.2f}" if bucket.HasField("mean_headway_s") else "",
        "congestion_level": enum_label(
            common_pb2.CongestionLevel, bucket.congestion_level, "CONGESTION_LEVEL_"
        ),
    }
    row = [bucket.camera_id, bucket.lane_id, bucket.zone_id, start, str(bucket.bucket.seconds)]
    return row + [values[column] for field, column in _CSV_COLUMNS if field in fields]


def _chunk(out: io.StringIO, rows: int, first: bool, name: str) -> analytics_pb2.ExportMetricsResponse:
    data = out.getvalue().encode()
    out.seek(0)
    out.truncate()
    chunk = analytics_pb2.ExportMetricsResponse(chunk=data, row_count=rows)
    if first:
        chunk.content_type = "text/csv; charset=utf-8"
        chunk.filename = name
    return chunk
