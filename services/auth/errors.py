"""The auth service's errors, each carrying its gRPC status and google.rpc details (DESIGN §4).

Raised anywhere below the handlers; ``server.py`` ends the RPC with ``abort_with_error`` and ``http.py``
turns the same error into an HTTP status with a JSON body, so both fronts report a failure identically.
ErrorInfo domain is ``itsmesh.auth`` (see auth.proto).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import grpc

from mesh.status import StatusError

DOMAIN: Final = "itsmesh.auth"


class AuthServiceError(StatusError):
    """Base of the auth service's errors."""


class InvalidArgument(AuthServiceError):
    """A request field is missing or malformed: INVALID_ARGUMENT with a BadRequest naming the field."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field}: {why}",
            field_violations={field: why},
            reason="INVALID_ARGUMENT",
            domain=DOMAIN,
        )
        self.field = field


class NotFound(AuthServiceError):
    """The named user, device, key or account does not exist."""

    def __init__(self, what: str, identifier: str) -> None:
        super().__init__(
            grpc.StatusCode.NOT_FOUND,
            f"{what} {identifier!r} does not exist",
            reason="NOT_FOUND",
            domain=DOMAIN,
            metadata={"resource": what, "id": identifier},
        )


class AlreadyExists(AuthServiceError):
    """A user name, device id or service account id is taken."""

    def __init__(self, what: str, identifier: str) -> None:
        super().__init__(
            grpc.StatusCode.ALREADY_EXISTS,
            f"{what} {identifier!r} already exists",
            reason="ALREADY_EXISTS",
            domain=DOMAIN,
            metadata={"resource": what, "id": identifier},
        )


class FailedPrecondition(AuthServiceError):
    """The request is valid but the state does not allow it (e.g. MFA already enabled)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, message, reason=reason, domain=DOMAIN)


class LoginRefused(AuthServiceError):
    """Credentials were not accepted: UNAUTHENTICATED with the proto's reason.

    Reasons: INVALID_CREDENTIALS, MFA_REQUIRED, INVALID_MFA_CODE, ACCOUNT_LOCKED (with RetryInfo),
    TOKEN_EXPIRED, TOKEN_REVOKED, REFRESH_TOKEN_REUSED, INVALID_CLIENT.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retry_delay_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            grpc.StatusCode.UNAUTHENTICATED,
            message,
            reason=reason,
            domain=DOMAIN,
            retry_delay_s=retry_delay_s,
            metadata=metadata,
        )


class Forbidden(AuthServiceError):
    """The caller holds the method's permission but not the one acting on someone else needs."""

    def __init__(self, permission: str, message: str) -> None:
        super().__init__(
            grpc.StatusCode.PERMISSION_DENIED,
            message,
            reason="MISSING_PERMISSION",
            domain=DOMAIN,
            metadata={"permission": permission},
        )


class Unavailable(AuthServiceError):
    """A dependency (database, Redis) is down; worth retrying."""

    def __init__(self, message: str, retry_delay_s: float = 1.0) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            message,
            reason="UNAVAILABLE",
            domain=DOMAIN,
            retry_delay_s=retry_delay_s,
        )
