"""Settings of the alert service; env vars are prefixed ITSMESH_ALERT_ (infrastructure URLs are shared)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mesh.tokens import AuthClientSettings


class AlertSettings(AuthClientSettings):
    """Typed configuration of one alert instance."""

    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_ALERT_", extra="ignore", frozen=True, validate_by_name=True
    )

    grpc_port: int = 50053
    routing_config_path: Path | None = None
    """Routing configuration file (YAML or JSON); unset = no routes until ReloadRoutingConfig sends one."""
    routing_reload_interval_s: float = Field(default=2.0, gt=0)
    """How often the routing file's mtime is checked; a change is validated and applied."""
    delivery_poll_interval_s: float = Field(default=0.2, gt=0)
    """How often due deliveries and due alert groups are looked for when none was found last time."""
    delivery_max_attempts: int = Field(default=8, ge=1)
    """Attempts before a delivery gives up (state FAILED; RetryFailedDeliveries requeues it)."""
    delivery_backoff_base_s: float = Field(default=1.0, gt=0)
    """Largest delay before the first retry; doubles with each retry (full jitter)."""
    delivery_backoff_max_s: float = Field(default=300.0, gt=0)
    """Cap of the retry delay."""
    escalation_poll_interval_s: float = Field(default=0.5, gt=0)
    """How often unacknowledged alerts are checked for a due escalation (timers fire within this)."""
    suppression_recheck_interval_s: float = Field(default=1.0, gt=0)
    """How often alerts held back by a silence, inhibition or mute interval are checked for its end."""
    share_changes_via_redis: bool = True
    """Share alert changes with the other alert instances over Redis, so WatchAlerts sees all of them."""
    consume_camera_events: bool = True
    """Raise and resolve camera_offline / camera_quality_degraded alerts from camera.events.v1."""
    console_url: str = Field(default="http://localhost:8080", pattern=r"^(https?://\S+)?$")
    """Base URL of the operator console; notifications link to its alert feed (``<url>/#alerts``).
    Empty = no link."""
