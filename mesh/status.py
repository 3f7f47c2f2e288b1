"""Rich gRPC errors in one place: build a status with google.rpc details, abort with it, read it back.

DESIGN §4: every error is a gRPC status code plus details a program can act on —
``google.rpc.BadRequest`` naming the bad fields, ``ErrorInfo`` with a machine-readable reason, and
``RetryInfo`` saying when to come back. Servers call ``abort_with`` (or raise a ``StatusError`` from code
below the handler and ``abort_with_error`` at the edge); clients read the details with ``status_details``.
The details travel as a serialized ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer, the
format grpcio-status and every other gRPC implementation understand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, NoReturn, TypeAlias

import grpc
from google.protobuf.message import DecodeError

# googleapis-common-protos ships .pyi files but no py.typed marker, so mypy will not read them.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]

DETAILS_METADATA_KEY: Final = "grpc-status-details-bin"
"""Trailer carrying the serialized ``google.rpc.Status`` (the key grpcio-status uses)."""

DOMAIN: Final = "itsmesh"
"""``ErrorInfo.domain`` of every error the mesh and its services raise."""

FieldViolations: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]]
"""Bad request fields: ``{"camera.fps": "must be between 1 and 60"}`` or ``[(field, why), ...]``."""

_CODES_BY_NUMBER: Final = {code.value[0]: code for code in grpc.StatusCode}


HTTP_STATUS: Final[Mapping[grpc.StatusCode, int]] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""gRPC code → HTTP status for REST fronts; anything else (INTERNAL, UNKNOWN, DATA_LOSS) is 500."""


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status a REST route answers for a gRPC ``code``."""
    return HTTP_STATUS.get(code, 500)


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    field_violations: FieldViolations | None = None,
    reason: str | None = None,
    domain: str = DOMAIN,
    metadata: Mapping[str, str] | None = None,
    retry_delay_s: float | None = None,
) -> Any:
    """The ``google.rpc.Status`` proto for ``code`` and ``message`` with the details that are given.

    ``field_violations`` becomes a ``BadRequest``; ``reason`` (with ``domain`` and ``metadata``) an
    ``ErrorInfo``; ``retry_delay_s`` a ``RetryInfo``.
    """
    if code is grpc.StatusCode.OK:
        raise ValueError("a rich status describes an error; OK carries no details")
    status = status_pb2.Status(code=code.value[0], message=message)
    violations = _violation_pairs(field_violations)
    if violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=name, description=why)
                for name, why in violations
            ]
        )
        status.details.add().Pack(bad_request)
    if reason is not None:
        info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=dict(metadata or {}))
        status.details.add().Pack(info)
    if retry_delay_s is not None:
        if not retry_delay_s >= 0:
            raise ValueError("retry_delay_s must be a non-negative number")
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(round(retry_delay_s * 1e9))
        status.details.add().Pack(retry)
    return status


def status_trailers(status: Any) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata that carries ``status`` (a ``google.rpc.Status``) to the client."""
    return ((DETAILS_METADATA_KEY, status.SerializeToString()),)


