"""Whether an RPC may be retried, as its proto declares it: the one place idempotency is decided.

A method is retried by the mesh only if its definition says so::

    rpc GetCamera(GetCameraRequest) returns (Camera) {
      option idempotency_level = NO_SIDE_EFFECTS;   // or IDEMPOTENT
    }

The level is read from the method's descriptor in the default protobuf pool, which every generated
``*_pb2`` module registers itself in on import (a generated stub imports its ``*_pb2``). A method that is
not found there, or declares nothing, is IDEMPOTENCY_UNKNOWN and never retried.
"""

from __future__ import annotations

from typing import Final, Literal

from google.protobuf import descriptor_pool
from google.protobuf.descriptor_pb2 import MethodOptions

IdempotencyLevel = Literal["IDEMPOTENCY_UNKNOWN", "NO_SIDE_EFFECTS", "IDEMPOTENT"]

RETRYABLE_LEVELS: Final[frozenset[IdempotencyLevel]] = frozenset({"NO_SIDE_EFFECTS", "IDEMPOTENT"})
"""Idempotency levels whose methods the mesh may send more than once."""

_LEVELS: Final[dict[int, IdempotencyLevel]] = {
    MethodOptions.IDEMPOTENCY_UNKNOWN: "IDEMPOTENCY_UNKNOWN",
    MethodOptions.NO_SIDE_EFFECTS: "NO_SIDE_EFFECTS",
    MethodOptions.IDEMPOTENT: "IDEMPOTENT",
}

_found: dict[str, IdempotencyLevel] = {}


def split_method_path(path: str) -> tuple[str, str]:
    """``"/itsmesh.v1.AlertService/GetAlert"`` → ``("itsmesh.v1.AlertService", "GetAlert")``."""
    service, sep, method = path.lstrip("/").rpartition("/")
    if not (sep and service and method):
        raise ValueError(f"not a gRPC method path: {path!r}")
    return service, method


def idempotency_level(path: str) -> IdempotencyLevel:
    """The ``idempotency_level`` the proto declares for the method at ``path`` (a gRPC method path)."""
    level = _found.get(path)
    if level is not None:
        return level
    service_name, method_name = split_method_path(path)
    try:
        service = descriptor_pool.Default().FindServiceByName(service_name)
    except KeyError:
        # Not cached: the module defining it may simply not be imported yet.
        return "IDEMPOTENCY_UNKNOWN"
    method = service.methods_by_name.get(method_name)
    if method is None:
        return "IDEMPOTENCY_UNKNOWN"
    level = _LEVELS.get(method.GetOptions().idempotency_level, "IDEMPOTENCY_UNKNOWN")
    _found[path] = level
    return level


def is_idempotent(path: str) -> bool:
    """Whether the method at ``path`` may be retried: declared NO_SIDE_EFFECTS or IDEMPOTENT."""
    return idempotency_level(path) in RETRYABLE_LEVELS
