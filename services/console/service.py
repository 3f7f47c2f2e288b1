"""Assembles the console process for the service host."""

from __future__ import annotations

from mesh.host import ServiceSpec
from services.console.app import create_app
from services.console.config import ConsoleSettings


def build(settings: ConsoleSettings | None = None) -> ServiceSpec:
    """The console as the host runs it: HTTP only, no database migrations of its own."""
    settings = settings or ConsoleSettings()
    return ServiceSpec(name="console", settings=settings, http_app=create_app(), uses_database=False)
