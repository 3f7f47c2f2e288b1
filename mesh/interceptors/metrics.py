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

Requests, latency and in-flight counts are kept as plain numbers (``CallStats``, ``InFlight``) and turned
into families at scrape time: prometheus_client's own ``inc``/``observe`` take a lock per value, several
per RPC, which is most of what these metrics would otherwise cost a call.
"""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable
from functools import partial
from itertools import accumulate
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, make_asgi_app
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mesh.breaker import BreakerState
from mesh.interceptors._rpc import (
    Context,
    Finish,
    ObservingClientInterceptor,
    Proceed,
    RpcInfo,
    WrappingServerInterceptor,
    final_code,
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

_go_float: Callable[[float], str] = floatToGoString  # untyped in prometheus_client
_LE: Final = tuple(_go_float(bound) for bound in LATENCY_BUCKETS)
"""The ``le`` label of each bucket, written as prometheus_client writes it."""

BREAKER_STATE_VALUES: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
"""Value of ``itsmesh_breaker_state`` for each breaker state (higher is worse)."""


class InFlight:
    """How many RPCs are open now, for an in-flight gauge that reads it when scraped.

    A plain count rather than ``Gauge.inc``/``dec``, which take a lock each: an RPC then costs two integer
    updates. The interceptors count from their event loop's thread, which is what makes it safe.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> float:
        return float(self.value)


class CallCounts:
    """Calls of one series and their latency histogram, as plain numbers ``CallStats`` exports."""

    __slots__ = ("buckets", "seconds")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.seconds = 0.0

    def observe(self, seconds: float) -> None:
        """Count one call that took ``seconds``."""
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bound ≥ seconds, like le
        self.seconds += seconds


class CallStats(Collector):
    """A request counter and a latency histogram sharing their labels, recorded without locks.

    prometheus_client's ``Counter.inc`` and ``Histogram.observe`` take a lock per value (three per call);
    on the mesh's hot path each call updates plain numbers instead (``CallCounts``, one event loop per
    process records) and the families are built when scraped, with the same names, labels and buckets.
    """

    def __init__(
        self,
        requests: tuple[str, str],
        latency: tuple[str, str],
        labelnames: tuple[str, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._requests = requests
        self._latency = latency
        self._labelnames = labelnames
        self._series: dict[tuple[str, ...], CallCounts] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def series(self, *labels: str) -> CallCounts:
        """The counts of the series with these label values, created on first use."""
        with self._lock:
            counts = self._series.get(labels)
            if counts is None:
                counts = self._series[labels] = CallCounts()
            return counts

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        requests, latency = self._families()
        with self._lock:
            series = list(self._series.items())
        for labels, counts in series:
            buckets = list(counts.buckets)  # one snapshot, so +Inf, _count and _total agree
            total = sum(buckets)
            cumulative = list(accumulate(buckets))
            requests.add_metric(labels, total)
            latency.add_metric(
                labels,
                [(_LE[i], cumulative[i]) for i in range(len(LATENCY_BUCKETS))] + [("+Inf", total)],
                counts.seconds,
            )
        return [requests, latency]

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily(*self._requests, labels=self._labelnames),
            HistogramMetricFamily(*self._latency, labels=self._labelnames),
        )


class MeshMetrics:
    """The mesh's metric families, registered once in one registry (get it with ``mesh_metrics``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._in_flight: dict[tuple[Gauge, tuple[str, ...]], InFlight] = {}
        self._in_flight_lock = threading.Lock()
        self.server_calls = CallStats(
            ("itsmesh_grpc_server_requests", "RPCs served, by final status code."),
            (
                "itsmesh_grpc_server_latency_seconds",
                "Time from an RPC's arrival to its status (a stream: how long it stayed open).",
            ),
            ("service", "method", "code"),
            registry,
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
        self.client_calls = CallStats(
            ("itsmesh_grpc_client_requests", "Calls made to other services, by final status code."),
            (
                "itsmesh_grpc_client_latency_seconds",
                "Time from a call's start to its status (a stream: how long it stayed open).",
            ),
            ("target_service", "method", "code"),
            registry,
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

    def in_flight(self, gauge: Gauge, *labels: str) -> InFlight:
        """The count behind ``gauge``'s series ``labels``: one per series, shared by every interceptor
        recording into this registry."""
        key = (gauge, labels)
        with self._in_flight_lock:
            count = self._in_flight.get(key)
            if count is None:
                count = self._in_flight[key] = InFlight()
                gauge.labels(*labels).set_function(count)
            return count

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
        self._in_flight: dict[str, InFlight] = {}
        self._outcomes: dict[tuple[str, grpc.StatusCode], CallCounts] = {}

    async def around(self, info: RpcInfo, context: Context, proceed: Proceed) -> Any:
        in_flight = self._in_flight.get(info.name)
        if in_flight is None:
            in_flight = self._in_flight[info.name] = self._metrics.in_flight(
                self._metrics.server_in_flight, self._service, info.name
            )
        in_flight.value += 1
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await proceed()
        except BaseException as exc:
            error = exc
            raise
        finally:
            elapsed = time.perf_counter() - started
            in_flight.value -= 1
            code = final_code(context, error)
            counts = self._outcomes.get((info.name, code))
            if counts is None:
                counts = self._outcomes[(info.name, code)] = self._metrics.server_calls.series(
                    self._service, info.name, code.name
                )
            counts.observe(elapsed)


class MetricsClientInterceptor(ObservingClientInterceptor):
    """Counts, times and gauges every call made to ``target_service``."""

    def __init__(self, target_service: str, *, registry: CollectorRegistry | None = None) -> None:
        super().__init__()
        self._target = target_service
        self._metrics = mesh_metrics(registry)
        # Per method path: its in-flight count and, by status code, the counts of its calls.
        self._methods: dict[str, tuple[InFlight, dict[grpc.StatusCode, CallCounts]]] = {}

    @property
    def metrics(self) -> MeshMetrics:
        """The metric families (and so the registry) this interceptor records into."""
        return self._metrics

    def observe(self, info: RpcInfo, metadata: grpc.aio.Metadata) -> Finish:
        method = self._methods.get(info.path)
        if method is None:
            in_flight = self._metrics.in_flight(self._metrics.client_in_flight, self._target, info.name)
            method = self._methods[info.path] = (in_flight, {})
        method[0].value += 1
        return partial(self._finish, info.name, method, time.perf_counter())

    def _finish(
        self,
        name: str,
        method: tuple[InFlight, dict[grpc.StatusCode, CallCounts]],
        started: float,
        code: grpc.StatusCode,
    ) -> None:
        elapsed = time.perf_counter() - started
        in_flight, outcomes = method
        in_flight.value -= 1
        counts = outcomes.get(code)
        if counts is None:
            counts = outcomes[code] = self._metrics.client_calls.series(self._target, name, code.name)
        counts.observe(elapsed)


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
