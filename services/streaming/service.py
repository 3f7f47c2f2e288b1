"""Assembles the streaming process for the service host."""

from __future__ import annotations

from itsmesh.v1 import streaming_pb2, streaming_pb2_grpc
from mesh.host import GrpcService, ServiceSpec
from mesh.tokens import token_auth
from services.streaming.config import StreamingSettings
from services.streaming.server import StreamingServicer


def build(settings: StreamingSettings | None = None) -> ServiceSpec:
    """The streaming service as the host runs it."""
    settings = settings or StreamingSettings()
    servicer = StreamingServicer()  # type: ignore[abstract]  # skeleton: RPCs land with their capability
    authenticator, auth_resources = token_auth(settings)  # every RPC but health/reflection needs a token
    return ServiceSpec(
        name="streaming",
        settings=settings,
        grpc_services=[
            GrpcService.from_generated(streaming_pb2, streaming_pb2_grpc, "StreamingService", servicer)
        ],
        authenticator=authenticator,
        resources=auth_resources,
    )
