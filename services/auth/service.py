"""Assembles the auth process for the service host."""

from __future__ import annotations

from itsmesh.v1 import auth_pb2, auth_pb2_grpc
from mesh.host import GrpcService, ServiceSpec
from mesh.tokens import JwtAuthenticator
from services.auth.authority import Authority, LocalJwksSource
from services.auth.config import AuthSettings
from services.auth.http import create_app
from services.auth.server import AuthServicer


def build(settings: AuthSettings | None = None) -> ServiceSpec:
    """The auth service as the host runs it: gRPC + REST, both behind the same token verifier.

    The service verifies tokens like every other one, except that it reads the JWKS from its own database
    rather than over HTTP from itself.
    """
    settings = settings or AuthSettings()
    authority = Authority(settings)
    authenticator = JwtAuthenticator(
        LocalJwksSource(authority),
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        redis_url=settings.redis_url,
    )
    authority.verifier = authenticator
    servicer = AuthServicer(authority)
    return ServiceSpec(
        name="auth",
        settings=settings,
        grpc_services=[GrpcService.from_generated(auth_pb2, auth_pb2_grpc, "AuthService", servicer)],
        http_app=create_app(authority, authenticator, settings),
        authenticator=authenticator,
        resources=(authority.resource, authenticator.resource),
    )
