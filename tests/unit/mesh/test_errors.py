"""The mesh's errors: shaped like gRPC errors, carrying behaviour; and the failure facts the client reads."""

from __future__ import annotations

import pickle

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from mesh.errors import (
    CircuitOpenError,
    ClientClosedError,
    MeshDeadlineExceeded,
    MeshError,
    MeshRpcError,
    MeshUnavailable,
    NoEndpointsError,
    circuit_open_reason,
    is_connect_failure,
    is_connection_lost,
    retry_pushback,
)
from mesh.status import DETAILS_METADATA_KEY

# Details exactly as gRPC core 1.85 words them (captured from real calls).
REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:35991: "
    "Failed to connect to remote host: Connection refused"
)
SOCKET_CLOSED = "Stream removed (Socket closed)"


def test_no_endpoints_is_an_aio_rpc_error_with_unavailable_and_the_service_named():
    error = NoEndpointsError("alert")
    assert isinstance(error, grpc.aio.AioRpcError)
    assert isinstance(error, grpc.RpcError)
    assert isinstance(error, MeshUnavailable)
    assert isinstance(error, MeshError)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert error.details() == "no registered instances of 'alert'"
    assert error.service == "alert"
    assert error.retriable
    assert error.grpc_code is grpc.StatusCode.UNAVAILABLE
    assert "no registered instances of 'alert'" in str(error)


def test_circuit_open_error_counts_the_instances():
    error = CircuitOpenError("alert", instances=3, open_count=3)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert error.details() == "all 3 instances of 'alert' have open circuit breakers"
    assert (error.instances, error.open_count) == (3, 3)


@pytest.mark.parametrize(
    ("instances", "open_count", "reason"),
    [
        (1, 1, "the only instance of 'alert' has an open circuit breaker"),
        (1, 0, "the only instance of 'alert' is half-open with its probe in flight"),
        (2, 2, "all 2 instances of 'alert' have open circuit breakers"),
        (
            3,
            1,
            "all 3 instances of 'alert' have open circuit breakers or probes in flight (1 open, 2 half-open)",
        ),
    ],
)
def test_circuit_open_reason_says_how_many_are_open(instances, open_count, reason):
    assert circuit_open_reason("alert", instances, open_count) == reason


def test_deadline_exceeded_is_not_retriable():
    error = MeshDeadlineExceeded("alert", "/itsmesh.v1.AlertService/GetAlert")
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert not error.retriable
    assert "GetAlert" in (error.details() or "")


def test_client_closed_is_a_usage_error_not_an_rpc_error():
    error = ClientClosedError("closed")
    assert isinstance(error, grpc.aio.UsageError)
    assert not isinstance(error, grpc.aio.AioRpcError)
    assert not error.retriable


def test_mesh_rpc_errors_survive_pickling():
    error = pickle.loads(pickle.dumps(CircuitOpenError("alert", instances=2, open_count=1)))  # noqa: S301
    assert isinstance(error, MeshRpcError)
    assert error.details() == circuit_open_reason("alert", 2, 1)
    assert error.instances == 2


def test_a_refused_connection_is_a_connect_failure():
    assert is_connect_failure(grpc.StatusCode.UNAVAILABLE, REFUSED)
    assert not is_connection_lost(grpc.StatusCode.UNAVAILABLE, REFUSED)


def test_a_dropped_connection_is_lost_but_not_a_connect_failure():
    assert is_connection_lost(grpc.StatusCode.UNAVAILABLE, SOCKET_CLOSED)
    assert not is_connect_failure(grpc.StatusCode.UNAVAILABLE, SOCKET_CLOSED)


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNAVAILABLE, "alert-1 is draining"),
        (grpc.StatusCode.UNAVAILABLE, None),
        (grpc.StatusCode.UNAVAILABLE, ""),
        (grpc.StatusCode.INTERNAL, REFUSED),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
    ],
)
def test_a_servers_own_answers_are_neither(code, details):
    assert not is_connect_failure(code, details)
    assert not is_connection_lost(code, details)


def _status_trailer(*details) -> tuple[str, bytes]:
    status = status_pb2.Status(code=8, message="slow down")
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return (DETAILS_METADATA_KEY, status.SerializeToString())


def test_retry_pushback_reads_retry_info_from_the_trailers():
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(250)
    trailers = [("x-other", "1"), _status_trailer(error_details_pb2.ErrorInfo(reason="LIMIT"), info)]
    assert retry_pushback(trailers) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "trailers",
    [
        None,
        [],
        [("x-other", "1")],
        [_status_trailer(error_details_pb2.ErrorInfo(reason="LIMIT"))],
        [(DETAILS_METADATA_KEY, b"\xff\xff not a status")],
    ],
)
def test_retry_pushback_is_none_without_valid_retry_info(trailers):
    assert retry_pushback(trailers) is None
