"""Assembles the analytics process for the service host."""

from __future__ import annotations

from itsmesh.v1 import analytics_pb2, analytics_pb2_grpc
from mesh.host import GrpcService, ServiceSpec
from mesh.tokens import token_auth
from services.analytics.config import AnalyticsSettings
from services.analytics.server import AnalyticsServicer


def build(settings: AnalyticsSettings | None = None) -> ServiceSpec:
    """The analytics service as the host runs it."""
    settings = settings or AnalyticsSettings()
    servicer = AnalyticsServicer()  # type: ignore[abstract]  # skeleton: RPCs land with their capability
    authenticator, auth_resources = token_auth(settings)  # every RPC but health/reflection needs a token
    return ServiceSpec(
        name="analytics",
        settings=settings,
        grpc_services=[
            GrpcService.from_generated(analytics_pb2, analytics_pb2_grpc, "AnalyticsService", servicer)
        ],
        authenticator=authenticator,
        resources=auth_resources,
    )
