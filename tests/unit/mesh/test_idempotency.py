"""Idempotency comes from the proto's ``idempotency_level`` option, read from the method descriptors."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2  # noqa: F401 - registers grpc.health.v1 in the descriptor pool

from itsmesh.v1 import alert_pb2, streaming_pb2  # noqa: F401 - registers the itsmesh.v1 services
from mesh.idempotency import idempotency_level, is_idempotent, split_method_path


@pytest.mark.parametrize(
    ("path", "level"),
    [
        ("/itsmesh.v1.StreamingService/GetCamera", "NO_SIDE_EFFECTS"),
        ("/itsmesh.v1.StreamingService/ListCameras", "NO_SIDE_EFFECTS"),
        ("/itsmesh.v1.StreamingService/SubmitTelemetry", "IDEMPOTENT"),
        ("/itsmesh.v1.StreamingService/RegisterCamera", "IDEMPOTENCY_UNKNOWN"),
        ("/itsmesh.v1.StreamingService/StreamFrames", "IDEMPOTENCY_UNKNOWN"),
        ("/grpc.health.v1.Health/Check", "IDEMPOTENCY_UNKNOWN"),
    ],
)
def test_levels_are_read_from_the_protos(path, level):
    assert idempotency_level(path) == level
    assert is_idempotent(path) == (level != "IDEMPOTENCY_UNKNOWN")


def test_every_declared_level_of_the_alert_service_is_found():
    service = alert_pb2.DESCRIPTOR.services_by_name["AlertService"]
    declared = {m.name for m in service.methods if m.GetOptions().idempotency_level != 0}
    assert declared, "alert.proto declares idempotent methods"
    assert all(is_idempotent(f"/itsmesh.v1.AlertService/{name}") for name in declared)


def test_unknown_services_and_methods_are_never_idempotent():
    assert idempotency_level("/nowhere.v1.Ghost/Get") == "IDEMPOTENCY_UNKNOWN"
    assert idempotency_level("/itsmesh.v1.StreamingService/NoSuchMethod") == "IDEMPOTENCY_UNKNOWN"
    assert not is_idempotent("/nowhere.v1.Ghost/Get")


def test_method_paths_split_into_service_and_method():
    assert split_method_path("/itsmesh.v1.AlertService/GetAlert") == ("itsmesh.v1.AlertService", "GetAlert")
    for bad in ("", "/", "GetAlert", "/itsmesh.v1.AlertService/", "//GetAlert"):
        with pytest.raises(ValueError, match="not a gRPC method path"):
            split_method_path(bad)
