"""Assembles the alert process for the service host."""

from __future__ import annotations

from itsmesh.v1 import alert_pb2, alert_pb2_grpc
from mesh.host import GrpcService, ServiceSpec
from mesh.tokens import token_auth
from services.alert.config import AlertSettings
from services.alert.server import AlertServicer


def build(settings: AlertSettings | None = None) -> ServiceSpec:
    """The alert service as the host runs it."""
    settings = settings or AlertSettings()
    servicer = AlertServicer()  # type: ignore[abstract]  # skeleton: RPCs land with their capability
    authenticator, auth_resources = token_auth(settings)  # every RPC but health/reflection needs a token
    return ServiceSpec(
        name="alert",
        settings=settings,
        grpc_services=[GrpcService.from_generated(alert_pb2, alert_pb2_grpc, "AlertService", servicer)],
        authenticator=authenticator,
        resources=auth_resources,
    )
