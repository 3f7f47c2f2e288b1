"""The streaming service (gRPC 50051)."""
