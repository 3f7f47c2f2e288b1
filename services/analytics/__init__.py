"""The analytics service (gRPC 50052)."""
