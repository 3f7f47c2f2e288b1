"""Rich gRPC status: details built, carried in the trailer, and read back, without a server."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from mesh.status import (
    DETAILS_METADATA_KEY,
    StatusError,
    details_from_trailers,
    rich_status,
    status_error,
    status_trailers,
)


def test_every_detail_survives_the_trip_through_the_trailer():
    status = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "camera is invalid",
        field_violations={"camera.fps": "must be between 1 and 60", "camera.name": "required"},
        reason="CAMERA_INVALID",
        metadata={"camera_id": "cam-7"},
        retry_delay_s=0.25,
    )
    details = details_from_trailers(grpc.StatusCode.UNKNOWN, "", status_trailers(status))
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.message == "camera is invalid"
    assert details.field_violations == (
        ("camera.fps", "must be between 1 and 60"),
        ("camera.name", "required"),
    )
    assert (details.reason, details.domain) == ("CAMERA_INVALID", "itsmesh")
    assert dict(details.metadata) == {"camera_id": "cam-7"}
    assert details.retry_delay_s == pytest.approx(0.25)


def test_the_trailer_is_a_standard_google_rpc_status():
    [(key, raw)] = status_trailers(
        rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", retry_delay_s=1.5)
    )
    parsed = status_pb2.Status.FromString(raw)
    retry = error_details_pb2.RetryInfo()
    assert key == DETAILS_METADATA_KEY == "grpc-status-details-bin"
    assert parsed.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert parsed.details[0].Unpack(retry)
    assert retry.retry_delay.seconds == 1
    assert retry.retry_delay.nanos == 500_000_000


def test_field_violations_given_as_pairs_keep_their_order_and_repeats():
    status = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT, "bad", field_violations=[("b", "1"), ("a", "2"), ("b", "3")]
    )
    details = details_from_trailers(grpc.StatusCode.INVALID_ARGUMENT, "bad", status_trailers(status))
    assert details.field_violations == (("b", "1"), ("a", "2"), ("b", "3"))


def test_a_status_without_details_carries_none():
    status = rich_status(grpc.StatusCode.NOT_FOUND, "no such camera")
    assert len(status.details) == 0


def test_ok_cannot_carry_error_details():
    with pytest.raises(ValueError, match="OK"):
        rich_status(grpc.StatusCode.OK, "fine")


@pytest.mark.parametrize("delay", [-0.1, float("nan")])
def test_a_retry_delay_must_be_a_non_negative_number(delay):
    with pytest.raises(ValueError, match="retry_delay_s"):
        rich_status(grpc.StatusCode.UNAVAILABLE, "later", retry_delay_s=delay)


def test_trailers_without_details_give_code_and_message_only():
    details = details_from_trailers(grpc.StatusCode.UNAVAILABLE, "down", [("x-other", "1")])
    assert (details.code, details.message, details.reason, details.retry_delay_s) == (
        grpc.StatusCode.UNAVAILABLE,
        "down",
        None,
        None,
    )
    assert details_from_trailers(grpc.StatusCode.UNAVAILABLE, "down", None).field_violations == ()


def test_a_malformed_details_trailer_is_ignored_not_raised():
    details = details_from_trailers(
        grpc.StatusCode.INTERNAL, "boom", [(DETAILS_METADATA_KEY, b"\xff\xff\xff")]
    )
    assert (details.code, details.message, details.reason) == (grpc.StatusCode.INTERNAL, "boom", None)


def test_a_status_error_carries_code_message_and_details():
    error = status_error(
        grpc.StatusCode.INVALID_ARGUMENT, "bad fps", field_violations={"camera.fps": "1..60"}
    )
    assert isinstance(error, StatusError)
    assert (error.grpc_code, error.message, str(error)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad fps",
        "bad fps",
    )
    details = details_from_trailers(grpc.StatusCode.UNKNOWN, "", status_trailers(error.status))
    assert details.field_violations == (("camera.fps", "1..60"),)


@pytest.mark.parametrize(
    ("code", "retry_delay_s", "retriable"),
    [
        (grpc.StatusCode.UNAVAILABLE, None, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.1, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, False),
        (grpc.StatusCode.INVALID_ARGUMENT, None, False),
    ],
)
def test_a_status_error_is_retriable_when_unavailable_or_told_when_to_retry(code, retry_delay_s, retriable):
    assert StatusError(code, "x", retry_delay_s=retry_delay_s).retriable is retriable
