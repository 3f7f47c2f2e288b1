"""What the deployment files must agree with: the services' default ports and the env vars the code reads."""

from __future__ import annotations

from functools import cache
from typing import Final

from mesh.credentials import ServiceCredentialSettings
from mesh.events import KafkaSettings
from mesh.settings import InfraSettings
from mesh.tls import TlsSettings
from services.alert.config import AlertSettings
from services.analytics.config import AnalyticsSettings
from services.auth.config import AuthSettings
from services.console.config import ConsoleSettings
from services.streaming.config import StreamingSettings
from tests.unit.test_readme_config import _env_names

SETTINGS: Final = {
    "streaming": StreamingSettings,
    "analytics": AnalyticsSettings,
    "alert": AlertSettings,
    "auth": AuthSettings,
    "console": ConsoleSettings,
}
GRPC_PORTS: Final = {
    name: (None if name == "console" else cls.model_fields["grpc_port"].default)
    for name, cls in SETTINGS.items()
}
HTTP_PORTS: Final = {name: cls.model_fields["http_port"].default for name, cls in SETTINGS.items()}
# Read by the OpenTelemetry SDK itself (mesh.interceptors.tracing.configure_tracing).
OTEL_ENV: Final = {"OTEL_EXPORTER_OTLP_ENDPOINT"}


@cache
def known_env_names() -> frozenset[str]:
    """Every env var some itsmesh process reads."""
    names: set[str] = set(OTEL_ENV)
    for cls in [InfraSettings, KafkaSettings, ServiceCredentialSettings, TlsSettings, *SETTINGS.values()]:
        for field, env in _env_names(cls).items():
            names.add(env)
            alias = cls.model_fields[field].validation_alias
            names.update(getattr(alias, "choices", []))
    return frozenset(str(n) for n in names)
