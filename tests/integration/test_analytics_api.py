"""The analyst API against real PostgreSQL: bucketed metrics agree across raw windows and rollups, CSV export,
live windows, geofence CRUD feeding the telemetry rules, and INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from itsmesh.v1 import analytics_pb2, common_pb2, events_pb2
from mesh.host import ServiceHost
from mesh.status import status_details
from services.analytics.model import MetricWindow
from services.analytics.writer import WriteBatch, prepare_connection, write_batch
from tests.integration.analytics_host import (
    Topics,
    analytics_host,
    analytics_stub,
    eventually,
    publish_all,
    reading,
    stamp,
)

T0 = datetime(2026, 5, 4, 6, 0, tzinfo=UTC)  # a Monday, on the hour
HOURS = 3


@pytest.fixture(scope="module")
async def host(infra: Any) -> AsyncIterator[ServiceHost]:
    topics = Topics.fresh()
    await topics.create(infra.kafka_bootstrap_servers)
    async with analytics_host(infra, topics, relay_alerts=False, telemetry_speed_limit_kmh=200.0) as started:
        started.topics = topics  # type: ignore[attr-defined]
        yield started


@pytest.fixture
async def stub(host: ServiceHost) -> AsyncIterator[Any]:
    async with analytics_stub(host) as client:
        yield client


def _windows(camera_id: str, start: datetime, count: int) -> list[MetricWindow]:
    """Camera-wide and per-lane windows with varying values (some without speed)."""
    out = []
    for i in range(count):
        moment = start + timedelta(seconds=10 * i)
        n = (i * 7) % 5
        speed = 40.0 + (i % 13) if n else None
        for lane in ("", "l1"):
            out.append(
                MetricWindow(
                    time=moment,
                    camera_id=camera_id,
                    lane=lane,
                    zone="",
                    window_s=10,
                    vehicle_count=n,
                    counts_by_class={"car": n - n // 3, "truck": n // 3} if n else {},
                    mean_speed_kmh=speed,
                    p85_speed_kmh=speed + 5.0 if speed is not None else None,
                    occupancy=(i % 10) / 20.0,
                    headway_s=3.0 + i % 4 if n > 1 else None,
                    congestion_level=1 + i % 3,
                )
            )
    return out


async def _store(infra: Any, windows: list[MetricWindow]) -> None:
    connection = await asyncpg.connect(infra.database_url)
    try:
        await prepare_connection(connection)
        await write_batch(connection, WriteBatch(metrics=windows))
    finally:
        await connection.close()


def _request(camera_id: str, start: datetime, end: datetime, bucket_s: int, **extra: Any) -> Any:
    return analytics_pb2.GetTrafficMetricsRequest(
        camera_ids=[camera_id],
        time_range=common_pb2.TimeRange(start_time=stamp(start), end_time=stamp(end)),
        bucket=duration_pb2.Duration(seconds=bucket_s),
        **extra,
    )


async def _all_buckets(stub: Any, request: Any) -> tuple[list[Any], int]:
    buckets, source = [], 0
    while True:
        response = await stub.GetTrafficMetrics(request)
        buckets.extend(response.buckets)
        source = response.source
        if not response.next_page_token:
            return buckets, source
        request.page_token = response.next_page_token


def _totals(buckets: list[Any]) -> tuple[int, float, int]:
    count = sum(b.vehicle_count for b in buckets)
    speed = sum(
        b.mean_speed_kmh * sum(c.count for c in b.class_counts)
        for b in buckets
        if b.HasField("mean_speed_kmh")
    )
    return count, round(speed, 6), sum(b.window_count for b in buckets)


async def test_buckets_agree_between_raw_windows_and_rollups(infra: Any, stub: Any) -> None:
    camera_id = f"cam-{uuid.uuid4().hex[:8]}"
    await _store(infra, _windows(camera_id, T0, HOURS * 360))
    end = T0 + timedelta(hours=HOURS)
    raw, raw_source = await _all_buckets(stub, _request(camera_id, T0, end, 10, page_size=500))
    minute, minute_source = await _all_buckets(stub, _request(camera_id, T0, end, 60))
    hour, hour_source = await _all_buckets(stub, _request(camera_id, T0, end, 3600))
    assert (raw_source, minute_source, hour_source) == (
        analytics_pb2.METRICS_SOURCE_RAW,
        analytics_pb2.METRICS_SOURCE_ROLLUP_1M,
        analytics_pb2.METRICS_SOURCE_ROLLUP_1H,
    )
    assert len(raw) == HOURS * 360
    assert len(minute) == HOURS * 60
    assert len(hour) == HOURS
    assert _totals(raw) == _totals(minute) == _totals(hour)
    # The same hourly buckets computed from the raw windows (an end off the hour forces the raw table).
    from_raw, source = await _all_buckets(stub, _request(camera_id, T0, end + timedelta(seconds=10), 3600))
    assert source == analytics_pb2.METRICS_SOURCE_RAW
    for rolled, direct in zip(hour, from_raw, strict=True):
        assert rolled.bucket_start_time == direct.bucket_start_time
        assert rolled.vehicle_count == direct.vehicle_count
        assert list(rolled.class_counts) == list(direct.class_counts)
        assert rolled.window_count == direct.window_count == 360
        assert rolled.congestion_level == direct.congestion_level
        for name in ("mean_speed_kmh", "p85_speed_kmh", "occupancy_ratio", "mean_headway_s"):
            assert getattr(rolled, name) == pytest.approx(getattr(direct, name))
        assert rolled.flow_vehicles_per_hour == rolled.vehicle_count
    # lanes, classes and the requested fields only
    lanes, _ = await _all_buckets(
        stub,
        _request(
            camera_id,
            T0,
            end,
            3600,
            breakdown=analytics_pb2.METRICS_BREAKDOWN_LANE,
            object_classes=[common_pb2.OBJECT_CLASS_TRUCK],
            metrics=[analytics_pb2.TRAFFIC_METRIC_FIELD_VEHICLE_COUNT],
        ),
    )
    assert {b.lane_id for b in lanes} == {"l1"}
    assert sum(b.vehicle_count for b in lanes) == sum(
        c.count for b in hour for c in b.class_counts if c.object_class == common_pb2.OBJECT_CLASS_TRUCK
    )
    assert not any(b.HasField("mean_speed_kmh") for b in lanes)


async def test_each_breakdown_reads_exactly_its_series(infra: Any, stub: Any) -> None:
    camera_id = f"cam-{uuid.uuid4().hex[:8]}"
    series = [("", ""), ("l1", ""), ("l2", ""), ("", "z1"), ("l1", "z2")]
    windows = [
        MetricWindow(
            time=T0 + timedelta(seconds=10 * i),
            camera_id=camera_id,
            lane=lane,
            zone=zone,
            window_s=10,
            vehicle_count=k + 1,
            counts_by_class={"car": k + 1},
        )
        for i in range(12)
        for k, (lane, zone) in enumerate(series)
    ]
    await _store(infra, windows)
    expected = {
        analytics_pb2.METRICS_BREAKDOWN_CAMERA: {("", ""): 12},
        analytics_pb2.METRICS_BREAKDOWN_LANE: {("l1", ""): 24, ("l2", ""): 36},
        analytics_pb2.METRICS_BREAKDOWN_ZONE: {("", "z1"): 48, ("l1", "z2"): 60},
    }
    for bucket_s in (10, 60):  # the raw windows, then the minute rollup
        for breakdown, totals in expected.items():
            buckets, _ = await _all_buckets(
                stub, _request(camera_id, T0, T0 + timedelta(minutes=2), bucket_s, breakdown=breakdown)
            )
            found: dict[tuple[str, str], int] = {}
            for b in buckets:
                found[(b.lane_id, b.zone_id)] = found.get((b.lane_id, b.zone_id), 0) + b.vehicle_count
            assert found == totals, (bucket_s, breakdown)


async def test_export_streams_the_same_buckets_as_csv(infra: Any, stub: Any) -> None:
    camera_id = f"cam-{uuid.uuid4().hex[:8]}"
    await _store(infra, _windows(camera_id, T0, 360))
    request = analytics_pb2.ExportMetricsRequest(
        camera_ids=[camera_id],
        time_range=common_pb2.TimeRange(start_time=stamp(T0), end_time=stamp(T0 + timedelta(hours=1))),
        bucket=duration_pb2.Duration(seconds=60),
        time_zone="Europe/Berlin",
    )
    chunks = [chunk async for chunk in stub.ExportMetrics(request)]
    assert chunks[0].content_type == "text/csv; charset=utf-8"
    assert chunks[0].filename == f"metrics_{camera_id}_20260504.csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(c.chunk for c in chunks).decode())))
    assert len(rows) == sum(c.row_count for c in chunks) == 60
    assert rows[0]["bucket_start_time"] == "2026-05-04T08:00:00+02:00"
    buckets, _ = await _all_buckets(stub, _request(camera_id, T0, T0 + timedelta(hours=1), 60))
    assert [int(r["vehicle_count"]) for r in rows] == [b.vehicle_count for b in buckets]


async def test_live_stream_sends_latest_then_new_windows(infra: Any, host: ServiceHost, stub: Any) -> None:
    camera_id = f"cam-{uuid.uuid4().hex[:8]}"
    recent = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    await _store(infra, _windows(camera_id, recent, 3))
    call = stub.StreamLiveMetrics(
        analytics_pb2.StreamLiveMetricsRequest(camera_ids=[camera_id], send_latest=True)
    )
    first = await call.read()
    assert [(w.camera_id, w.lane_id) for w in first.windows] == [(camera_id, "")]
    assert first.windows[0].bucket_start_time == stamp(recent + timedelta(seconds=20))
    servicer: Any = host.spec.grpc_services[0].servicer
    await eventually(lambda: _true(servicer.live.subscribers >= 1), what="the subscription")
    # written by another process's transaction: announced through PostgreSQL, not in-process
    new = _windows(camera_id, recent + timedelta(seconds=30), 1)
    await _store(infra, new + _windows(f"cam-{uuid.uuid4().hex[:8]}", recent, 1))
    second = await call.read()
    assert [(w.camera_id, w.lane_id, w.vehicle_count) for w in second.windows] == [
        (camera_id, "", new[0].vehicle_count)
    ]
    call.cancel()


async def _true(value: bool) -> bool:
    return value


def _square(lat: float, lon: float, half: float) -> common_pb2.GeoPolygon:
    corners = [
        (lat - half, lon - half),
        (lat - half, lon + half),
        (lat + half, lon + half),
        (lat + half, lon - half),
    ]
    return common_pb2.GeoPolygon(
        vertices=[common_pb2.GeoPoint(latitude_deg=a, longitude_deg=o) for a, o in corners]
    )


async def test_geofence_crud_and_exit_violation(infra: Any, host: ServiceHost, stub: Any) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    fence_id = f"depot-{uuid.uuid4().hex[:6]}"
    geofence = analytics_pb2.Geofence(
        geofence_id=fence_id,
        name="depot",
        kind=analytics_pb2.GEOFENCE_KIND_KEEP_INSIDE,
        boundary=_square(52.5, 13.4, 0.01),
        device_ids=[device],
        severity=common_pb2.SEVERITY_HIGH,
    )
    dry = await stub.CreateGeofence(
        analytics_pb2.CreateGeofenceRequest(geofence=geofence, validate_only=True)
    )
    assert dry.geofence_id == fence_id
    assert not dry.etag
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetGeofence(analytics_pb2.GetGeofenceRequest(geofence_id=fence_id))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    created = await stub.CreateGeofence(analytics_pb2.CreateGeofenceRequest(geofence=geofence))
    assert created.etag
    assert created.HasField("create_time")
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await stub.CreateGeofence(analytics_pb2.CreateGeofenceRequest(geofence=geofence))
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = await stub.ListGeofences(analytics_pb2.ListGeofencesRequest(device_id=device))
    assert fence_id in [g.geofence_id for g in listed.geofences]
    renamed = await stub.UpdateGeofence(
        analytics_pb2.UpdateGeofenceRequest(
            geofence=analytics_pb2.Geofence(geofence_id=fence_id, name="main depot", etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        )
    )
    assert renamed.name == "main depot"
    assert renamed.etag != created.etag
    assert renamed.boundary == geofence.boundary
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stub.UpdateGeofence(
            analytics_pb2.UpdateGeofenceRequest(
                geofence=analytics_pb2.Geofence(geofence_id=fence_id, name="x", etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            )
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED

    # the telemetry rules use it: inside, then outside → one geofence exit
    topics: Topics = host.topics  # type: ignore[attr-defined]
    now = datetime.now(UTC) - timedelta(minutes=1)
    events = [
        reading(device, 1, now, 52.5, 13.4, 30.0),
        reading(device, 2, now + timedelta(seconds=5), 52.5, 13.405, 30.0),
        reading(device, 3, now + timedelta(seconds=10), 52.5, 13.45, 30.0),
        reading(device, 4, now + timedelta(seconds=15), 52.5, 13.46, 30.0),
    ]
    await publish_all(infra.kafka_bootstrap_servers, topics.telemetry, events, lambda e: e.device_id)
    request = analytics_pb2.ListViolationsRequest(
        device_ids=[device], time_range=common_pb2.TimeRange(start_time=stamp(now - timedelta(minutes=1)))
    )

    async def exited() -> bool:
        return len((await stub.ListViolations(request)).violations) == 1

    await eventually(exited, what="the geofence exit")
    violation = (await stub.ListViolations(request)).violations[0]
    assert violation.kind == events_pb2.VIOLATION_KIND_GEOFENCE_EXIT
    assert violation.geofence.geofence_id == fence_id
    assert violation.severity == common_pb2.SEVERITY_HIGH

    await stub.DeleteGeofence(analytics_pb2.DeleteGeofenceRequest(geofence_id=fence_id, etag=renamed.etag))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.DeleteGeofence(analytics_pb2.DeleteGeofenceRequest(geofence_id=fence_id))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def _range(start: datetime | None, end: datetime | None) -> common_pb2.TimeRange:
    value = common_pb2.TimeRange()
    if start is not None:
        value.start_time.CopyFrom(stamp(start))
    if end is not None:
        value.end_time.CopyFrom(stamp(end))
    return value


_DAY = timedelta(days=1)
_METRICS = analytics_pb2.GetTrafficMetricsRequest
_BAD: list[tuple[str, Any, str]] = [
    ("GetTrafficMetrics", _METRICS(time_range=_range(T0, T0 + _DAY)), "camera_ids"),
    ("GetTrafficMetrics", _METRICS(camera_ids=["c"]), "time_range.start_time"),
    ("GetTrafficMetrics", _METRICS(camera_ids=["c"], time_range=_range(T0, T0)), "time_range.end_time"),
    (
        "GetTrafficMetrics",
        _METRICS(camera_ids=["c"], time_range=_range(T0 + _DAY, T0)),
        "time_range.end_time",
    ),
    (
        "GetTrafficMetrics",
        _METRICS(
            camera_ids=["c"], time_range=_range(T0, T0 + _DAY), bucket=duration_pb2.Duration(seconds=15)
        ),
        "bucket",
    ),
    (
        "GetTrafficMetrics",
        _METRICS(
            camera_ids=["c"],
            time_range=_range(T0, T0 + _DAY),
            bucket=duration_pb2.Duration(seconds=2 * 86400),
        ),
        "bucket",
    ),
    (
        "GetTrafficMetrics",
        _METRICS(camera_ids=["c"], time_range=_range(T0, T0 + _DAY), bucket=duration_pb2.Duration(nanos=5)),
        "bucket",
    ),
    (
        "GetTrafficMetrics",
        _METRICS(camera_ids=["c"], time_range=_range(T0, T0 + _DAY), time_zone="Mars/Base"),
        "time_zone",
    ),
    (
        "GetTrafficMetrics",
        _METRICS(camera_ids=["c"], time_range=_range(T0, T0 + _DAY), page_token="x!"),
        "page_token",
    ),
    (
        "GetTrafficMetrics",
        _METRICS(camera_ids=["c"], time_range=_range(T0, T0 + _DAY), page_size=-1),
        "page_size",
    ),
    (
        "GetTrafficMetrics",
        _METRICS(camera_ids=[f"c{i}" for i in range(101)], time_range=_range(T0, T0 + _DAY)),
        "camera_ids",
    ),
    (
        "ListPassages",
        analytics_pb2.ListPassagesRequest(time_range=_range(T0, T0 - _DAY)),
        "time_range.end_time",
    ),
    ("ListPassages", analytics_pb2.ListPassagesRequest(), "time_range.start_time"),
    (
        "ListPassages",
        analytics_pb2.ListPassagesRequest(time_range=_range(T0, None), min_speed_kmh=50, max_speed_kmh=40),
        "max_speed_kmh",
    ),
    (
        "ListViolations",
        analytics_pb2.ListViolationsRequest(time_range=_range(None, T0)),
        "time_range.start_time",
    ),
    ("ListAnomalies", analytics_pb2.ListAnomaliesRequest(time_range=_range(T0, T0)), "time_range.end_time"),
    (
        "ListTelemetryReadings",
        analytics_pb2.ListTelemetryReadingsRequest(time_range=_range(T0, None)),
        "device_ids",
    ),
    ("GetViolation", analytics_pb2.GetViolationRequest(), "violation_id"),
    (
        "CreateGeofence",
        analytics_pb2.CreateGeofenceRequest(
            geofence=analytics_pb2.Geofence(geofence_id="Bad Id", name="n", kind=1)
        ),
        "geofence.geofence_id",
    ),
    (
        "CreateGeofence",
        analytics_pb2.CreateGeofenceRequest(
            geofence=analytics_pb2.Geofence(
                geofence_id="g",
                name="n",
                kind=1,
                boundary=common_pb2.GeoPolygon(vertices=[common_pb2.GeoPoint()] * 2),
            )
        ),
        "geofence.boundary.vertices",
    ),
    (
        "UpdateGeofence",
        analytics_pb2.UpdateGeofenceRequest(geofence=analytics_pb2.Geofence(geofence_id="g")),
        "update_mask",
    ),
]


@pytest.mark.parametrize(("method", "request_message", "field"), _BAD, ids=[f"{m}-{f}" for m, _, f in _BAD])
async def test_bad_requests_name_the_field(stub: Any, method: str, request_message: Any, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await getattr(stub, method)(request_message)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [name for name, _ in status_details(failure.value).field_violations]


async def test_export_with_a_bad_bucket_fails_before_any_chunk(stub: Any) -> None:
    request = analytics_pb2.ExportMetricsRequest(
        camera_ids=["c"], time_range=_range(T0, T0 + _DAY), bucket=duration_pb2.Duration(seconds=25)
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        async for _ in stub.ExportMetrics(request):
            pass
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [name for name, _ in status_details(failure.value).field_violations] == ["bucket"]


async def test_unknown_violation_is_not_found(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.GetViolation(analytics_pb2.GetViolationRequest(violation_id=str(uuid.uuid4())))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
