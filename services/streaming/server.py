"""gRPC front of the streaming service: proto ↔ domain translation and input validation."""

from __future__ import annotations

from itsmesh.v1 import streaming_pb2_grpc


class StreamingServicer(streaming_pb2_grpc.StreamingServiceServicer):
    """Answers itsmesh.v1.StreamingService; methods not yet implemented answer UNIMPLEMENTED."""
