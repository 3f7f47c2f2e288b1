"""Settings of the auth service; env vars are prefixed ITSMESH_AUTH_ (infrastructure URLs are shared)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from mesh.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    """Typed configuration of one auth instance."""

    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_AUTH_", extra="ignore", frozen=True, validate_by_name=True
    )

    grpc_port: int = 50054
    http_port: int | None = 8000
