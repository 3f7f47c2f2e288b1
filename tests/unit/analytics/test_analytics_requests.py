"""Analyst request validation (requests.py), page tokens (paging.py) and the raw/rollup source choice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from itsmesh.v1 import analytics_pb2, common_pb2
from mesh.status import StatusError
from services.analytics.paging import filters_digest, next_token, page_offset, page_size
from services.analytics.queries import MetricsQuery, choose_source
from services.analytics.requests import (
    MAX_CAMERAS,
    anomaly_query,
    bucket_seconds,
    metrics_query,
    passage_query,
    reading_query,
    violation_query,
)

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _range(start: datetime | None = START, end: datetime | None = None) -> common_pb2.TimeRange:
    value = common_pb2.TimeRange()
    if start is not None:
        value.start_time.FromDatetime(start)
    if end is not None:
        value.end_time.FromDatetime(end)
    return value


def _metrics(**fields: Any) -> analytics_pb2.GetTrafficMetricsRequest:
    values: dict[str, Any] = {
        "camera_ids": ["cam-1"],
        "time_range": _range(START, START + timedelta(hours=1)),
        **fields,
    }
    return analytics_pb2.GetTrafficMetricsRequest(**values)


def _violated_fields(error: StatusError) -> list[str]:
    assert error.grpc_code is grpc.StatusCode.INVALID_ARGUMENT
    for detail in error.status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return [v.field for v in bad.field_violations]
    raise AssertionError("no BadRequest detail")


def _rejected(call: Any, request: Any) -> list[str]:
    with pytest.raises(StatusError) as raised:
        call(request)
    return _violated_fields(raised.value)


# --- metrics requests -------------------------------------------------------------------------------------


def test_a_metrics_request_becomes_a_query_with_its_defaults() -> None:
    query = metrics_query(_metrics(camera_ids=["cam-1", "cam-2", "cam-1"]))
    assert query == MetricsQuery(("cam-1", "cam-2"), START, START + timedelta(hours=1), 10, "camera", (), "")


def test_breakdown_lanes_bucket_and_time_zone_are_carried_over() -> None:
    query = metrics_query(
        _metrics(
            bucket=duration_pb2.Duration(seconds=3600),
            breakdown=analytics_pb2.METRICS_BREAKDOWN_LANE,
            lane_ids=["l1", "l2"],
            time_zone="Europe/Berlin",
        )
    )
    assert (query.bucket_s, query.breakdown, query.lane_ids, query.time_zone) == (
        3600,
        "lane",
        ("l1", "l2"),
        "Europe/Berlin",
    )
    assert metrics_query(_metrics(time_zone="UTC")).time_zone == ""


def test_a_missing_end_means_now() -> None:
    before = datetime.now(UTC)
    query = metrics_query(_metrics(time_range=_range(START)))
    assert before <= query.end <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"camera_ids": []}, "camera_ids"),
        ({"camera_ids": [f"c{i}" for i in range(MAX_CAMERAS + 1)]}, "camera_ids"),
        ({"camera_ids": ["cam-1", ""]}, "camera_ids"),
        ({"time_range": _range(None, START)}, "time_range.start_time"),
        ({"time_range": _range(START, START)}, "time_range.end_time"),
        ({"time_range": _range(START, START - timedelta(seconds=1))}, "time_range.end_time"),
        ({"bucket": duration_pb2.Duration(seconds=5)}, "bucket"),
        ({"bucket": duration_pb2.Duration(seconds=15)}, "bucket"),
        ({"bucket": duration_pb2.Duration(seconds=10, nanos=1)}, "bucket"),
        ({"bucket": duration_pb2.Duration(seconds=86_410)}, "bucket"),
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"breakdown": 99}, "breakdown"),
    ],
)
def test_bad_metrics_requests_name_the_field(fields: dict[str, Any], named: str) -> None:
    request = _metrics()
    for name, value in fields.items():
        request.ClearField(name)
        if isinstance(value, list):
            getattr(request, name).extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    assert _rejected(metrics_query, request) == [named]


def test_every_problem_of_a_request_is_listed() -> None:
    request = analytics_pb2.GetTrafficMetricsRequest(
        bucket=duration_pb2.Duration(seconds=7), time_zone="Nowhere"
    )
    assert _rejected(metrics_query, request) == ["camera_ids", "time_range.start_time", "bucket", "time_zone"]


@pytest.mark.parametrize("seconds", [10, 60, 3600, 86_400])
def test_buckets_from_10_s_to_a_day_in_steps_of_10_s_are_accepted(seconds: int) -> None:
    problems: list[tuple[str, str]] = []
    request = _metrics(bucket=duration_pb2.Duration(seconds=seconds))
    assert bucket_seconds(request, problems) == seconds
    assert problems == []


# --- list requests ----------------------------------------------------------------------------------------


def test_a_passage_request_maps_classes_direction_speeds_and_order() -> None:
    request = analytics_pb2.ListPassagesRequest(
        time_range=_range(START, START + timedelta(minutes=5)),
        camera_ids=["cam-1"],
        object_classes=[common_pb2.OBJECT_CLASS_CAR, common_pb2.OBJECT_CLASS_BUS],
        direction=common_pb2.CROSSING_DIRECTION_REVERSE,
        min_speed_kmh=20.0,
        max_speed_kmh=80.0,
        wrong_way_only=True,
        order=common_pb2.SORT_ORDER_OLDEST_FIRST,
    )
    query = passage_query(request)
    assert query.object_classes == ("car", "bus")
    assert (query.direction, query.min_speed_kmh, query.max_speed_kmh) == ("reverse", 20.0, 80.0)
    assert query.wrong_way_only
    assert not query.newest_first
    assert passage_query(analytics_pb2.ListPassagesRequest(time_range=_range())).newest_first


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"min_speed_kmh": 50.0, "max_speed_kmh": 50.0}, ["max_speed_kmh"]),
        ({"direction": 7}, ["direction"]),
        ({"time_range": common_pb2.TimeRange()}, ["time_range.start_time"]),
    ],
)
def test_bad_passage_requests_name_the_field(fields: dict[str, Any], named: list[str]) -> None:
    request = analytics_pb2.ListPassagesRequest(**{"time_range": _range(), **fields})
    assert _rejected(passage_query, request) == named


def test_violation_and_anomaly_requests_keep_their_filters() -> None:
    violations = violation_query(
        analytics_pb2.ListViolationsRequest(
            time_range=_range(),
            device_ids=["dev-1"],
            min_severity=common_pb2.SEVERITY_HIGH,
            track_id="t7",
        )
    )
    assert (violations.device_ids, violations.min_severity, violations.track_id) == (
        ("dev-1",),
        common_pb2.SEVERITY_HIGH,
        "t7",
    )
    anomalies = anomaly_query(analytics_pb2.ListAnomaliesRequest(time_range=_range(), lane_ids=["l2"]))
    assert anomalies.lane_ids == ("l2",)
    for call, request in (
        (violation_query, analytics_pb2.ListViolationsRequest()),
        (anomaly_query, analytics_pb2.ListAnomaliesRequest()),
    ):
        assert _rejected(call, request) == ["time_range.start_time"]


def test_a_reading_request_turns_its_area_into_a_bounding_box() -> None:
    area = common_pb2.GeoPolygon(
        vertices=[
            common_pb2.GeoPoint(latitude_deg=52.5, longitude_deg=13.3),
            common_pb2.GeoPoint(latitude_deg=52.6, longitude_deg=13.5),
            common_pb2.GeoPoint(latitude_deg=52.4, longitude_deg=13.4),
        ]
    )
    query = reading_query(
        analytics_pb2.ListTelemetryReadingsRequest(device_ids=["dev-1"], time_range=_range(), area=area)
    )
    assert query.bbox == (13.3, 52.4, 13.5, 52.6)
    assert (
        reading_query(
            analytics_pb2.ListTelemetryReadingsRequest(device_ids=["dev-1"], time_range=_range())
        ).bbox
        is None
    )
    two = common_pb2.GeoPolygon(vertices=list(area.vertices)[:2])
    request = analytics_pb2.ListTelemetryReadingsRequest(time_range=_range(), area=two)
    assert _rejected(reading_query, request) == ["device_ids", "area.vertices"]


# --- page tokens ------------------------------------------------------------------------------------------


def test_a_token_resumes_at_its_offset_for_the_same_filters() -> None:
    request = _metrics(page_size=50)
    follow_up = _metrics(page_size=20, page_token=next_token(request, 150))
    assert page_offset(follow_up) == 150
    assert page_offset(_metrics()) == 0


def test_the_digest_ignores_paging_fields_only() -> None:
    assert filters_digest(_metrics(page_size=1, page_token="x")) == filters_digest(_metrics())
    assert filters_digest(_metrics(camera_ids=["cam-2"])) != filters_digest(_metrics())


@pytest.mark.parametrize("token", ["not-base64!", "c2hvcnQ="])
def test_a_foreign_or_garbled_token_is_invalid_argument(token: str) -> None:
    assert _rejected(page_offset, _metrics(page_token=token)) == ["page_token"]


def test_a_token_of_other_filters_is_refused() -> None:
    token = next_token(_metrics(camera_ids=["cam-2"]), 100)
    with pytest.raises(StatusError) as raised:
        page_offset(_metrics(page_token=token))
    assert _violated_fields(raised.value) == ["page_token"]
    assert "same filters" in raised.value.message


def test_page_size_defaults_caps_and_refuses_negatives() -> None:
    assert page_size(_metrics(), 1000, 10_000) == 1000
    assert page_size(_metrics(page_size=25), 1000, 10_000) == 25
    assert page_size(_metrics(page_size=50_000), 1000, 10_000) == 10_000
    assert _rejected(lambda r: page_size(r, 1000, 10_000), _metrics(page_size=-1)) == ["page_size"]


# --- raw or rollup ----------------------------------------------------------------------------------------


def _query(start: datetime, end: datetime, bucket_s: int, time_zone: str = "") -> MetricsQuery:
    return MetricsQuery(("cam-1",), start, end, bucket_s, time_zone=time_zone)


@pytest.mark.parametrize(
    ("bucket_s", "start_offset_s", "end_offset_s", "source"),
    [
        (10, 0, 86_400, "raw"),  # 10 s buckets: only the raw windows have them
        (30, 0, 3600, "raw"),  # not a whole number of minutes
        (60, 0, 3600, "1m"),
        (300, 0, 86_400, "1m"),
        (3600, 0, 86_400, "1h"),
        (86_400, 0, 30 * 86_400, "1h"),
        (3600, 60, 7260, "1m"),  # hourly buckets from a minute boundary: minute rows fit, hour rows not
        (3600, 10, 3610, "raw"),  # off every minute boundary
        (60, 0, 3610, "raw"),  # the end cuts a minute
    ],
)
def test_the_coarsest_source_that_fits_exactly_is_chosen(
    bucket_s: int, start_offset_s: int, end_offset_s: int, source: str
) -> None:
    midnight = datetime(2026, 3, 2, tzinfo=UTC)
    query = _query(
        midnight + timedelta(seconds=start_offset_s), midnight + timedelta(seconds=end_offset_s), bucket_s
    )
    assert choose_source(query) == source


def test_local_midnight_days_read_the_hourly_rollup_only_where_the_offset_is_whole_hours() -> None:
    berlin_midnight = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)  # 00:00 CET
    query = _query(berlin_midnight, berlin_midnight + timedelta(days=7), 86_400, "Europe/Berlin")
    assert choose_source(query) == "1h"
    # across the switch to summer time (29 March): still whole hours on both ends
    query = _query(
        berlin_midnight + timedelta(days=21),
        berlin_midnight + timedelta(days=35, hours=-1),
        86_400,
        "Europe/Berlin",
    )
    assert choose_source(query) == "1h"
    # India (UTC+05:30) and Nepal (UTC+05:45): local midnights fall inside the UTC hours the hourly rows
    # cover, so only minute rows add up to their days
    for zone, midnight in (
        ("Asia/Kolkata", datetime(2026, 3, 1, 18, 30, tzinfo=UTC)),
        ("Asia/Kathmandu", datetime(2026, 3, 1, 18, 15, tzinfo=UTC)),
    ):
        assert choose_source(_query(midnight, midnight + timedelta(days=2), 86_400, zone)) == "1m", zone
    # below 1 h the buckets are UTC-aligned whatever the zone
    start = datetime(2026, 3, 2, 6, tzinfo=UTC)
    assert choose_source(_query(start, start + timedelta(hours=2), 600, "Asia/Kolkata")) == "1m"
