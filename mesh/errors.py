"""The mesh's own errors, and the few facts about gRPC failures the client acts on.

Every error a mesh call raises is a ``grpc.aio.AioRpcError`` with ``code()`` and ``details()``: either the
server's status, passed through untouched, or one of the ``MeshRpcError`` subclasses below when the mesh
itself ends the call (no usable endpoint, the deadline already spent). So one ``except
grpc.aio.AioRpcError`` handles both, and ``except MeshError`` tells the mesh's own verdicts apart.

Like aiokafka's ``KafkaError``, each class says whether trying again later can help (``retriable``) and
which gRPC status a server should answer with if the error escapes a handler (``grpc_code``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Final

import grpc

from mesh.status import details_from_trailers

"""Trailing metadata key carrying a serialized ``google.rpc.Status`` with rich error details."""

# What gRPC core writes into the details of a call that never reached the server because nothing
# accepted the connection (the kill -9 case). A server's own UNAVAILABLE answers never contain them.
_CONNECT_FAILURE_MARKERS: Final = (
    "failed to connect to all addresses",
    "connection refused",
    "failed to connect to remote host",
    "dns resolution failed",
    "name resolution failure",
)

# What gRPC core writes when an established connection dropped under a call (peer crashed, reset, or the
# network broke). The server may or may not be gone; a reconnect attempt tells.
_CONNECTION_LOST_MARKERS: Final = (
    "socket closed",
    "connection reset",
    "broken pipe",
    "connection aborted",
    "stream removed",
)


class MeshError(Exception):
    """Base of every error raised by the mesh itself."""

    retriable: ClassVar[bool] = False
    """Whether the same request may succeed if tried again later."""
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    """The status a server answers with when this error escapes one of its handlers."""


class MeshRpcError(MeshError, grpc.aio.AioRpcError):
    """A mesh verdict on a call, shaped like the gRPC error the caller already handles."""

    def __init__(self, details: str) -> None:
        grpc.aio.AioRpcError.__init__(
            self,
            self.grpc_code,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=details,
            debug_error_string=None,
        )

    def __reduce__(self) -> tuple[object, ...]:
        # AioRpcError pickles itself with its own constructor arguments, which subclasses do not take.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[MeshRpcError], state: dict[str, object]) -> MeshRpcError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    return error


class MeshUnavailable(MeshRpcError):
    """UNAVAILABLE from the mesh: no endpoint of ``service`` can take the call now; ``reason`` says why."""

    retriable: ClassVar[bool] = True
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNAVAILABLE

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(reason)
        self.service = service
        self.reason = reason


class NoEndpointsError(MeshUnavailable):
    """Discovery (or the static list) knows no routable instance of the service."""

    def __init__(self, service: str) -> None:
        super().__init__(service, f"no registered instances of {service!r}")


class CircuitOpenError(MeshUnavailable):
    """Every known instance of the service is refused by its circuit breaker."""

    def __init__(self, service: str, *, instances: int, open_count: int) -> None:
        super().__init__(service, circuit_open_reason(service, instances, open_count))
        self.instances = instances
        self.open_count = open_count


class MeshDeadlineExceeded(MeshRpcError):
    """DEADLINE_EXCEEDED from the mesh: the (possibly inherited) deadline passed before an attempt began."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self, service: str, method: str) -> None:
        super().__init__(f"deadline passed before {method} could be sent to {service!r}")
        self.service = service
        self.method = method


class ClientClosedError(MeshError, grpc.aio.UsageError):
    """A call was made through a mesh client that is closed (a programming error, like a closed channel)."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.FAILED_PRECONDITION


def circuit_open_reason(service: str, instances: int, open_count: int) -> str:
    """The details of a ``CircuitOpenError``: how many instances there are and how many are open."""
    if instances == 1:
        if open_count == 1:
            return f"the only instance of {service!r} has an open circuit breaker"
        return f"the only instance of {service!r} is half-open with its probe in flight"
    if open_count == instances:
        return f"all {instances} instances of {service!r} have open circuit breakers"
    half_open = instances - open_count
    return (
        f"all {instances} instances of {service!r} have open circuit breakers "
        f"or probes in flight ({open_count} open, {half_open} half-open)"
    )


def is_connect_failure(code: grpc.StatusCode, details: str | None) -> bool:
    """Whether a failed call never reached a server because the connection itself could not be made.

    That is UNAVAILABLE with gRPC core's connect-failure wording. A call cut off mid-flight ("Socket
    closed") is not one: the server may still be alive, so it counts against the breaker only.
    """
    if code is not grpc.StatusCode.UNAVAILABLE or not details:
        return False
    lowered = details.lower()
    return any(marker in lowered for marker in _CONNECT_FAILURE_MARKERS)


def is_connection_lost(code: grpc.StatusCode, details: str | None) -> bool:
    """Whether a call failed because its established connection dropped (UNAVAILABLE, "Socket closed")."""
    if code is not grpc.StatusCode.UNAVAILABLE or not details:
        return False
    lowered = details.lower()
    return any(marker in lowered for marker in _CONNECTION_LOST_MARKERS)


def retry_pushback(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """Seconds the server asked the caller to wait (``google.rpc.RetryInfo``), or None if it did not say.

    Malformed details are ignored: pushback is advice, and the jittered backoff is the fallback.
    """
    details = details_from_trailers(grpc.StatusCode.UNKNOWN, "", trailing_metadata)
    return None if details.retry_delay_s is None else max(details.retry_delay_s, 0.0)
