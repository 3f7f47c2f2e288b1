"""Settings of the analytics service; env vars are prefixed ITSMESH_ANALYTICS_ (infra URLs are shared)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from mesh.tokens import AuthClientSettings


class AnalyticsSettings(AuthClientSettings):
    """Typed configuration of one analytics instance."""

    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_ANALYTICS_", extra="ignore", frozen=True, validate_by_name=True
    )

    grpc_port: int = 50052
