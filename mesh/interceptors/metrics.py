"""Prometheus metrics of every RPC the mesh serves or makes, and of its circuit breakers.

Metric names (``_total`` is added to counters by the exposition format)::

    itsmesh_grpc_server_requests_total{service,method,code}          RPCs served, by final status code
    itsmesh_grpc_server_latency_seconds{service,method,code}         histogram; a stream counts as open → end
    itsmesh_grpc_server_in_flight{service,method}                    RPCs (streams included) open right now
    itsmesh_grpc_server_concurrency_in_flight{service}               slots used under the concurrency limit
    itsmesh_grpc_server_concurrency_limit{service}                   that limit
    itsmesh_grpc_client_requests_total{target_service,method,code}   calls made, by final status code
    itsmesh_grpc_client_latency_seconds{target_service,method,code}  histogram, call start → status
    itsmesh_grpc_client_in_flight{target_service,method}             calls open right now
    itsmesh_breaker_state{service,endpoint}                          0 closed, 1 half-open, 2 open

``service`` is the mesh service name ("streaming"), ``method`` the full gRPC method without the leading
slash ("itsmesh.v1.StreamingService/GetCamera"), ``code`` the status code name ("OK", "UNAVAILABLE").
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.exposition import choose_encoder

from mesh.breaker import BreakerState
from mesh.interceptors._rpc import (
    Context,
    Finish,
    ObservingClientInterceptor,
    Proceed,
    RpcInfo,
    WrappingServerInterceptor,
    final_code,
    rpc_info,
)

LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Seconds; from sub-millisecond loopback unaries to streams that stay open for minutes."""

BREAKER_STATE_VALUES: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
"""Value of ``itsmesh_breaker_state`` for each breaker state (higher is worse)."""


class MeshMetrics:
    """The mesh's metric families, registered once in one registry (get it with ``mesh_metrics``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.server_requests = Counter(
            "itsmesh_grpc_server_requests",
            "RPCs served, by final status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.server_latency = Histogram(
            "itsmesh_grpc_server_latency_seconds",
            "Time from an RPC's arrival to its status (a stream: how long it stayed open).",
            ["service", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.server_in_flight = Gauge(
            "itsmesh_grpc_server_in_flight",
            "RPCs being served right now; open streams included.",
            ["service", "method"],
            registry=registry,
        )
        self.server_concurrency_in_flight = Gauge(
            "itsmesh_grpc_server_concurrency_in_flight",
            "RPCs holding a slot under the server's concurrency limit.",
            ["service"],
            registry=registry,
        )
        self.server_concurrency_limit = Gauge(
            "itsmesh_grpc_server_concurrency_limit",
            "Most RPCs the server runs at once; more are answered RESOURCE_EXHAUSTED.",
            ["service"],
            registry=registry,
        )
        self.client_requests = Counter(
            "itsmesh_grpc_client_requests",
            "Calls made to other services, by final status code.",
            ["target_service", "method", "code"],
            registry=registry,
        )
        self.client_latency = Histogram(
            "itsmesh_grpc_client_latency_seconds",
            "Time from a call's start to its status (a stream: how long it stayed open).",
            ["target_service", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.client_in_flight = Gauge(
            "itsmesh_grpc_client_in_flight",
            "Calls to other services open right now; streams included.",
            ["target_service", "method"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "itsmesh_breaker_state",
            "Circuit breaker state per endpoint: 0 closed, 1 half-open, 2 open.",
            ["service", "endpoint"],
            registry=registry,
        )

    def watch_concurrency(self, service: str, in_flight: Callable[[], float], limit: int) -> None:
        """Export a concurrency limiter's in-flight count (read at scrape time) and its limit."""
        self.server_concurrency_in_flight.labels(service).set_function(in_flight)
        self.server_concurrency_limit.labels(service).set(limit)


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, MeshMetrics] = weakref.WeakKeyDictionary()
_by_registry_lock = threading.Lock()


def mesh_metrics(registry: CollectorRegistry | None = None) -> MeshMetrics:
    """The mesh's metrics in ``registry`` (default: prometheus_client's global one), created on first use."""
    target = REGISTRY if registry is None else registry
    with _by_registry_lock:
        metrics = _by_registry.get(target)
        if metrics is None:
            metrics = _by_registry[target] = MeshMetrics(target)
        return metrics


