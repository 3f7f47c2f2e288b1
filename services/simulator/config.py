"""Settings of the simulator; env vars are prefixed ITSMESH_SIMULATOR_ (infra and auth URLs are shared)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class SimulatorSettings(BaseSettings):
    """Where the simulator finds the services and how it authenticates.

    The simulator acts as an operator: it registers cameras and devices, then streams as each device
    with the device's own credentials. Its user is ``username``; with no ``password`` set, it reads the
    password from ``DATA_DIR/credentials/simulator-user.json``, and if that file does not exist yet it
    creates the user (role operator, random password, file mode 0600) once, logged in as the first admin
    (``ITSMESH_ADMIN_PASSWORD``, or the one-time password file that auth writes under ``itsmesh up``).
    """

    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_SIMULATOR_", extra="ignore", frozen=True, validate_by_name=True
    )

    username: str = Field("simulator", description="User the simulator logs in as (role operator).")
    password: SecretStr | None = Field(
        None, description="Its password; unset = the credentials file, created on first run."
    )
    streaming_address: str | None = Field(
        None, description="host:port of a streaming instance; unset = discovery through REDIS_URL."
    )
    auth_address: str | None = Field(
        None, description="host:port of auth's gRPC API; unset = discovery through REDIS_URL."
    )
    analytics_address: str | None = Field(
        None, description="host:port of analytics (the fleet's geofence); unset = discovery."
    )
    redis_url: str = Field(
        "redis://127.0.0.1:16379/0",
        validation_alias=AliasChoices("REDIS_URL", "ITSMESH_REDIS_URL"),
        description="Redis URL (discovery).",
    )
    auth_url: str = Field(
        "http://127.0.0.1:8000",
        validation_alias=AliasChoices("ITSMESH_AUTH_URL"),
        description="Auth HTTP API: device tokens (client-credentials grant).",
    )
    data_dir: Path = Field(
        Path(".itsmesh"),
        validation_alias=AliasChoices("ITSMESH_DATA_DIR"),
        description="Where the credentials file and the admin's one-time password file live.",
    )
    admin_username: str = Field(
        "admin",
        validation_alias=AliasChoices("ITSMESH_AUTH_ADMIN_USERNAME"),
        description="The first admin, used once to create the simulator's user.",
    )
    admin_password: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("ITSMESH_ADMIN_PASSWORD"),
        description="That admin's password; unset = DATA_DIR/auth/initial-admin-password.",
    )

    @property
    def credentials_file(self) -> Path:
        """Where the simulator's own user and password are kept (mode 0600)."""
        return self.data_dir / "credentials" / "simulator-user.json"

    @property
    def admin_password_file(self) -> Path:
        """The one-time admin password file auth writes when stderr is not a terminal."""
        return self.data_dir / "auth" / "initial-admin-password"
