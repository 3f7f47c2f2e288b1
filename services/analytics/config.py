"""Settings of the analytics service; env vars are prefixed ITSMESH_ANALYTICS_ (infra URLs are shared)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mesh.tokens import AuthClientSettings


class AnalyticsSettings(AuthClientSettings):
    """Typed configuration of one analytics instance."""

    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_ANALYTICS_", extra="ignore", frozen=True, validate_by_name=True
    )

    grpc_port: int = 50052
    consume: bool = Field(
        True, description="Consume detections and telemetry from Kafka (off: query API only)."
    )
    consumer_group: str = Field("analytics", description="Kafka consumer group of the pipeline.")
    max_batch_records: int = Field(
        2000, ge=1, description="Most Kafka records processed and written in one transaction."
    )
    max_partition_fetch_bytes: int = Field(
        1_048_576, ge=1024, description="Kafka fetch limit per partition; bounds memory under overload."
    )
    fetch_max_bytes: int = Field(
        8_388_608, ge=1024, description="Kafka fetch limit per request; bounds memory under overload."
    )
    idle_flush_s: float = Field(
        15.0, gt=0, description="A camera silent this long has its open windows closed at wall-clock time."
    )
    relay_alerts: bool = Field(
        True, description="Relay outbox violations and anomalies to the alert service."
    )
    outbox_poll_interval_s: float = Field(
        1.0, gt=0, description="How often the outbox relay looks for undelivered entries."
    )
    outbox_batch_size: int = Field(100, ge=1, description="Outbox entries relayed per round.")
    outbox_backoff_max_s: float = Field(
        30.0, gt=0, description="Longest wait before retrying an entry the alert service refused."
    )
    geofence_reload_interval_s: float = Field(
        5.0, gt=0, description="How often geofence changes are picked up by the telemetry rules."
    )
    retention_h: float = Field(
        168.0,
        gt=0,
        description="Age at which processed event ids and sent outbox rows are deleted.",
    )
    telemetry_speed_limit_kmh: float | None = Field(
        None, gt=0, description="Overspeed limit for devices outside any speed geofence (unset: none)."
    )
    telemetry_tolerance_kmh: float = Field(
        0.0, ge=0, description="Tolerance added to the default telemetry speed limit."
    )
