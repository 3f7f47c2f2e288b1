"""gRPC failures and console validation become HTTP answers naming the REST parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest

from itsmesh.v1 import analytics_pb2, common_pb2, events_pb2
from mesh.status import StatusDetails, StatusError
from services.console.analyst_query import bucket, enum_value, enum_values, sort_order, time_range, timestamp
from services.console.errors import error_body, rest_field, status_error_response


def test_proto_field_paths_are_named_as_the_rest_caller_spelled_them():
    assert rest_field("time_range.end_time") == "end"
    assert rest_field("time_range.start_time") == "start"
    assert rest_field("camera_ids[3]") == "camera_id"
    assert rest_field("bucket") == "bucket_s"
    assert rest_field("page_token") == "page_token"


def test_invalid_argument_is_400_with_every_violation_and_the_first_field():
    details = StatusDetails(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad range",
        reason="INVALID_ARGUMENT",
        field_violations=(
            ("time_range.end_time", "must be after start_time"),
            ("bucket", "multiple of 10 s"),
        ),
    )
    status, body, headers = error_body(details)
    assert status == 400
    assert body["field"] == "end"
    assert body["field_violations"] == [
        {"field": "end", "rpc_field": "time_range.end_time", "description": "must be after start_time"},
        {"field": "bucket_s", "rpc_field": "bucket", "description": "multiple of 10 s"},
    ]
    assert headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    ("code", "http"),
    [
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
)
def test_each_grpc_code_has_its_http_status(code, http):
    status, body, _ = error_body(StatusDetails(code, "x"))
    assert status == http
    assert body["error"] == code.name.lower()
    assert body["field"] is None


def test_retry_info_becomes_retry_after_and_401_carries_a_bearer_challenge():
    _, _, headers = error_body(StatusDetails(grpc.StatusCode.UNAVAILABLE, "busy", retry_delay_s=2.4))
    assert headers["Retry-After"] == "2"
    _, _, headers = error_body(StatusDetails(grpc.StatusCode.UNAUTHENTICATED, "no token"))
    assert headers["WWW-Authenticate"].startswith("Bearer")


def test_the_consoles_own_status_errors_use_the_same_shape():
    response = status_error_response(
        StatusError(grpc.StatusCode.INVALID_ARGUMENT, "kind: unknown", field_violations=[("kind", "unknown")])
    )
    assert response.status_code == 400
    assert b'"field":"kind"' in response.body


def test_enum_names_are_lower_case_without_their_prefix_and_unknown_ones_name_the_parameter():
    assert enum_value(events_pb2.ViolationKind, "VIOLATION_KIND", "wrong_way", "kind") == (
        events_pb2.VIOLATION_KIND_WRONG_WAY
    )
    assert enum_values(common_pb2.ObjectClass, "OBJECT_CLASS", ["car", " Truck "], "object_class") == [
        common_pb2.OBJECT_CLASS_CAR,
        common_pb2.OBJECT_CLASS_TRUCK,
    ]
    assert enum_values(analytics_pb2.TrafficMetricField, "TRAFFIC_METRIC_FIELD", None, "metric") == []
    with pytest.raises(StatusError) as caught:
        enum_value(events_pb2.ViolationKind, "VIOLATION_KIND", "jaywalking", "kind")
    assert caught.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    assert "speeding" in caught.value.message
    with pytest.raises(StatusError):
        enum_value(events_pb2.ViolationKind, "VIOLATION_KIND", "unspecified", "kind")


def test_times_without_a_zone_are_utc_and_an_open_end_is_left_unset():
    naive = datetime(2024, 5, 1, 12, 0, 0)
    assert timestamp(naive).ToDatetime(UTC) == naive.replace(tzinfo=UTC)
    berlin = datetime(2024, 5, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert timestamp(berlin).ToDatetime(UTC) == naive.replace(tzinfo=UTC)
    assert not time_range(naive, None).HasField("end_time")
    assert time_range(naive, naive + timedelta(hours=1)).end_time.ToDatetime(UTC).hour == 13


def test_bucket_and_order():
    assert bucket(None) == {}
    assert bucket(60)["bucket"].seconds == 60
    assert sort_order("oldest") == common_pb2.SORT_ORDER_OLDEST_FIRST
    assert sort_order("newest") == common_pb2.SORT_ORDER_NEWEST_FIRST
