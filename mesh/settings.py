"""Typed configuration, read from the environment once per process (nothing else reads os.environ)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:15432/itsmesh"
DEFAULT_REDIS_URL = "redis://127.0.0.1:16379/0"
DEFAULT_KAFKA_BOOTSTRAP_SERVERS = "127.0.0.1:19092"


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class InfraSettings(BaseSettings):
    """Where the shared infrastructure lives; the defaults are the embedded servers of `itsmesh infra`."""

    # validate_by_name: code and tests may pass database_url=… although the env name is DATABASE_URL.
    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_", extra="ignore", frozen=True, validate_by_name=True
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "ITSMESH_DATABASE_URL"),
        description="PostgreSQL/TimescaleDB URL.",
    )
    redis_url: str = Field(
        DEFAULT_REDIS_URL,
        validation_alias=AliasChoices("REDIS_URL", "ITSMESH_REDIS_URL"),
        description="Redis URL (discovery, rate limits, nonces, revocations).",
    )
    kafka_bootstrap_servers: str = Field(
        DEFAULT_KAFKA_BOOTSTRAP_SERVERS,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "ITSMESH_KAFKA_BOOTSTRAP_SERVERS"),
        description="Comma-separated Kafka bootstrap servers.",
    )
    data_dir: Path = Field(
        Path(".itsmesh"),
        validation_alias=AliasChoices("ITSMESH_DATA_DIR"),
        description="Where embedded servers keep their data and logs.",
    )
    log_level: str = Field(
        "INFO",
        validation_alias=AliasChoices("ITSMESH_LOG_LEVEL", "LOG_LEVEL"),
        description="Log level of every process (DEBUG, INFO, WARNING, ERROR).",
    )


def _own_address() -> str:
    """This host's address as other hosts reach it (a container's IP on its network)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class ServiceSettings(InfraSettings):
    """Settings every service process shares; each service subclasses it with its own env prefix."""

    bind_host: str = Field("0.0.0.0", description="Address the gRPC server binds.")
    advertise_host: str = Field(
        "127.0.0.1",
        description="Address registered in discovery for clients; `auto` = this host's own IP (containers).",
    )
    grpc_port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    http_port: int | None = Field(None, ge=0, le=65535, description="HTTP port for services with a REST API.")
    instance_id: str = Field(default_factory=_default_instance_id, description="Unique id of this instance.")
    zone: str = Field("local", description="Zone label registered in discovery.")
    drain_grace_s: float = Field(
        10.0, gt=0, description="Seconds to drain in-flight RPCs and streams on SIGTERM."
    )
    migrate_on_start: bool = Field(True, description="Apply pending SQL migrations when the service starts.")
    max_concurrent_rpcs: int | None = Field(
        None,
        ge=1,
        description="Most RPCs (open streams included) served at once; more get RESOURCE_EXHAUSTED.",
    )
    metrics_port: int | None = Field(
        0,
        ge=0,
        le=65535,
        description="Prometheus /metrics port (0 = any free port, registered in discovery).",
    )
    register_in_discovery: bool = Field(
        True, description="Register this instance in Redis discovery while it serves."
    )
    registry_ttl_s: float = Field(
        10.0, gt=0, description="Discovery lease; a silent instance leaves after it."
    )

    @field_validator("advertise_host")
    @classmethod
    def _resolve_auto(cls, value: str) -> str:
        # Replicas behind one service name each need their own reachable address in discovery.
        return _own_address() if value == "auto" else value


class EmbeddedPortSettings(BaseSettings):
    """Fixed, non-standard ports of the embedded servers, so they never clash with system ones."""

    model_config = SettingsConfigDict(env_prefix="ITSMESH_", extra="ignore", frozen=True)

    pg_port: int = Field(15432, ge=1, le=65535, description="Embedded PostgreSQL port.")
    redis_port: int = Field(16379, ge=1, le=65535, description="Embedded Redis-compatible server port.")
    kafka_port: int = Field(19092, ge=1, le=65535, description="Embedded Kafka-protocol broker port.")
