"""Settings of the alert service; env vars are prefixed ITSMESH_ALERT_ (infrastructure URLs are shared)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from mesh.tokens import AuthClientSettings


class AlertSettings(AuthClientSettings):
    """Typed configuration of one alert instance."""

    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_ALERT_", extra="ignore", frozen=True, validate_by_name=True
    )

    grpc_port: int = 50053
