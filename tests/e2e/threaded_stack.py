"""Every service on loopback in a thread of its own, so synchronous property tests (hypothesis,
schemathesis) can call them while the services' event loop keeps running."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from mesh.host import ServiceHost
from services.alert.config import AlertSettings
from services.alert.service import build as build_alert
from services.analytics.config import AnalyticsSettings
from services.analytics.service import build as build_analytics
from services.auth.service import build as build_auth
from services.console.config import ConsoleSettings
from services.console.service import build as build_console
from services.streaming.config import StreamingSettings
from services.streaming.service import build as build_streaming
from tests.integration.auth_stack import COMMON, auth_settings, create_user, grpc_login

SERVICES = {
    "streaming": (build_streaming, StreamingSettings),
    "analytics": (build_analytics, AnalyticsSettings),
    "alert": (build_alert, AlertSettings),
}


@dataclass
class RunningStack:
    """Addresses of the running services and an admin's access token."""

    grpc: dict[str, str] = field(default_factory=dict)
    http: dict[str, str] = field(default_factory=dict)
    admin_token: str = ""


@contextmanager
def threaded_stack(infra: Any) -> Iterator[RunningStack]:
    """Start auth, streaming, analytics, alert and the console in a background loop; stop them on exit."""
    ready, stop_requested = threading.Event(), threading.Event()
    running = RunningStack()
    failure: list[BaseException] = []

    async def main() -> None:
        async with AsyncExitStack() as stack:
            auth = ServiceHost(build_auth(auth_settings(infra)))
            await auth.start()
            stack.push_async_callback(auth.stop)
            running.grpc["auth"] = f"127.0.0.1:{auth.grpc_port}"
            running.http["auth"] = f"http://127.0.0.1:{auth.http_port}"
            shared = {
                **COMMON,
                "database_url": infra.database_url,
                "redis_url": infra.redis_url,
                "kafka_bootstrap_servers": infra.kafka_bootstrap_servers,
                "migrate_on_start": False,
                "auth_url": running.http["auth"],
            }
            for name, (build, settings_cls) in SERVICES.items():
                host = ServiceHost(build(settings_cls(**shared)))
                await host.start()
                stack.push_async_callback(host.stop)
                running.grpc[name] = f"127.0.0.1:{host.grpc_port}"
            console = ServiceHost(build_console(ConsoleSettings(**{**shared, "http_port": 0})))
            await console.start()
            stack.push_async_callback(console.stop)
            running.http["console"] = f"http://127.0.0.1:{console.http_port}"
            authority = auth.spec.grpc_services[0].servicer.authority  # type: ignore[attr-defined]
            username, _ = await create_user(authority, "admin")
            running.admin_token = (await grpc_login(running.grpc["auth"], username)).access_token
            ready.set()
            while not stop_requested.is_set():
                await asyncio.sleep(0.05)

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=thread_main, name="threaded-stack", daemon=True)
    thread.start()
    ready.wait(120)
    if failure:
        raise RuntimeError("the services did not start") from failure[0]
    try:
        yield running
    finally:
        stop_requested.set()
        thread.join(60)
