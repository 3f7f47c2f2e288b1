"""Which interceptors a server and a client get, in which order, and the names they use."""

from __future__ import annotations

import grpc
import pytest

import mesh.interceptors
from mesh.interceptors import (
    AuthInterceptor,
    BearerTokenInterceptor,
    ConcurrencyLimitInterceptor,
    MetricsClientInterceptor,
    MetricsServerInterceptor,
    TracingClientInterceptor,
    TracingServerInterceptor,
    client_interceptors,
    is_infrastructure_method,
    rpc_info,
    server_interceptors,
    split_by_arity,
)
from mesh.interceptors._rpc import ObserverChain, wrap_handler


class _Anyone:
    async def authenticate(self, method, metadata):
        raise AssertionError("not called in these tests")


def test_a_server_gets_tracing_then_metrics_then_limit_then_auth():
    chain = server_interceptors("streaming", authenticator=_Anyone(), max_concurrent=10)
    assert [type(i) for i in chain] == [
        TracingServerInterceptor,
        MetricsServerInterceptor,
        ConcurrencyLimitInterceptor,
        AuthInterceptor,
    ]


def test_optional_server_steps_are_left_out_rather_than_passed_through():
    assert [type(i) for i in server_interceptors("alert")] == [
        TracingServerInterceptor,
        MetricsServerInterceptor,
    ]


def _inner(adapter):
    return getattr(adapter, "inner", adapter)


def test_a_client_gets_each_interceptor_once_per_arity_in_order():
    chain = client_interceptors("analytics", token_provider=lambda: "t")
    for arity in (
        grpc.aio.UnaryUnaryClientInterceptor,
        grpc.aio.UnaryStreamClientInterceptor,
        grpc.aio.StreamUnaryClientInterceptor,
        grpc.aio.StreamStreamClientInterceptor,
    ):
        # A grpc.aio channel files each object under the first arity it implements (grpc/grpc#31442).
        inner = [_inner(i) for i in chain if isinstance(i, arity)]
        assert [type(i) for i in inner] == [ObserverChain, BearerTokenInterceptor]
        # tracing and metrics share one grpc.aio hop, tracing outermost
        assert [type(o) for o in inner[0]._observers] == [TracingClientInterceptor, MetricsClientInterceptor]
    assert all(sum(isinstance(i, a) for a in _ARITIES) == 1 for i in chain)


_ARITIES = (
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
)


def test_a_single_arity_interceptor_is_passed_through_as_it_is():
    class OnlyUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, client_call_details, request):
            return await continuation(client_call_details, request)

    only = OnlyUnary()
    assert split_by_arity([only]) == [only]


@pytest.mark.parametrize(
    ("path", "service", "method", "name"),
    [
        ("/itsmesh.v1.StreamingService/GetCamera", "itsmesh.v1.StreamingService", "GetCamera", None),
        (b"/grpc.health.v1.Health/Check", "grpc.health.v1.Health", "Check", None),
        ("/Bare", "", "Bare", "Bare"),
    ],
)
def test_method_paths_are_split_into_service_and_method(path, service, method, name):
    info = rpc_info(path)
    assert (info.service, info.method) == (service, method)
    assert info.name == (name or f"{service}/{method}")
    assert info.path == (path.decode() if isinstance(path, bytes) else path)


def test_only_health_and_reflection_count_as_infrastructure():
    assert is_infrastructure_method("/grpc.health.v1.Health/Check")
    assert is_infrastructure_method("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not is_infrastructure_method("/grpc.healthy.Fake/Check")
    assert not is_infrastructure_method("/itsmesh.v1.AuthService/Login")


def test_a_synchronous_handler_is_refused_rather_than_left_unguarded():
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)

    async def around(info, context, proceed):
        return await proceed()

    with pytest.raises(TypeError, match="async handler"):
        wrap_handler(handler, rpc_info("/x.Y/Z"), around)


def test_every_exported_name_exists():
    for name in mesh.interceptors.__all__:
        assert hasattr(mesh.interceptors, name), name
    assert sorted(mesh.interceptors.__all__) == sorted(set(mesh.interceptors.__all__))
