"""Assembles the console process for the service host.

Resources, started in this order and closed in reverse: token verification (when auth is on), the mesh
client to streaming, alert and analytics (the console's own calls carry its service token), then the
status aggregator (one tick before the HTTP server accepts, so /api/status answers from the first request).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from functools import partial

from mesh.credentials import ServiceCredentialSettings, service_interceptors
from mesh.host import ServiceHost, ServiceSpec
from mesh.tokens import token_auth
from services.console.aggregator import StatusAggregator
from services.console.app import create_app
from services.console.config import ConsoleSettings
from services.console.counts import mesh_counts
from services.console.upstream import Upstreams


def build(settings: ConsoleSettings | None = None, *, interval_s: float = 1.0) -> ServiceSpec:
    """The console as the host runs it: HTTP only, no database migrations of its own."""
    settings = settings or ConsoleSettings()
    authenticator, auth_resources = token_auth(settings)
    credentials = ServiceCredentialSettings(auth_url=settings.auth_url)
    upstreams = Upstreams.from_registry(
        settings.redis_url,
        interceptors=service_interceptors("console", credentials, data_dir=settings.data_dir),
    )
    aggregator = StatusAggregator(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        interval_s=interval_s,
        counts=partial(mesh_counts, upstreams),
    )

    def services(host: ServiceHost) -> AbstractAsyncContextManager[object]:
        return upstreams

    def status_loop(host: ServiceHost) -> AbstractAsyncContextManager[object]:
        return aggregator

    return ServiceSpec(
        name="console",
        settings=settings,
        http_app=create_app(aggregator, authenticator, upstreams=upstreams),
        uses_database=False,
        resources=(*auth_resources, services, status_loop),
    )
