"""gRPC front of the alert service: proto ↔ domain translation and input validation."""

from __future__ import annotations

from itsmesh.v1 import alert_pb2_grpc


class AlertServicer(alert_pb2_grpc.AlertServiceServicer):
    """Answers itsmesh.v1.AlertService; methods not yet implemented answer UNIMPLEMENTED."""