def set_breaker_state(
    service: str,
    endpoint: str,
    state: BreakerState | str | int,
    *,
    registry: CollectorRegistry | None = None,
) -> None:
    """Record a breaker's state: a ``BreakerState``, its value ("half_open"), or 0/1/2 as exported."""
    mesh_metrics(registry).breaker_state.labels(service, endpoint).set(_breaker_value(state))


def forget_breaker(service: str, endpoint: str, *, registry: CollectorRegistry | None = None) -> None:
    """Drop the breaker series of an endpoint that left the registry, so no stale state is scraped."""
    gauge = mesh_metrics(registry).breaker_state
    try:
        gauge.remove(service, endpoint)
    except KeyError:
        return


def _breaker_value(state: BreakerState | str | int) -> int:
    if isinstance(state, BreakerState):
        return BREAKER_STATE_VALUES[state]
    if isinstance(state, str):
        try:
            return BREAKER_STATE_VALUES[BreakerState(state.lower().replace("-", "_"))]
        except ValueError:
            raise ValueError(f"unknown breaker state {state!r}") from None
    if state not in (0, 1, 2):
        raise ValueError(f"breaker state must be 0 (closed), 1 (half-open) or 2 (open), got {state!r}")
    return state


class MetricsServerInterceptor(WrappingServerInterceptor):
    """Counts, times and gauges every RPC a server handles (health and reflection included)."""

    def __init__(self, service: str, *, registry: CollectorRegistry | None = None) -> None:
        super().__init__()
        self._service = service
        self._metrics = mesh_metrics(registry)
        # Label lookups cost a lock and a dict probe each; the children are cached per label set.
        self._in_flight: dict[str, Any] = {}
        self._outcomes: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    async def around(self, info: RpcInfo, context: Context, proceed: Proceed) -> Any:
        in_flight = self._in_flight.get(info.name)
        if in_flight is None:
            in_flight = self._in_flight[info.name] = self._metrics.server_in_flight.labels(
                self._service, info.name
            )
        in_flight.inc()
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await proceed()
        except BaseException as exc:
            error = exc
            raise
        finally:
            elapsed = time.perf_counter() - started
            in_flight.dec()
            code = final_code(context, error)
            outcome = self._outcomes.get((info.name, code))
            if outcome is None:
                outcome = self._outcomes[(info.name, code)] = (
                    self._metrics.server_requests.labels(self._service, info.name, code.name),
                    self._metrics.server_latency.labels(self._service, info.name, code.name),
                )
            outcome[0].inc()
            outcome[1].observe(elapsed)


class MetricsClientInterceptor(ObservingClientInterceptor):
    """Counts, times and gauges every call made to ``target_service``."""

    def __init__(self, target_service: str, *, registry: CollectorRegistry | None = None) -> None:
        super().__init__()
        self._target = target_service
        self._metrics = mesh_metrics(registry)
        self._in_flight: dict[str, Any] = {}
        self._outcomes: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    def start(self, details: grpc.aio.ClientCallDetails) -> tuple[grpc.aio.ClientCallDetails, Finish]:
        name = rpc_info(details.method).name
        in_flight = self._in_flight.get(name)
        if in_flight is None:
            in_flight = self._in_flight[name] = self._metrics.client_in_flight.labels(self._target, name)
        in_flight.inc()
        started = time.perf_counter()

        def finish(code: grpc.StatusCode) -> None:
            elapsed = time.perf_counter() - started
            in_flight.dec()
            outcome = self._outcomes.get((name, code))
            if outcome is None:
                outcome = self._outcomes[(name, code)] = (
                    self._metrics.client_requests.labels(self._target, name, code.name),
                    self._metrics.client_latency.labels(self._target, name, code.name),
                )
            outcome[0].inc()
            outcome[1].observe(elapsed)

        return details, finish


# --- exposition -------------------------------------------------------------------------------------------


def render_metrics(registry: CollectorRegistry | None = None, accept: str | None = None) -> tuple[bytes, str]:
    """The body and Content-Type of a ``/metrics`` response (OpenMetrics when ``accept`` asks for it)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY if registry is None else registry), content_type


def metrics_asgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI app serving the registry, to mount at ``/metrics`` of a FastAPI/Starlette app."""
    app: Callable[..., Any] = make_asgi_app(REGISTRY if registry is None else registry)
    return app


def start_metrics_server(
    port: int, *, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve the registry on its own port from a daemon thread; ``server.shutdown()`` stops it.

    For processes without an HTTP app of their own; port 0 picks a free port (``server.server_port``).
    """
    return _start_http_server(port, addr=addr, registry=REGISTRY if registry is None else registry)
