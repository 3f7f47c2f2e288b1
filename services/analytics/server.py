"""gRPC front of the analytics service: proto ↔ domain translation and input validation."""

from __future__ import annotations

from itsmesh.v1 import analytics_pb2_grpc


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    """Answers itsmesh.v1.AnalyticsService; methods not yet implemented answer UNIMPLEMENTED."""
