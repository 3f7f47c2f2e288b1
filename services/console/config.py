"""Settings of the console; env vars are prefixed ITSMESH_CONSOLE_ (infra and auth URLs shared)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from mesh.tokens import AuthClientSettings


class ConsoleSettings(AuthClientSettings):
    """Typed configuration of the console process."""

    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_CONSOLE_", extra="ignore", frozen=True, validate_by_name=True
    )

    http_port: int | None = 8080
    migrate_on_start: bool = False
