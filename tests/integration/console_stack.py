"""A real console with auth, streaming, alert and analytics behind it, for the console and dashboard tests.

Every host runs in-process on loopback against the session's real PostgreSQL, Redis and broker. The
services register in discovery (the console reaches them through the mesh) and verify tokens against the
auth host; the console's own calls use the service account auth provisions for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from itsmesh.v1 import streaming_pb2, streaming_pb2_grpc
from mesh.host import GrpcService, ServiceHost, ServiceSpec
from mesh.settings import ServiceSettings
from services.alert.config import AlertSettings
from services.alert.service import build as build_alert
from services.analytics.config import AnalyticsSettings
from services.analytics.service import build as build_analytics
from services.console.config import ConsoleSettings
from services.console.service import build as build_console
from services.streaming.config import StreamingSettings
from services.streaming.service import build as build_streaming
from tests.integration.auth_stack import Stack, running_stack, user_token
from tests.integration.mesh_instance import EchoStreaming

SERVICE_BUILDERS: dict[str, tuple[Callable[[Any], ServiceSpec], type, dict[str, Any]]] = {
    "streaming": (build_streaming, StreamingSettings, {}),
    "alert": (build_alert, AlertSettings, {"consume_camera_events": False}),
    # queries only: consuming the shared topics or relaying its outbox would reach into unrelated tests
    "analytics": (build_analytics, AnalyticsSettings, {"consume": False, "relay_alerts": False}),
}


@dataclass
class ConsoleStack:
    """The running hosts and how to reach the console."""

    auth: Stack
    console: ServiceHost
    services: dict[str, ServiceHost] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.console.http_port}"

    async def token(self, *roles: str) -> str:
        """An access token of a new user holding ``roles``."""
        return await user_token(self.auth, *roles)

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        """An HTTP client of the console, sending ``token`` as a bearer token when given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=15)


def service_settings(infra: Any, settings_cls: type, auth_url: str, **overrides: Any) -> Any:
    """Settings of a service host that registers in discovery and serves metrics on a free port."""
    values: dict[str, Any] = {
        "database_url": infra.database_url,
        "redis_url": infra.redis_url,
        "kafka_bootstrap_servers": infra.kafka_bootstrap_servers,
        "bind_host": "127.0.0.1",
        "grpc_port": 0,
        "metrics_port": 0,
        "register_in_discovery": True,
        "migrate_on_start": False,
        "drain_grace_s": 0.5,
        "auth_url": auth_url,
        **overrides,
    }
    return settings_cls(**values)


async def registered_instance(infra: Any, service: str) -> ServiceHost:
    """A real registered host named ``service`` serving StreamingService (echo) on free ports."""
    settings = ServiceSettings(
        database_url=infra.database_url,
        redis_url=infra.redis_url,
        bind_host="127.0.0.1",
        grpc_port=0,
        metrics_port=0,
        migrate_on_start=False,
        drain_grace_s=0.2,
    )
    servicer = GrpcService.from_generated(
        streaming_pb2, streaming_pb2_grpc, "StreamingService", EchoStreaming("x")
    )
    host = ServiceHost(
        ServiceSpec(name=service, settings=settings, grpc_services=[servicer], uses_database=False)
    )
    await host.start()
    return host


async def start_service(infra: Any, name: str, auth_url: str, **overrides: Any) -> ServiceHost:
    """One of streaming, alert or analytics, started and registered."""
    build, settings_cls, defaults = SERVICE_BUILDERS[name]
    host = ServiceHost(build(service_settings(infra, settings_cls, auth_url, **{**defaults, **overrides})))
    await host.start()
    return host


@asynccontextmanager
async def console_stack(
    infra: Any, services: tuple[str, ...] = ("streaming", "alert", "analytics"), **console_overrides: Any
) -> AsyncIterator[ConsoleStack]:
    """Auth, the named services and a console requiring tokens; everything stopped on exit."""
    async with AsyncExitStack() as stack:
        auth = await stack.enter_async_context(
            running_stack(infra, with_services=False, provision_service_accounts="console")
        )
        running: dict[str, ServiceHost] = {}
        for name in services:
            host = await start_service(infra, name, auth.auth_http)
            stack.push_async_callback(host.stop)
            running[name] = host
        values: dict[str, Any] = {
            "database_url": infra.database_url,
            "redis_url": infra.redis_url,
            "kafka_bootstrap_servers": infra.kafka_bootstrap_servers,
            "bind_host": "127.0.0.1",
            "http_port": 0,
            "metrics_port": None,
            "register_in_discovery": False,
            "require_auth": True,
            "auth_url": auth.auth_http,
            "data_dir": auth.authority.settings.data_dir,
            **console_overrides,
        }
        settings = ConsoleSettings(**values)
        console = ServiceHost(build_console(settings))
        await console.start()
        stack.push_async_callback(console.stop)
        yield ConsoleStack(auth, console, running)


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout} s; last: {str(last)[:1500]}")
