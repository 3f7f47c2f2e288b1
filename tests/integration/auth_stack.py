"""A real auth service and the three other services behind it, for the auth integration tests.

Imported by ``test_auth_*.py``: every host runs in-process on loopback ports against the session's real
PostgreSQL and Redis; the other services read the JWKS from the auth host's HTTP port, as in production.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx

from itsmesh.v1 import auth_pb2, auth_pb2_grpc
from mesh.host import ServiceHost, ServiceSpec
from mesh.status import StatusDetails, status_details
from services.alert.config import AlertSettings
from services.alert.service import build as build_alert
from services.analytics.config import AnalyticsSettings
from services.analytics.service import build as build_analytics
from services.auth.authority import SYSTEM, Authority
from services.auth.config import AuthSettings
from services.auth.service import build as build_auth
from services.streaming.config import StreamingSettings
from services.streaming.service import build as build_streaming

PASSWORD = "correct horse battery staple"

COMMON: dict[str, Any] = {
    "bind_host": "127.0.0.1",
    "grpc_port": 0,
    "register_in_discovery": False,
    "metrics_port": None,
    "drain_grace_s": 1.0,
}


def auth_settings(infra, **overrides: Any) -> AuthSettings:
    """Auth settings for tests: loopback, free ports, a source lockout that other tests cannot trip."""
    values = {
        **COMMON,
        "database_url": infra.database_url,
        "redis_url": infra.redis_url,
        "http_port": 0,
        "lockout_ip_threshold": 10_000,
        **overrides,
    }
    return AuthSettings(**values)


@dataclass
class Stack:
    """Running hosts and how to reach them."""

    auth: ServiceHost
    others: dict[str, ServiceHost] = field(default_factory=dict)

    @property
    def authority(self) -> Authority:
        servicer = self.auth.spec.grpc_services[0].servicer
        return servicer.authority  # type: ignore[attr-defined, no-any-return]

    @property
    def auth_http(self) -> str:
        return f"http://127.0.0.1:{self.auth.http_port}"

    @property
    def auth_grpc(self) -> str:
        return f"127.0.0.1:{self.auth.grpc_port}"

    def address(self, name: str) -> str:
        host = self.auth if name == "auth" else self.others[name]
        return f"127.0.0.1:{host.grpc_port}"


@asynccontextmanager
async def running_stack(infra, *, with_services: bool = True, **auth_overrides: Any) -> AsyncIterator[Stack]:
    """Start auth (and streaming, analytics, alert verifying its tokens); stop them all on exit."""
    async with AsyncExitStack() as stack:
        auth = ServiceHost(build_auth(auth_settings(infra, **auth_overrides)))
        await auth.start()
        stack.push_async_callback(auth.stop)
        running = Stack(auth)
        if with_services:
            auth_url = f"http://127.0.0.1:{auth.http_port}"
            builders: list[tuple[str, Callable[[Any], ServiceSpec], type]] = [
                ("streaming", build_streaming, StreamingSettings),
                ("analytics", build_analytics, AnalyticsSettings),
                ("alert", build_alert, AlertSettings),
            ]
            # analytics answers queries only: consuming the shared topics or relaying its outbox would
            # reach into unrelated tests
            extra: dict[str, dict[str, Any]] = {"analytics": {"consume": False, "relay_alerts": False}}
            for name, build, settings_cls in builders:
                settings = settings_cls(
                    **COMMON,
                    database_url=infra.database_url,
                    redis_url=infra.redis_url,
                    migrate_on_start=False,
                    auth_url=auth_url,
                    **extra.get(name, {}),
                )
                host = ServiceHost(build(settings))
                await host.start()
                stack.push_async_callback(host.stop)
                running.others[name] = host
        yield running


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_user(authority: Authority, *roles: str, password: str = PASSWORD) -> tuple[str, str]:
    """A new user with ``roles``; returns (username, user_id)."""
    username = unique("u")
    user = await authority.create_user(SYSTEM, username=username, password=password, roles=roles)
    return username, user.user_id


async def grpc_login(
    address: str, username: str, password: str = PASSWORD, **extra: Any
) -> auth_pb2.TokenResponse:
    """Log in over gRPC."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        return await stub.Login(
            auth_pb2.LoginRequest(username=username, password=password, **extra), timeout=10
        )


async def user_token(stack: Stack, *roles: str) -> str:
    """An access token of a new user holding ``roles``."""
    username, _ = await create_user(stack.authority, *roles)
    return (await grpc_login(stack.auth_grpc, username)).access_token


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


async def expect_rpc_error(call: Any) -> StatusDetails:
    """Await a call that must fail; its decoded status."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return status_details(exc)
    raise AssertionError("the call succeeded")


def http_client(stack: Stack) -> httpx.AsyncClient:
    """An HTTP client for the auth REST API."""
    return httpx.AsyncClient(base_url=stack.auth_http, timeout=10)
