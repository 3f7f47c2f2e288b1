"""Settings of telemetry ingest in the streaming service; env vars are prefixed ITSMESH_TELEMETRY_."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TelemetrySettings(BaseSettings):
    """Limits of StreamTelemetry/SubmitTelemetry and how device secrets are reached."""

    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_TELEMETRY_", extra="ignore", frozen=True, validate_by_name=True
    )

    rate_limit_per_minute: int = Field(
        600, ge=1, description="Readings per device and per credential (API key) in each one-minute window."
    )
    stream_window: int = Field(
        512, ge=1, le=65_536, description="Readings a telemetry stream may have unsettled (initial credit)."
    )
    max_batch_samples: int = Field(100, ge=1, le=1000, description="Most readings in one TelemetryBatch.")
    secret_cache_ttl_s: float = Field(
        30.0, gt=0, description="How long a device's HMAC secret fetched from auth is reused."
    )
    auth_grpc_address: str | None = Field(
        None, description="host:port of auth's gRPC API for device secrets; unset = discovery."
    )
