"""Server and client interceptors of the mesh: tracing, metrics, concurrency limit, auth.

A service gets the whole chain from ``server_interceptors``; a client channel from ``client_interceptors``.
Order matters and is fixed here, outermost first:

- server: tracing → metrics → concurrency limit → auth. The span and the metrics see every outcome,
  including RPCs the limit sheds or auth refuses; the limit sheds load before any credential is checked.
  They run as one grpc.aio interceptor (``WrappingChain``): each grpc.aio hop costs every RPC a coroutine.
- client: tracing → metrics → bearer token. The client span is the parent the server continues.
  ``MeshClient`` runs tracing and metrics in its attempt loop (``client_observer``), not as interceptors.
"""

from __future__ import annotations

import grpc
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from mesh.interceptors._rpc import (
    ObserverChain,
    RpcInfo,
    WrappingChain,
    WrappingServerInterceptor,
    is_infrastructure_method,
    rpc_info,
    split_by_arity,
)
from mesh.interceptors.auth import (
    Authenticator,
    AuthError,
    AuthInterceptor,
    BearerTokenInterceptor,
    InvocationMetadata,
    PermissionDenied,
    PermissionMap,
    Principal,
    TokenProvider,
    Unauthenticated,
    authorize,
    bearer_token,
    current_principal,
)
from mesh.interceptors.deadline import DeadlineLink
from mesh.interceptors.limits import (
    CONCURRENCY_LIMIT_REASON,
    ConcurrencyLimiter,
    ConcurrencyLimitInterceptor,
)
from mesh.interceptors.log_context import TraceContextFilter, current_trace_ids
from mesh.interceptors.metrics import (
    MeshMetrics,
    MetricsClientInterceptor,
    MetricsServerInterceptor,
    forget_breaker,
    mesh_metrics,
    metrics_asgi_app,
    render_metrics,
    set_breaker_state,
    start_metrics_server,
)
from mesh.interceptors.request_guard import reject_unusable_requests
from mesh.interceptors.tracing import (
    TracingClientInterceptor,
    TracingServerInterceptor,
    TracingSettings,
    configure_tracing,
    extract_kafka_context,
    inject_kafka_headers,
    kafka_consumer_span,
    kafka_producer_span,
)

__all__ = [
    "CONCURRENCY_LIMIT_REASON",
    "AuthError",
    "AuthInterceptor",
    "Authenticator",
    "BearerTokenInterceptor",
    "ConcurrencyLimitInterceptor",
    "ConcurrencyLimiter",
    "DeadlineLink",
    "InvocationMetadata",
    "MeshMetrics",
    "MetricsClientInterceptor",
    "MetricsServerInterceptor",
    "PermissionDenied",
    "PermissionMap",
    "Principal",
    "RpcInfo",
    "TokenProvider",
    "TraceContextFilter",
    "TracingClientInterceptor",
    "TracingServerInterceptor",
    "TracingSettings",
    "Unauthenticated",
    "WrappingChain",
    "authorize",
    "bearer_token",
    "client_interceptors",
    "client_observer",
    "configure_tracing",
    "current_principal",
    "current_trace_ids",
    "extract_kafka_context",
    "forget_breaker",
    "inject_kafka_headers",
    "is_infrastructure_method",
    "kafka_consumer_span",
    "kafka_producer_span",
    "mesh_metrics",
    "metrics_asgi_app",
    "render_metrics",
    "rpc_info",
    "server_interceptors",
    "set_breaker_state",
    "split_by_arity",
    "start_metrics_server",
]


def server_interceptors(
    service: str,
    *,
    authenticator: Authenticator | None = None,
    max_concurrent: int | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    propagate_deadline: bool = False,
    check_requests: bool = True,
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors of a server of ``service`` ("streaming"), outermost first, as one ``WrappingChain``.

    ``authenticator`` None: no auth step. ``max_concurrent`` None: no limit; otherwise its in-flight count
    and limit are exported as ``itsmesh_grpc_server_concurrency_*``. ``registry`` defaults to
    prometheus_client's global one, ``tracer_provider`` to OpenTelemetry's global one.
    ``propagate_deadline``: innermost, each handler's deadline becomes the default of the mesh calls it
    makes (``mesh.deadline``), in the same hop rather than a ``DeadlinePropagationInterceptor`` of its own.
    ``check_requests``: after auth, unary requests protobuf accepts but no handler can use (out-of-range
    timestamps, unknown enum numbers, NaN, NUL characters: ``mesh.request_checks``) get INVALID_ARGUMENT.
    """
    chain: list[WrappingServerInterceptor] = [
        TracingServerInterceptor(tracer_provider=tracer_provider),
        MetricsServerInterceptor(service, registry=registry),
    ]
    if max_concurrent is not None:
        limit = ConcurrencyLimitInterceptor(max_concurrent)
        limiter = limit.limiter
        mesh_metrics(registry).watch_concurrency(service, lambda: limiter.in_flight, limiter.limit)
        chain.append(limit)
    if authenticator is not None:
        chain.append(AuthInterceptor(authenticator))
    if propagate_deadline:
        chain.append(DeadlineLink())
    check = reject_unusable_requests if check_requests else None
    return [WrappingChain(chain, request_check=check)]  # one grpc.aio hop for the lot


def client_observer(
    target_service: str,
    *,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> ObserverChain:
    """Tracing then metrics of calls to ``target_service``, as one observer (``MeshClient`` runs it around
    each attempt itself; ``client_interceptors`` puts it on a channel)."""
    return ObserverChain(
        [
            TracingClientInterceptor(target_service, tracer_provider=tracer_provider),
            MetricsClientInterceptor(target_service, registry=registry),
        ]
    )


def client_interceptors(
    target_service: str,
    *,
    token_provider: TokenProvider | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors of a channel to ``target_service`` ("analytics"), outermost first.

    ``token_provider`` None: calls carry no credentials of their own. Each interceptor handles all four
    arities and appears once per arity (``split_by_arity``), which is how grpc.aio channels need them.
    """
    chain: list[grpc.aio.ClientInterceptor] = [
        client_observer(target_service, registry=registry, tracer_provider=tracer_provider)
    ]
    if token_provider is not None:
        chain.append(BearerTokenInterceptor(token_provider))
    return split_by_arity(chain)
