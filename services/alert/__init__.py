"""The alert service (gRPC 50053)."""
