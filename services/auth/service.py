"""Assembles the auth process for the service host."""

from __future__ import annotations

from itsmesh.v1 import auth_pb2, auth_pb2_grpc
from mesh.host import GrpcService, ServiceSpec
from services.auth.config import AuthSettings
from services.auth.http import create_app
from services.auth.server import AuthServicer


def build(settings: AuthSettings | None = None) -> ServiceSpec:
    """The auth service as the host runs it."""
    settings = settings or AuthSettings()
    servicer = AuthServicer()  # type: ignore[abstract]  # skeleton: RPCs land with their capability
    return ServiceSpec(
        name="auth",
        settings=settings,
        grpc_services=[GrpcService.from_generated(auth_pb2, auth_pb2_grpc, "AuthService", servicer)],
        http_app=create_app(),
    )
