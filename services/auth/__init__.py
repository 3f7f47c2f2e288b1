"""The auth service (gRPC 50054)."""