class StatusError(Exception):
    """An error that already knows its gRPC status and details.

    Raise it from code below a handler (validation, domain rules); the handler, or an interceptor, turns
    it into the RPC's status with ``abort_with_error``. ``retriable`` says whether trying again can succeed.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: FieldViolations | None = None,
        reason: str | None = None,
        domain: str = DOMAIN,
        metadata: Mapping[str, str] | None = None,
        retry_delay_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.grpc_code = code
        self.message = message
        self.reason = reason
        self.retry_delay_s = retry_delay_s
        self.status: Any = rich_status(
            code,
            message,
            field_violations=field_violations,
            reason=reason,
            domain=domain,
            metadata=metadata,
            retry_delay_s=retry_delay_s,
        )

    @property
    def retriable(self) -> bool:
        """True when the same call may succeed later: UNAVAILABLE, or any code that came with RetryInfo."""
        return self.grpc_code is grpc.StatusCode.UNAVAILABLE or self.retry_delay_s is not None


def status_error(
    code: grpc.StatusCode,
    message: str,
    *,
    field_violations: FieldViolations | None = None,
    reason: str | None = None,
    domain: str = DOMAIN,
    metadata: Mapping[str, str] | None = None,
    retry_delay_s: float | None = None,
) -> StatusError:
    """A ``StatusError`` to raise; the same arguments as ``abort_with``.

    ``raise status_error(INVALID_ARGUMENT, "bad fps", field_violations={"camera.fps": "1..60"})``
    """
    return StatusError(
        code,
        message,
        field_violations=field_violations,
        reason=reason,
        domain=domain,
        metadata=metadata,
        retry_delay_s=retry_delay_s,
    )


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    message: str,
    *,
    field_violations: FieldViolations | None = None,
    reason: str | None = None,
    domain: str = DOMAIN,
    metadata: Mapping[str, str] | None = None,
    retry_delay_s: float | None = None,
) -> NoReturn:
    """End the RPC with ``code``, ``message`` and rich details; never returns (grpc raises AbortError)."""
    status = rich_status(
        code,
        message,
        field_violations=field_violations,
        reason=reason,
        domain=domain,
        metadata=metadata,
        retry_delay_s=retry_delay_s,
    )
    await context.abort(code, message, trailing_metadata=status_trailers(status))


async def abort_with_error(context: grpc.aio.ServicerContext[Any, Any], error: StatusError) -> NoReturn:
    """End the RPC with the status a ``StatusError`` carries."""
    await context.abort(error.grpc_code, error.message, trailing_metadata=status_trailers(error.status))


class errors_as_status:
    """Around an RPC body: a ``StatusError``, or an exception ``translate`` maps to one, ends the RPC with it.

    Each service keeps its own ``translate`` (its domain errors); anything it returns None for propagates.
    """

    def __init__(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        translate: Callable[[BaseException], StatusError | None],
    ) -> None:
        self._context = context
        self._translate = translate

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        error = exc if isinstance(exc, StatusError) else self._translate(exc)
        if error is None:
            return False
        await abort_with_error(self._context, error)


@dataclass(frozen=True, slots=True)
class StatusDetails:
    """What a client learns from a failed call: code, message and the decoded google.rpc details."""

    code: grpc.StatusCode
    message: str
    reason: str | None = None
    domain: str | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    retry_delay_s: float | None = None
    field_violations: tuple[tuple[str, str], ...] = ()


def details_from_trailers(
    code: grpc.StatusCode, message: str, trailing_metadata: Iterable[tuple[str, str | bytes]] | None
) -> StatusDetails:
    """Decode the rich details in ``trailing_metadata``; only code and message when there are none.

    A malformed details trailer is ignored rather than raised: the status code is still the truth.
    """
    raw = next(
        (v for k, v in trailing_metadata or () if k == DETAILS_METADATA_KEY and isinstance(v, bytes)),
        None,
    )
    if raw is None:
        return StatusDetails(code, message)
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except DecodeError:
        return StatusDetails(code, message)
    reason = domain = None
    info_metadata: Mapping[str, str] = MappingProxyType({})
    retry_delay_s: float | None = None
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain = info.reason, info.domain
            info_metadata = MappingProxyType(dict(info.metadata))
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay_s = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return StatusDetails(
        code=_CODES_BY_NUMBER.get(status.code, code),
        message=status.message or message,
        reason=reason,
        domain=domain,
        metadata=info_metadata,
        retry_delay_s=retry_delay_s,
        field_violations=tuple(violations),
    )


def status_details(error: grpc.aio.AioRpcError) -> StatusDetails:
    """Decode the status and google.rpc details of a failed call (``except grpc.aio.AioRpcError as e``)."""
    return details_from_trailers(error.code(), error.details() or "", error.trailing_metadata())


def _violation_pairs(violations: FieldViolations | None) -> list[tuple[str, str]]:
    if violations is None:
        return []
    if isinstance(violations, Mapping):
        return [(str(k), str(v)) for k, v in violations.items()]
    return [(name, why) for name, why in violations]


def raise_for_violations(violations: Sequence[tuple[str, str]]) -> None:
    """Raise INVALID_ARGUMENT naming the first bad field (and how many more) if there are violations."""
    if violations:
        field_name, why = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise status_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"invalid {field_name}: {why}{more}",
            field_violations=violations,
        )
