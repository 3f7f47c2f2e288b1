"""The one way a service process runs: gRPC server, health, reflection, logs, migrations, graceful stop.

Start-up order: logs → migrations → resources → gRPC (+ HTTP) listening → SERVING → registered.
Shutdown order (SIGTERM/SIGINT): deregistered → NOT_SERVING → `draining` set (streams wind down) →
stop accepting and drain in-flight RPCs for `drain_grace_s` → HTTP stopped → resources closed in reverse.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.endpoints import Instance
from mesh.http import HttpServer
from mesh.interceptors import Authenticator, configure_tracing, server_interceptors, start_metrics_server
from mesh.logs import configure_logging
from mesh.migrations import apply_migrations
from mesh.registry import Registration
from mesh.settings import ServiceSettings
from mesh.tls import TlsSettings

log = logging.getLogger(__name__)

VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class GrpcService:
    """A generated servicer to mount: its full proto name and the generated `add_..._to_server` function."""

    full_name: str
    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]

    @classmethod
    def from_generated(cls, pb2: Any, pb2_grpc: Any, service: str, servicer: object) -> GrpcService:
        """Mount `servicer` for `service` (e.g. "StreamingService") of a generated module pair."""
        full_name = pb2.DESCRIPTOR.services_by_name[service].full_name
        return cls(full_name, servicer, getattr(pb2_grpc, f"add_{service}Servicer_to_server"))


Resource = Callable[["ServiceHost"], AbstractAsyncContextManager[object]]


@dataclass(slots=True)
class ServiceSpec:
    """What a service process consists of; built by `services/<name>/service.py`."""

    name: str
    settings: ServiceSettings
    grpc_services: Sequence[GrpcService] = ()
    http_app: Any = None
    uses_database: bool = True
    resources: Sequence[Resource] = field(default_factory=tuple)
    authenticator: Authenticator | None = None


class ServiceHost:
    """Runs a `ServiceSpec`: call `run()` in a process, or `start()`/`stop()` from tests."""

    def __init__(self, spec: ServiceSpec, *, tls: TlsSettings | None = None) -> None:
        self.spec = spec
        self.settings = spec.settings
        self.tls = tls if tls is not None else TlsSettings()  # ITSMESH_TLS_*: plaintext unless enabled
        self.started_at = time.time()
        self.draining = asyncio.Event()
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self._stack = AsyncExitStack()
        self._registration: Registration | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Bring the service up to SERVING; raises if a port cannot be bound or migrations fail."""
        spec, settings = self.spec, self.settings
        if spec.uses_database and settings.migrate_on_start:
            applied = await apply_migrations(settings.database_url)
            if applied:
                log.info("migrations applied", extra={"versions": [m.version for m in applied]})
        for resource in spec.resources:
            await self._stack.enter_async_context(resource(self))
        if spec.grpc_services:
            await self._start_grpc()
        if spec.http_app is not None:
            self._http = HttpServer(spec.http_app, settings.bind_host, settings.http_port or 0)
            await self._http.start()
            self.http_port = self._http.port
        if settings.metrics_port is not None:
            self._metrics_server, _ = start_metrics_server(settings.metrics_port, addr=settings.bind_host)
            self.metrics_port = int(self._metrics_server.server_port)
        if self.grpc_port is not None and settings.register_in_discovery:
            self._registration = Registration(
                settings.redis_url, self.instance(), ttl_s=settings.registry_ttl_s
            )
            await self._registration.start()  # never raises for a Redis outage: it retries in the background
        log.info(
            "serving",
            extra={"grpc_port": self.grpc_port, "http_port": self.http_port, "version": VERSION},
        )

    def instance(self) -> Instance:
        """This process as discovery lists it."""
        settings = self.settings
        return Instance(
            service=self.spec.name,
            instance_id=settings.instance_id,
            address=f"{settings.advertise_host}:{self.grpc_port}",
            version=VERSION,
            zone=settings.zone,
            started_at=self.started_at,
            metadata={
                name: str(port)
                for name, port in (("http_port", self.http_port), ("metrics_port", self.metrics_port))
                if port
            },
        )

    async def _start_grpc(self) -> None:
        # One grpc.aio hop: tracing, metrics, limit, auth, request checks, then the handler's deadline becomes
        # the default of every mesh call it makes.
        interceptors = server_interceptors(
            self.spec.name,
            authenticator=self.spec.authenticator,
            max_concurrent=self.settings.max_concurrent_rpcs,
            propagate_deadline=True,
        )
        server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
        names = [svc.full_name for svc in self.spec.grpc_services]
        for svc in self.spec.grpc_services:
            svc.add_to_server(svc.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        address = f"{self.settings.bind_host}:{self.settings.grpc_port}"
        try:
            if self.tls.enabled:
                port = server.add_secure_port(address, self.tls.server_credentials())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc reports a failed bind as RuntimeError without the reason
            raise OSError(
                f"{self.spec.name}: cannot listen for gRPC on {address} — the port is taken or the address "
                f"is not local; free it or set ITSMESH_{self.spec.name.upper()}_GRPC_PORT"
            ) from exc
        await server.start()
        self._server, self.grpc_port = server, port
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, drain streams and in-flight RPCs, then release resources."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("draining", extra={"grace_s": self.settings.drain_grace_s})
        if self._registration is not None:
            await self._registration.stop()  # leave discovery first, so no new caller picks us while we drain
        await self.health.enter_graceful_shutdown()
        self.draining.set()
        if self._server is not None:
            await self._server.stop(self.settings.drain_grace_s)
        if self._http is not None:
            await self._http.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        await self._stack.aclose()
        log.info("stopped")

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop gracefully."""
        configure_logging(self.spec.name, self.settings.instance_id, self.settings.log_level)
        configure_tracing(self.spec.name, self.settings.instance_id, version=VERSION)
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        try:
            await self.start()
            settle_heap()
            await stop_requested.wait()
        finally:
            try:
                await self.stop()
            except Exception:
                log.exception("unclean shutdown")
                raise


def settle_heap() -> None:
    """Collect once, then freeze what start-up built (modules, protobuf descriptors, pools, caches) into
    the permanent generation, so the collector's full passes walk only what requests create: a query that
    allocates thousands of rows otherwise pays, every few calls, for a full pass over the whole process."""
    gc.collect()
    gc.freeze()
