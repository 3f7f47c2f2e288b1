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
from mesh.interceptors._rpc import (
    ObserverChain,
    ObservingClientInterceptor,
    WrappingChain,
    WrappingServerInterceptor,
    contains_observer,
    take_observers,
    wrap_handler,
)


class _Anyone:
    async def authenticate(self, method, metadata):
        raise AssertionError("not called in these tests")


def test_a_server_gets_tracing_then_metrics_then_limit_then_auth_in_one_hop():
    [hop] = server_interceptors("streaming", authenticator=_Anyone(), max_concurrent=10)
    assert [type(i) for i in hop.links] == [
        TracingServerInterceptor,
        MetricsServerInterceptor,
        ConcurrencyLimitInterceptor,
        AuthInterceptor,
    ]


def test_optional_server_steps_are_left_out_rather_than_passed_through():
    [hop] = server_interceptors("alert")
    assert [type(i) for i in hop.links] == [
        TracingServerInterceptor,
        MetricsServerInterceptor,
    ]


class _Step(WrappingServerInterceptor):
    def __init__(self, name: str, log: list[str], skip: str = "") -> None:
        super().__init__()
        self.name, self.log, self.skip = name, log, skip

    def applies_to(self, path: str) -> bool:
        return path != self.skip

    async def around(self, info, context, proceed):
        self.log.append(f"in {self.name}")
        try:
            return await proceed()
        finally:
            self.log.append(f"out {self.name}")


async def test_a_wrapping_chain_nests_the_links_that_apply_outermost_first():
    log: list[str] = []
    chain = WrappingChain([_Step("a", log), _Step("b", log, skip="/x.Y/Open"), _Step("c", log)])

    async def handler():
        log.append("handler")
        return 42

    assert await chain.around_for("/x.Y/Z")(rpc_info("/x.Y/Z"), None, handler) == 42
    assert log == ["in a", "in b", "in c", "handler", "out c", "out b", "out a"]
    log.clear()
    assert await chain.around_for("/x.Y/Open")(rpc_info("/x.Y/Open"), None, handler) == 42
    assert log == ["in a", "in c", "handler", "out c", "out a"]
    assert chain.applies_to("/x.Y/Open")
    assert not WrappingChain([_Step("b", log, skip="/x.Y/Open")]).applies_to("/x.Y/Open")


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


def test_the_leading_observers_are_taken_out_once_and_the_rest_kept_in_order():
    chain = client_interceptors("analytics", token_provider=lambda: "t")
    observer, rest = take_observers(chain)
    assert isinstance(observer, ObserverChain)
    assert [type(o) for o in observer._observers] == [TracingClientInterceptor, MetricsClientInterceptor]
    assert rest == chain[4:]  # the token interceptor's four arity adapters, untouched
    assert {type(_inner(i)) for i in rest} == {BearerTokenInterceptor}


class _Recorder(ObservingClientInterceptor):
    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def observe(self, info, metadata):
        self.log.append(f"start {self.name}")
        metadata.add(f"x-{self.name}", "1")
        return lambda code: self.log.append(f"finish {self.name} {code.name}")


@pytest.mark.parametrize("count", [1, 2, 3])
def test_a_chain_starts_its_observers_in_order_and_finishes_them_in_reverse(count):
    log: list[str] = []
    names = ["a", "b", "c"][:count]
    chain = ObserverChain([_Recorder(name, log) for name in names])
    metadata = grpc.aio.Metadata(("x-caller", "1"))
    finish = chain.observe(rpc_info("/x.Y/Z"), metadata)
    finish(grpc.StatusCode.NOT_FOUND)
    assert log == [f"start {n}" for n in names] + [f"finish {n} NOT_FOUND" for n in reversed(names)]
    assert [key for key, _ in metadata] == ["x-caller", *(f"x-{n}" for n in names)]


def test_an_observer_behind_another_interceptor_stays_in_the_chain():
    token = BearerTokenInterceptor(lambda: "t")
    metrics = MetricsClientInterceptor("analytics")
    observer, rest = take_observers(split_by_arity([token, metrics]))
    assert observer is None
    assert [_inner(i) for i in rest] == [token] * 4 + [metrics] * 4
    assert contains_observer(rest)  # so a mesh client adds no telemetry of its own on top
    assert not contains_observer(split_by_arity([token]))
    tracing = TracingClientInterceptor("analytics")
    observer, rest = take_observers([tracing])
    assert observer is tracing
    assert rest == []
    assert take_observers([]) == (None, [])


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
