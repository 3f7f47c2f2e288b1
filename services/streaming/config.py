"""Settings of the streaming service; env vars are prefixed ITSMESH_STREAMING_ (infra URLs are shared)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from mesh.tokens import AuthClientSettings


class StreamingSettings(AuthClientSettings):
    """Typed configuration of one streaming instance."""

    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_STREAMING_", extra="ignore", frozen=True, validate_by_name=True
    )

    grpc_port: int = 50051
