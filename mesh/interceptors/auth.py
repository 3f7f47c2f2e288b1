"""The auth hook: who is calling, and may they call this method.

The mesh does not know how credentials are checked — the auth service plugs an ``Authenticator`` in (JWT
verified against cached JWKS, device tokens, service tokens). The interceptor calls it once per RPC, before
the handler runs (before a stream's first message is read), and:

- on success puts the returned ``Principal`` where handlers read it: ``current_principal()``;
- on ``Unauthenticated`` / ``PermissionDenied`` (or any ``StatusError``) ends the RPC with that code and a
  ``google.rpc.ErrorInfo`` whose reason says why.

Health checks and reflection are always open (``is_infrastructure_method``). With no authenticator the
interceptor passes everything through. On the client side ``BearerTokenInterceptor`` adds
``authorization: Bearer <token>`` to outgoing calls.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Collection, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeAlias

import grpc

from mesh.interceptors._rpc import (
    Context,
    Proceed,
    RpcInfo,
    TRequest,
    TResponse,
    WrappingServerInterceptor,
    copy_metadata,
    is_infrastructure_method,
    metadata_values,
    with_metadata,
)
from mesh.status import StatusError, abort_with_error

InvocationMetadata: TypeAlias = Collection[tuple[str, str | bytes]]
"""Invocation metadata as the server received it: ``(key, value)`` pairs, keys lower-case."""

PermissionMap: TypeAlias = Mapping[str, str]
"""Full gRPC method path → the permission it needs:
``{"/itsmesh.v1.StreamingService/GetCamera": "camera:read"}``. Permissions are ``resource:action``."""

AUTHORIZATION_KEY: Final = "authorization"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the authenticator established it."""

    subject: str
    """User id, device (camera) id or service name."""
    kind: str = "user"
    """``user``, ``device`` or ``service``."""
    roles: frozenset[str] = frozenset()
    permissions: frozenset[str] = frozenset()
    """``resource:action`` strings the caller holds."""
    claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    """Everything else the credential said (token claims), for handlers that need more."""

    def can(self, permission: str) -> bool:
        """Whether the caller holds ``permission``."""
        return permission in self.permissions


class AuthError(StatusError):
    """The caller may not make this call; the subclass says whether credentials or rights are missing."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        cls = type(self)
        super().__init__(cls.grpc_code, message, reason=reason or cls.default_reason, metadata=metadata)


class Unauthenticated(AuthError):
    """No usable credentials: missing, malformed, expired, revoked or badly signed. → UNAUTHENTICATED."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(AuthError):
    """Valid credentials without the permission this method needs. → PERMISSION_DENIED."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Authenticator(Protocol):
    """Checks one RPC's credentials; the auth service provides the real one."""

    async def authenticate(self, method: str, metadata: InvocationMetadata) -> Principal:
        """The caller of ``method`` (its full path), or raise ``Unauthenticated`` / ``PermissionDenied``."""
        ...


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None if there is none."""
    for value in metadata_values(metadata, AUTHORIZATION_KEY):
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def authorize(principal: Principal, method: str, permissions: PermissionMap) -> None:
    """Raise ``PermissionDenied`` unless ``principal`` holds the permission ``method`` needs.

    A method missing from the map is refused: every RPC must declare its permission (DESIGN §6).
    """
    required = permissions.get(method)
    if required is None:
        raise PermissionDenied(
            f"{method} declares no permission", reason="METHOD_NOT_MAPPED", metadata={"method": method}
        )
    if not principal.can(required):
        raise PermissionDenied(
            f"{principal.subject} lacks {required}",
            reason="MISSING_PERMISSION",
            metadata={"method": method, "permission": required},
        )


_principal: ContextVar[Principal | None] = ContextVar("itsmesh_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the RPC being handled; None outside one or on an open method."""
    return _principal.get()


class AuthInterceptor(WrappingServerInterceptor):
    """Authenticates every RPC except ``public`` ones, exposing the ``Principal`` to the handler."""

    def __init__(
        self,
        authenticator: Authenticator | None,
        *,
        public: Callable[[str], bool] = is_infrastructure_method,
    ) -> None:
        super().__init__()
        self._authenticator = authenticator
        self._public = public

    def applies_to(self, path: str) -> bool:
        return self._authenticator is not None and not self._public(path)

    async def around(self, info: RpcInfo, context: Context, proceed: Proceed) -> Any:
        authenticator = self._authenticator
        if authenticator is None:  # not reached: applies_to() is False without one
            return await proceed()
        metadata: InvocationMetadata = context.invocation_metadata() or ()
        try:
            principal = await authenticator.authenticate(info.path, metadata)
        except StatusError as exc:
            await abort_with_error(context, exc)
        token = _principal.set(principal)
        try:
            return await proceed()
        finally:
            _principal.reset(token)


TokenProvider: TypeAlias = Callable[[], str | None] | Callable[[], Awaitable[str | None]]
"""Returns the current access token (or None to send none); may be a coroutine function that refreshes."""


class BearerTokenInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to each call that does not already carry credentials."""

    def __init__(self, token_provider: TokenProvider) -> None:
        self._token_provider = token_provider

    async def _authorized(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if metadata_values(details.metadata, AUTHORIZATION_KEY):
            return details  # the caller chose its credentials (e.g. forwarding a user's token)
        token = self._token_provider()
        if inspect.isawaitable(token):
            token = await token
        if not token:
            return details
        metadata = copy_metadata(details)
        metadata.add(AUTHORIZATION_KEY, f"Bearer {token}")
        return with_metadata(details, metadata)

    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, TRequest], Awaitable[grpc.aio.UnaryUnaryCall[TRequest, TResponse]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: TRequest,
    ) -> grpc.aio.UnaryUnaryCall[TRequest, TResponse]:
        return await continuation(await self._authorized(client_call_details), request)

    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, TRequest], Awaitable[grpc.aio.UnaryStreamCall[TRequest, TResponse]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: TRequest,
    ) -> grpc.aio.UnaryStreamCall[TRequest, TResponse]:
        return await continuation(await self._authorized(client_call_details), request)

    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[TRequest] | Iterable[TRequest]],
            Awaitable[grpc.aio.StreamUnaryCall[TRequest, TResponse]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[TRequest] | Iterable[TRequest],
    ) -> grpc.aio.StreamUnaryCall[TRequest, TResponse]:
        return await continuation(await self._authorized(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[TRequest] | Iterable[TRequest]],
            Awaitable[grpc.aio.StreamStreamCall[TRequest, TResponse]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[TRequest] | Iterable[TRequest],
    ) -> grpc.aio.StreamStreamCall[TRequest, TResponse]:
        return await continuation(await self._authorized(client_call_details), request_iterator)
