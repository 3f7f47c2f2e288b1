"""The README's configuration table and the settings classes must describe the same variables."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from mesh.credentials import ServiceCredentialSettings
from mesh.events import KafkaSettings
from mesh.settings import EmbeddedPortSettings, InfraSettings
from mesh.tls import TlsSettings
from services.alert.config import AlertSettings
from services.analytics.config import AnalyticsSettings
from services.auth.config import AuthSettings
from services.console.config import ConsoleSettings
from services.simulator.config import SimulatorSettings
from services.streaming.config import StreamingSettings
from services.streaming.telemetry_config import TelemetrySettings

README = Path(__file__).resolve().parents[2] / "README.md"
SERVICE_SETTINGS = [
    StreamingSettings,
    AnalyticsSettings,
    AlertSettings,
    AuthSettings,
    ConsoleSettings,
    SimulatorSettings,
    TelemetrySettings,
]


def _documented() -> set[str]:
    text = README.read_text()
    table = text[text.index("## Configuration") :].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z_<>]+)`", row.split("|")[1])}


def _env_names(cls: type[BaseSettings]) -> dict[str, str]:
    """field → the env var a user sets (first alias, else prefix + NAME)."""
    prefix = cls.model_config.get("env_prefix", "")
    names = {}
    for field, info in cls.model_fields.items():
        alias = info.validation_alias
        names[field] = alias.choices[0] if isinstance(alias, AliasChoices) else f"{prefix}{field}".upper()
    return names


def _generic(name: str, cls: type[BaseSettings]) -> str:
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    return name.replace(prefix, "ITSMESH_<SERVICE>_") if prefix else name


def test_every_setting_is_documented_in_the_readme():
    documented = _documented()
    missing = []
    for cls in [
        InfraSettings,
        EmbeddedPortSettings,
        KafkaSettings,
        ServiceCredentialSettings,
        TlsSettings,
        *SERVICE_SETTINGS,
    ]:
        for field, env in _env_names(cls).items():
            if field == "http_port" and cls.model_fields[field].default is None:
                continue  # this service has no HTTP API
            if env not in documented and _generic(env, cls) not in documented:
                missing.append(env)
    assert missing == []


def test_every_documented_variable_exists():
    known: set[str] = set()
    for cls in [
        InfraSettings,
        EmbeddedPortSettings,
        KafkaSettings,
        ServiceCredentialSettings,
        TlsSettings,
        *SERVICE_SETTINGS,
    ]:
        for env in _env_names(cls).values():
            known |= {env, _generic(env, cls)}
    assert _documented() - known == set()
