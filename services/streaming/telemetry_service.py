"""Wiring of telemetry ingest into the streaming process: the auth client for device secrets and the
ingest attached to the servicer while the host runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
from redis.asyncio import Redis

from mesh.client import MeshClient
from mesh.credentials import service_interceptors
from mesh.events import EventPublisher
from mesh.host import Resource, ServiceHost
from services.streaming.config import StreamingSettings
from services.streaming.telemetry_config import TelemetrySettings
from services.streaming.telemetry_guard import GuardSettings, TelemetryGuard
from services.streaming.telemetry_ingest import TelemetryIngest
from services.streaming.telemetry_secrets import DeviceSecrets, SecretCache

AUTH_SERVICE = "auth"


def telemetry_resource(
    servicer: Any,
    settings: StreamingSettings,
    telemetry: TelemetrySettings,
    publisher: EventPublisher,
    redis: Redis,
    auth_interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> Resource:
    """A host resource that attaches a ``TelemetryIngest`` to ``servicer.telemetry`` while it runs.

    Device secrets come from auth through the mesh (discovery, or ``telemetry.auth_grpc_address``),
    with this service's own service token unless ``auth_interceptors`` are given.
    """

    @asynccontextmanager
    async def resource(host: ServiceHost) -> AsyncIterator[TelemetryIngest]:
        interceptors = (
            auth_interceptors
            if auth_interceptors is not None
            else service_interceptors("streaming", data_dir=settings.data_dir)
        )
        if telemetry.auth_grpc_address:
            client = MeshClient.static(
                {AUTH_SERVICE: [telemetry.auth_grpc_address]}, interceptors=interceptors
            )
        else:
            client = await MeshClient.from_registry(
                settings.redis_url, [AUTH_SERVICE], interceptors=interceptors
            )
        guard = TelemetryGuard(redis, GuardSettings(rate_limit_per_minute=telemetry.rate_limit_per_minute))
        secrets = DeviceSecrets(client.channel(AUTH_SERVICE), SecretCache(ttl_s=telemetry.secret_cache_ttl_s))
        ingest = TelemetryIngest(guard, secrets, publisher, settings.instance_id, host.draining, telemetry)
        servicer.telemetry = ingest
        try:
            yield ingest
        finally:
            servicer.telemetry = None
            await ingest.close()
            await client.close()

    return resource
