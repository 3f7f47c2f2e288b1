"""gRPC front of the auth service: proto ↔ domain translation and input validation."""

from __future__ import annotations

from itsmesh.v1 import auth_pb2_grpc


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Answers itsmesh.v1.AuthService; methods not yet implemented answer UNIMPLEMENTED."""
