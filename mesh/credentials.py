"""Service credentials for a service's own outgoing calls (DESIGN §6: services authenticate as services).

A service's client id and secret come from ``ITSMESH_SERVICE_CLIENT_ID`` / ``ITSMESH_SERVICE_CLIENT_SECRET``,
or, on one machine (``itsmesh up``), from ``DATA_DIR/credentials/<service>.json`` that the auth service
writes (mode 0600) for every name in ``ITSMESH_AUTH_PROVISION_SERVICE_ACCOUNTS``. The file is read at the
first call, not at start-up, because auth may provision it after the service starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

import grpc
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.interceptors import split_by_arity
from mesh.interceptors.auth import BearerTokenInterceptor
from mesh.settings import InfraSettings
from mesh.tokens import ServiceTokenSource

CREDENTIALS_DIR: Final = "credentials"


class ServiceCredentialSettings(BaseSettings):
    """Where a service's client credentials and the auth service's token endpoint are."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, validate_by_name=True)

    service_client_id: str | None = Field(
        None,
        validation_alias=AliasChoices("ITSMESH_SERVICE_CLIENT_ID"),
        description="Client id of this service's account; unset = DATA_DIR/credentials/<service>.json.",
    )
    service_client_secret: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("ITSMESH_SERVICE_CLIENT_SECRET"),
        description="Client secret of this service's account (never logged).",
    )
    auth_url: str = Field(
        "http://127.0.0.1:8000",
        validation_alias=AliasChoices("ITSMESH_AUTH_URL"),
        description="Base URL of the auth service's HTTP API.",
    )


def credentials_path(data_dir: Path, service_name: str) -> Path:
    """The file auth provisions for ``service_name`` under ``data_dir``."""
    return data_dir / CREDENTIALS_DIR / f"{service_name}.json"


def write_credentials(path: Path, client_id: str, client_secret: str) -> None:
    """Write a credentials file readable by its owner only (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"client_id": client_id, "client_secret": client_secret}, handle)


def read_credentials(path: Path) -> tuple[str, str] | None:
    """(client id, secret) from a credentials file, or None when it does not exist (yet)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return str(data["client_id"]), str(data["client_secret"])


class ServiceToken:
    """A ``TokenProvider``: the service token, or None (no header) while no credentials exist."""

    def __init__(self, auth_url: str, credentials: tuple[str, str] | None, path: Path | None) -> None:
        self._auth_url = auth_url
        self._path = path
        self._source = ServiceTokenSource(auth_url, *credentials) if credentials is not None else None

    async def __call__(self) -> str | None:
        if self._source is None and self._path is not None:
            found = read_credentials(self._path)
            if found is not None:
                self._source = ServiceTokenSource(self._auth_url, *found)
        return await self._source() if self._source is not None else None


def service_token(
    service_name: str,
    settings: ServiceCredentialSettings | None = None,
    *,
    data_dir: Path | None = None,
) -> ServiceToken:
    """The token provider of ``service_name``: env credentials first, else its provisioned file."""
    settings = settings if settings is not None else ServiceCredentialSettings()
    secret = settings.service_client_secret
    if settings.service_client_id and secret is not None and secret.get_secret_value():
        pair = (settings.service_client_id, secret.get_secret_value())
        return ServiceToken(settings.auth_url, pair, None)
    directory = data_dir if data_dir is not None else InfraSettings().data_dir
    return ServiceToken(settings.auth_url, None, credentials_path(directory, service_name))


def service_interceptors(
    service_name: str,
    settings: ServiceCredentialSettings | None = None,
    *,
    data_dir: Path | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that send ``service_name``'s service token on calls that carry no credentials
    (one per call arity, as grpc.aio channels want them, so streams carry the token too)."""
    return split_by_arity([BearerTokenInterceptor(service_token(service_name, settings, data_dir=data_dir))])
