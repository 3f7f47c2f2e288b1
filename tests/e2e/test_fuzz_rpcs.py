"""Every RPC of every service, fed generated requests by an authorized admin: the answer is a proper
status (never INTERNAL, UNKNOWN or DATA_LOSS, never UNIMPLEMENTED) and the service keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings

from itsmesh.v1 import alert_pb2, analytics_pb2, auth_pb2, streaming_pb2
from tests.e2e.proto_strategies import messages
from tests.e2e.threaded_stack import RunningStack, threaded_stack

pytestmark = [
    pytest.mark.e2e,
    # The services' own background tasks use the random module while strategies draw.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

SERVICES = {
    "auth": auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
    "streaming": streaming_pb2.DESCRIPTOR.services_by_name["StreamingService"],
    "analytics": analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
    "alert": alert_pb2.DESCRIPTOR.services_by_name["AlertService"],
}
# Changes process-wide state that every other test relies on (a new signing key per example).
SKIPPED = {"itsmesh.v1.AuthService.RotateSigningKey"}
BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
STREAM_ENDINGS = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}

METHODS = [
    pytest.param(name, method, id=method.full_name.removeprefix("itsmesh.v1."))
    for name, service in SERVICES.items()
    for method in service.methods
    if method.full_name not in SKIPPED
]


@pytest.fixture(scope="module")
def stack(infra) -> Iterator[RunningStack]:
    with threaded_stack(infra) as running:
        yield running


def _call(channel: grpc.Channel, method: descriptor.MethodDescriptor, request, token: str) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    serialize = type(request).SerializeToString
    metadata = (("authorization", f"Bearer {token}"),)
    out_cls = method.output_type._concrete_class
    kwargs = {"request_serializer": serialize, "response_deserializer": out_cls.FromString}
    try:
        if not method.client_streaming and not method.server_streaming:
            channel.unary_unary(path, **kwargs)(request, metadata=metadata, timeout=5)
        elif not method.client_streaming:
            for _ in channel.unary_stream(path, **kwargs)(request, metadata=metadata, timeout=2):
                pass
        elif not method.server_streaming:
            channel.stream_unary(path, **kwargs)(iter([request]), metadata=metadata, timeout=5)
        else:
            for _ in channel.stream_stream(path, **kwargs)(iter([request]), metadata=metadata, timeout=2):
                pass
    except grpc.RpcError as exc:
        code = exc.code()
        if (method.client_streaming or method.server_streaming) and code in STREAM_ENDINGS:
            return grpc.StatusCode.OK  # a stream that was still open when the test stopped reading
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("service", "method"), METHODS)
def test_generated_requests_get_a_proper_status_and_the_service_keeps_serving(stack, service, method):
    address = stack.grpc[service]
    seen: dict[grpc.StatusCode, int] = {}
    with grpc.insecure_channel(address) as channel:

        @settings(
            max_examples=12,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(request=messages(method.input_type))
        def check(request) -> None:
            code = _call(channel, method, request, stack.admin_token)
            seen[code] = seen.get(code, 0) + 1
            assert code not in BROKEN, f"{method.full_name} answered {code.name} to {request!r:.300}"
            assert code != grpc.StatusCode.UNIMPLEMENTED, f"{method.full_name} is not implemented"

        check()
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert sum(seen.values()) > 0
