"""The mesh interceptors on real grpc.aio servers and channels over loopback (and the real broker for Kafka).

Every server here is a plain ``grpc.aio.server`` carrying ``server_interceptors(...)``; every client a plain
channel carrying ``client_interceptors(...)``, or (last section) a ``MeshClient`` that runs them itself.
Spans go to an in-memory exporter, metrics to a fresh registry per test, so each test reads exactly what
its own calls produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_trace_id
from prometheus_client import REGISTRY, CollectorRegistry

from itsmesh.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.breaker import BreakerConfig, BreakerState
from mesh.client import Attempt, ClientConfig, MeshClient, ServicePolicy
from mesh.interceptors import (
    PermissionMap,
    Principal,
    TraceContextFilter,
    Unauthenticated,
    authorize,
    bearer_token,
    client_interceptors,
    configure_tracing,
    current_principal,
    inject_kafka_headers,
    kafka_consumer_span,
    kafka_producer_span,
    server_interceptors,
    set_breaker_state,
    start_metrics_server,
)
from mesh.logs import JsonFormatter
from mesh.retry import RetryPolicy
from mesh.status import abort_with, status_details

pytestmark = pytest.mark.integration

SERVICE = "streaming"
GET_CAMERA = "itsmesh.v1.StreamingService/GetCamera"
STREAM_FRAMES = "itsmesh.v1.StreamingService/StreamFrames"
STREAM_TELEMETRY = "itsmesh.v1.StreamingService/StreamTelemetry"

PERMISSIONS: PermissionMap = {
    f"/{GET_CAMERA}": "camera:read",
    f"/{STREAM_FRAMES}": "frame:stream",
    f"/{STREAM_TELEMETRY}": "telemetry:stream",
    "/test.Bytes/Split": "bytes:use",
    "/test.Bytes/Join": "bytes:use",
}
PRINCIPALS = {
    "operator-token": Principal(
        "op-1", roles=frozenset({"operator"}), permissions=frozenset(PERMISSIONS.values())
    ),
    "viewer-token": Principal(
        "viewer-1", roles=frozenset({"viewer"}), permissions=frozenset({"camera:read"})
    ),
}

log = logging.getLogger("tests.interceptors.servicer")


# --- the servicer and an authenticator --------------------------------------------------------------------


class CameraServicer(streaming_pb2_grpc.StreamingServiceServicer):
    """GetCamera (unary) and two bidi streams, one per gRPC streaming style, recording what it saw."""

    def __init__(self) -> None:
        self.principals: list[Principal | None] = []
        self.holding = 0
        self.release = asyncio.Event()
        self.unavailable = 0  # how many "flaky" lookups still answer UNAVAILABLE
        self.seen: list[tuple[dict[str, str | bytes], float | None]] = []  # metadata, time_remaining()

    async def GetCamera(self, request, context):
        self.principals.append(current_principal())
        self.seen.append((dict(context.invocation_metadata()), context.time_remaining()))
        log.info("camera looked up", extra={"camera_id": request.camera_id})
        if request.camera_id == "flaky" and self.unavailable > 0:
            self.unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "flaky on purpose")
        if request.camera_id == "missing":
            await abort_with(context, grpc.StatusCode.NOT_FOUND, "no such camera", reason="CAMERA_NOT_FOUND")
        if request.camera_id == "hold":
            self.holding += 1
            try:
                await self.release.wait()
            finally:
                self.holding -= 1
        if request.camera_id == "slow":
            await asyncio.sleep(5)
        if request.camera_id == "crash":
            raise RuntimeError("servicer bug")
        return common_pb2.Camera(camera_id=request.camera_id)

    async def StreamFrames(self, request_iterator, context):
        """Async-generator style: one ``opened``, then one ack per frame."""
        self.principals.append(current_principal())
        async for message in request_iterator:
            if message.WhichOneof("message") == "open":
                opened = streaming_pb2.FrameStreamOpened(stream_id="s-1", initial_credit=8)
                yield streaming_pb2.StreamFramesResponse(opened=opened)
            else:
                ack = streaming_pb2.FrameAck(acked_through_sequence=message.frame.sequence, credit_grant=1)
                yield streaming_pb2.StreamFramesResponse(ack=ack)

    async def StreamTelemetry(self, request_iterator, context):
        """Reader/writer style: the handler writes through the context and returns None."""
        self.principals.append(current_principal())
        first = await context.read()
        assert first.WhichOneof("message") == "open"
        opened = streaming_pb2.TelemetryStreamOpened(stream_id=first.open.device_id, initial_credit=4)
        await context.write(streaming_pb2.StreamTelemetryResponse(opened=opened))
        while (message := await context.read()) is not grpc.aio.EOF:
            ack = streaming_pb2.TelemetryAck(credit_grant=len(message.batch.samples))
            await context.write(streaming_pb2.StreamTelemetryResponse(ack=ack))


class TokenTable:
    """An ``Authenticator``: bearer tokens looked up in a table, permissions from ``PERMISSIONS``."""

    async def authenticate(self, method: str, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated("no bearer token", reason="CREDENTIALS_MISSING")
        principal = PRINCIPALS.get(token)
        if principal is None:
            raise Unauthenticated("unknown token", reason="TOKEN_INVALID")
        authorize(principal, method, PERMISSIONS)
        return principal


# --- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    # Not installed globally: OpenTelemetry allows one global provider per process, tests pass theirs.
    return configure_tracing("streaming", "test-instance", exporter, set_global=False)


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@contextlib.asynccontextmanager
async def serving(
    interceptors: Sequence[grpc.aio.ServerInterceptor], servicer: CameraServicer
) -> AsyncIterator[str]:
    """A real server on a free loopback port with the streaming servicer and the standard health service."""
    server = grpc.aio.server(interceptors=interceptors)
    streaming_pb2_grpc.add_StreamingServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        servicer.release.set()
        await server.stop(None)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def served(registry: CollectorRegistry, method: str, code: str) -> float:
    """RPCs the server counted for ``method`` ending with ``code``."""
    return sample(registry, "itsmesh_grpc_server_requests_total", service=SERVICE, method=method, code=code)


def called(registry: CollectorRegistry, method: str, code: str) -> float:
    """Calls the client counted for ``method`` ending with ``code``."""
    return sample(
        registry, "itsmesh_grpc_client_requests_total", target_service=SERVICE, method=method, code=code
    )


async def eventually(predicate: Callable[[], bool], within: float = 2.0) -> None:
    """Wait until ``predicate()`` holds: client-side stream spans and metrics settle a tick after the call."""
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.01)


def by_kind(spans: Sequence[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind is kind]


async def frame_stream(stub: streaming_pb2_grpc.StreamingServiceStub, frames: int, **call_kwargs) -> list:
    """Open a StreamFrames call with write/read (no request iterator), send ``frames`` frames, read all."""
    call = stub.StreamFrames(**call_kwargs)
    await call.write(streaming_pb2.StreamFramesRequest(open=streaming_pb2.OpenFrameStream(camera_id="cam-1")))
    replies = [await call.read()]
    for sequence in range(1, frames + 1):
        await call.write(streaming_pb2.StreamFramesRequest(frame=streaming_pb2.Frame(sequence=sequence)))
        replies.append(await call.read())
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK
    return replies


# --- tracing ----------------------------------------------------------------------------------------------


async def test_traceparent_carries_the_client_span_into_the_server_span(provider, spans, registry):
    servicer = CameraServicer()
    async with serving(
        server_interceptors(SERVICE, registry=registry, tracer_provider=provider), servicer
    ) as addr:
        chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
        async with grpc.aio.insecure_channel(addr, interceptors=chain) as channel:
            camera = await streaming_pb2_grpc.StreamingServiceStub(channel).GetCamera(
                streaming_pb2.GetCameraRequest(camera_id="cam-1")
            )
    assert camera.camera_id == "cam-1"
    [server] = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    [client] = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert server.name == client.name == GET_CAMERA
    assert dict(server.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": "itsmesh.v1.StreamingService",
        "rpc.method": "GetCamera",
        "rpc.grpc.status_code": 0,
    }
    assert client.attributes["peer.service"] == SERVICE
    assert server.resource.attributes["service.name"] == "streaming"


async def test_a_bidi_stream_is_one_server_span_continuing_the_client_span(provider, spans, registry):
    servicer = CameraServicer()
    async with serving(
        server_interceptors(SERVICE, registry=registry, tracer_provider=provider), servicer
    ) as addr:
        chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
        async with grpc.aio.insecure_channel(addr, interceptors=chain) as channel:
            replies = await frame_stream(streaming_pb2_grpc.StreamingServiceStub(channel), frames=3)
            await eventually(lambda: len(spans.get_finished_spans()) == 2)
    assert [r.WhichOneof("message") for r in replies] == ["opened", "ack", "ack", "ack"]
    [server] = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    [client] = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    assert server.name == STREAM_FRAMES
    assert server.context.trace_id == client.context.trace_id
    assert server.parent.span_id == client.context.span_id
    assert server.attributes["rpc.grpc.status_code"] == client.attributes["rpc.grpc.status_code"] == 0


async def test_a_status_the_handler_chooses_is_recorded_but_only_the_client_span_is_an_error(
    provider, spans, registry
):
    servicer = CameraServicer()
    async with serving(
        server_interceptors(SERVICE, registry=registry, tracer_provider=provider), servicer
    ) as addr:
        chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
        async with grpc.aio.insecure_channel(addr, interceptors=chain) as channel:
            stub = streaming_pb2_grpc.StreamingServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="missing"))
            with pytest.raises(grpc.aio.AioRpcError) as crashed:
                await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="crash"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    assert status_details(missing.value).reason == "CAMERA_NOT_FOUND"  # the abort's details got through
    assert crashed.value.code() is grpc.StatusCode.UNKNOWN
    not_found_server, crash_server = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    not_found_client, _ = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    assert not_found_server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert not_found_server.status.status_code is StatusCode.UNSET  # the caller's problem, not the server's
    assert not_found_client.status.status_code is StatusCode.ERROR
    assert crash_server.status.status_code is StatusCode.ERROR
    assert [event.name for event in crash_server.events] == ["exception"]


async def test_log_lines_written_in_a_handler_carry_its_trace_and_span_ids(provider, spans, registry):
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter({"service": SERVICE, "instance": "test-instance"}))
    handler.addFilter(TraceContextFilter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        servicer = CameraServicer()
        interceptors = server_interceptors(SERVICE, registry=registry, tracer_provider=provider)
        async with serving(interceptors, servicer) as addr, grpc.aio.insecure_channel(addr) as channel:
            await streaming_pb2_grpc.StreamingServiceStub(channel).GetCamera(
                streaming_pb2.GetCameraRequest(camera_id="cam-9")
            )
        log.info("outside any request")
    finally:
        log.removeHandler(handler)
    inside, outside = (json.loads(line) for line in lines.getvalue().splitlines())
    [server] = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    assert inside["msg"] == "camera looked up"
    assert inside["camera_id"] == "cam-9"
    assert inside["trace_id"] == format_trace_id(server.context.trace_id)
    assert inside["span_id"] == f"{server.context.span_id:016x}"
    assert "trace_id" not in outside
    assert "span_id" not in outside


async def test_one_trace_runs_from_a_grpc_call_through_kafka_to_the_consumer(
    provider, spans, registry, kafka_bootstrap, unique_topic
):
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False)
    await producer.start()

    class PublishingServicer(CameraServicer):
        async def GetCamera(self, request, context):
            with kafka_producer_span(unique_topic, tracer_provider=provider):
                headers = inject_kafka_headers([("event-id", uuid.uuid4().hex.encode())])
                await producer.send_and_wait(unique_topic, b"detection", key=b"cam-1", headers=headers)
            return common_pb2.Camera(camera_id=request.camera_id)

    try:
        interceptors = server_interceptors(SERVICE, registry=registry, tracer_provider=provider)
        async with serving(interceptors, PublishingServicer()) as addr:
            chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
            async with grpc.aio.insecure_channel(addr, interceptors=chain) as channel:
                await streaming_pb2_grpc.StreamingServiceStub(channel).GetCamera(
                    streaming_pb2.GetCameraRequest(camera_id="cam-1")
                )
    finally:
        await producer.stop()
    # The consumer side, as analytics would run it: no gRPC context at all, only the record's headers.
    consumer = AIOKafkaConsumer(unique_topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
        with kafka_consumer_span(unique_topic, record.headers, tracer_provider=provider):
            pass
    finally:
        await consumer.stop()
    finished = spans.get_finished_spans()
    [client] = by_kind(finished, SpanKind.CLIENT)
    [produced] = by_kind(finished, SpanKind.PRODUCER)
    [consumed] = by_kind(finished, SpanKind.CONSUMER)
    assert {span.context.trace_id for span in finished} == {client.context.trace_id}
    assert consumed.parent.span_id == produced.context.span_id
    assert dict(record.headers)["event-id"]  # the envelope's own headers survive the injection
    assert consumed.attributes["messaging.destination.name"] == unique_topic


async def _split(request: bytes, context) -> AsyncIterator[bytes]:
    for byte in request:
        yield bytes([byte])


async def _join(requests: AsyncIterator[bytes], context) -> bytes:
    return b"".join([chunk async for chunk in requests])


async def test_server_streaming_and_client_streaming_calls_pass_every_interceptor(provider, spans, registry):
    """The streaming service has neither arity, so a bytes-in, bytes-out service stands in for them."""
    interceptors = server_interceptors(
        SERVICE, authenticator=TokenTable(), max_concurrent=8, registry=registry, tracer_provider=provider
    )
    chain = client_interceptors(
        SERVICE, token_provider=lambda: "operator-token", registry=registry, tracer_provider=provider
    )
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Bytes",
                {
                    "Split": grpc.unary_stream_rpc_method_handler(_split),
                    "Join": grpc.stream_unary_rpc_method_handler(_join),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=chain) as channel:
            split = channel.unary_stream("/test.Bytes/Split")
            join = channel.stream_unary("/test.Bytes/Join")
            pieces = [piece async for piece in split(b"abc")]
            joined = await join(iter([b"x", b"y", b"z"]))
            await eventually(lambda: len(by_kind(spans.get_finished_spans(), SpanKind.CLIENT)) == 2)
    finally:
        await server.stop(None)
    assert pieces == [b"a", b"b", b"c"]
    assert joined == b"xyz"
    for method in ("test.Bytes/Split", "test.Bytes/Join"):
        assert served(registry, method, "OK") == called(registry, method, "OK") == 1
    servers = {span.name: span for span in by_kind(spans.get_finished_spans(), SpanKind.SERVER)}
    clients = {span.name: span for span in by_kind(spans.get_finished_spans(), SpanKind.CLIENT)}
    assert servers.keys() == clients.keys() == {"test.Bytes/Split", "test.Bytes/Join"}
    for name, server_span in servers.items():
        assert server_span.parent.span_id == clients[name].context.span_id


# --- metrics ----------------------------------------------------------------------------------------------


async def test_requests_latency_and_in_flight_are_counted_by_method_and_code(provider, registry):
    servicer = CameraServicer()
    async with serving(
        server_interceptors(SERVICE, registry=registry, tracer_provider=provider), servicer
    ) as addr:
        chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
        async with grpc.aio.insecure_channel(addr, interceptors=chain) as channel:
            stub = streaming_pb2_grpc.StreamingServiceStub(channel)
            for camera_id in ("cam-1", "cam-2", "missing"):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id=camera_id))
            await frame_stream(stub, frames=2)
            await eventually(lambda: called(registry, STREAM_FRAMES, "OK") == 1)

    def server(name: str, method: str = GET_CAMERA, **labels: str) -> float:
        return sample(registry, name, service=SERVICE, method=method, **labels)

    def client(name: str, method: str = GET_CAMERA, **labels: str) -> float:
        return sample(registry, name, target_service=SERVICE, method=method, **labels)

    assert server("itsmesh_grpc_server_requests_total", code="OK") == 2
    assert server("itsmesh_grpc_server_requests_total", code="NOT_FOUND") == 1
    assert server("itsmesh_grpc_server_latency_seconds_count", code="OK") == 2
    assert 0 < server("itsmesh_grpc_server_latency_seconds_sum", code="OK") < 5
    assert server("itsmesh_grpc_server_latency_seconds_bucket", code="OK", le="+Inf") == 2
    assert server("itsmesh_grpc_server_requests_total", method=STREAM_FRAMES, code="OK") == 1
    assert (
        server("itsmesh_grpc_server_in_flight") == server("itsmesh_grpc_server_in_flight", STREAM_FRAMES) == 0
    )
    assert client("itsmesh_grpc_client_requests_total", code="OK") == 2
    assert client("itsmesh_grpc_client_requests_total", code="NOT_FOUND") == 1
    assert client("itsmesh_grpc_client_latency_seconds_count", code="NOT_FOUND") == 1
    assert client("itsmesh_grpc_client_in_flight") == 0


async def test_the_standalone_exporter_serves_the_registry_on_its_own_port(registry):
    set_breaker_state("analytics", "127.0.0.1:50052", BreakerState.OPEN, registry=registry)
    server, thread = start_metrics_server(0, addr="127.0.0.1", registry=registry)
    try:
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert reply.status_code == 200
    assert 'itsmesh_breaker_state{endpoint="127.0.0.1:50052",service="analytics"} 2.0' in reply.text


async def test_an_open_stream_shows_in_flight_until_it_ends(provider, registry):
    servicer = CameraServicer()
    async with (
        serving(server_interceptors(SERVICE, registry=registry, tracer_provider=provider), servicer) as addr,
        grpc.aio.insecure_channel(addr) as channel,
    ):
        call = streaming_pb2_grpc.StreamingServiceStub(channel).StreamFrames()
        await call.write(streaming_pb2.StreamFramesRequest(open=streaming_pb2.OpenFrameStream(camera_id="c")))
        await call.read()
        assert sample(registry, "itsmesh_grpc_server_in_flight", service=SERVICE, method=STREAM_FRAMES) == 1
        await call.done_writing()
        assert await call.code() is grpc.StatusCode.OK
    assert sample(registry, "itsmesh_grpc_server_in_flight", service=SERVICE, method=STREAM_FRAMES) == 0


async def test_a_call_past_its_deadline_counts_as_deadline_exceeded_on_both_sides(provider, registry):
    servicer = CameraServicer()
    async with serving(
        server_interceptors(SERVICE, registry=registry, tracer_provider=provider), servicer
    ) as addr:
        chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
        async with grpc.aio.insecure_channel(addr, interceptors=chain) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await streaming_pb2_grpc.StreamingServiceStub(channel).GetCamera(
                    streaming_pb2.GetCameraRequest(camera_id="slow"), timeout=0.2
                )
            await eventually(lambda: served(registry, GET_CAMERA, "DEADLINE_EXCEEDED") == 1)
    assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert called(registry, GET_CAMERA, "DEADLINE_EXCEEDED") == 1


async def test_a_unary_call_the_client_cancels_is_counted_cancelled_on_both_sides(provider, registry):
    servicer = CameraServicer()
    async with serving(
        server_interceptors(SERVICE, registry=registry, tracer_provider=provider), servicer
    ) as addr:
        chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
        async with grpc.aio.insecure_channel(addr, interceptors=chain) as channel:
            call = streaming_pb2_grpc.StreamingServiceStub(channel).GetCamera(
                streaming_pb2.GetCameraRequest(camera_id="hold")
            )
            await eventually(lambda: servicer.holding == 1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await eventually(lambda: servicer.holding == 0)  # the server-side handler was cancelled too
            await eventually(lambda: served(registry, GET_CAMERA, "CANCELLED") == 1)
    assert called(registry, GET_CAMERA, "CANCELLED") == 1
    assert sample(registry, "itsmesh_grpc_client_in_flight", target_service=SERVICE, method=GET_CAMERA) == 0


async def test_a_stream_the_client_abandons_ends_its_span_and_frees_in_flight(provider, spans, registry):
    servicer = CameraServicer()
    async with serving(
        server_interceptors(SERVICE, registry=registry, tracer_provider=provider), servicer
    ) as addr:
        chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
        async with grpc.aio.insecure_channel(addr, interceptors=chain) as channel:
            call = streaming_pb2_grpc.StreamingServiceStub(channel).StreamFrames()
            await call.write(
                streaming_pb2.StreamFramesRequest(open=streaming_pb2.OpenFrameStream(camera_id="c"))
            )
            await call.read()
            call.cancel()
            await eventually(lambda: len(spans.get_finished_spans()) == 2)
    server_in_flight = sample(
        registry, "itsmesh_grpc_server_in_flight", service=SERVICE, method=STREAM_FRAMES
    )
    client_in_flight = sample(
        registry, "itsmesh_grpc_client_in_flight", target_service=SERVICE, method=STREAM_FRAMES
    )
    assert server_in_flight == client_in_flight == 0
    [client] = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    assert client.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    # The server span ends too. Its code is whatever the handler ended with: this handler was reading, so
    # it saw the cancel as the end of the request stream (gRPC aio does not tell it apart).
    assert len(by_kind(spans.get_finished_spans(), SpanKind.SERVER)) == 1


async def test_a_stream_cancelled_while_its_handler_works_is_counted_cancelled(provider, registry):
    class BusyServicer(CameraServicer):
        async def StreamFrames(self, request_iterator, context):
            yield streaming_pb2.StreamFramesResponse(opened=streaming_pb2.FrameStreamOpened(stream_id="s"))
            self.holding += 1
            await self.release.wait()  # busy with something other than reading when the cancel arrives

    servicer = BusyServicer()
    async with (
        serving(server_interceptors(SERVICE, registry=registry, tracer_provider=provider), servicer) as addr,
        grpc.aio.insecure_channel(addr) as channel,
    ):
        call = streaming_pb2_grpc.StreamingServiceStub(channel).StreamFrames()
        await call.read()
        await eventually(lambda: servicer.holding == 1)
        call.cancel()
        await eventually(lambda: served(registry, STREAM_FRAMES, "CANCELLED") == 1)
    assert sample(registry, "itsmesh_grpc_server_in_flight", service=SERVICE, method=STREAM_FRAMES) == 0


# --- concurrency limit ------------------------------------------------------------------------------------


async def test_the_call_over_the_limit_is_refused_with_retry_info_and_the_others_finish(provider, registry):
    servicer = CameraServicer()
    interceptors = server_interceptors(SERVICE, max_concurrent=2, registry=registry, tracer_provider=provider)
    async with serving(interceptors, servicer) as addr, grpc.aio.insecure_channel(addr) as channel:
        stub = streaming_pb2_grpc.StreamingServiceStub(channel)
        held = [
            asyncio.ensure_future(stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="hold")))
            for _ in range(2)
        ]
        await eventually(lambda: servicer.holding == 2)
        assert sample(registry, "itsmesh_grpc_server_concurrency_in_flight", service=SERVICE) == 2
        assert sample(registry, "itsmesh_grpc_server_concurrency_limit", service=SERVICE) == 2

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="cam-3"))
        health_stub = health_pb2_grpc.HealthStub(channel)
        probe = await health_stub.Check(health_pb2.HealthCheckRequest())  # probes never take a slot

        servicer.release.set()
        assert [camera.camera_id for camera in await asyncio.gather(*held)] == ["hold", "hold"]
        after = await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="cam-4"))

    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    details = status_details(refused.value)
    assert details.retry_delay_s == pytest.approx(0.1)
    assert (details.reason, details.domain) == ("CONCURRENCY_LIMIT", "itsmesh")
    assert details.metadata["limit"] == "2"
    # Any gRPC client reads the same trailer with grpcio-status:
    status = rpc_status.from_call(refused.value)
    retry_info = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry_info) for detail in status.details)
    assert retry_info.retry_delay.ToMilliseconds() == 100
    assert probe.status == health_pb2.HealthCheckResponse.SERVING
    assert after.camera_id == "cam-4"
    assert sample(registry, "itsmesh_grpc_server_concurrency_in_flight", service=SERVICE) == 0
    assert served(registry, GET_CAMERA, "RESOURCE_EXHAUSTED") == 1


async def test_an_open_stream_holds_its_slot_until_it_ends(provider, registry):
    servicer = CameraServicer()
    interceptors = server_interceptors(SERVICE, max_concurrent=1, registry=registry, tracer_provider=provider)
    async with serving(interceptors, servicer) as addr, grpc.aio.insecure_channel(addr) as channel:
        stub = streaming_pb2_grpc.StreamingServiceStub(channel)
        call = stub.StreamFrames()
        await call.write(streaming_pb2.StreamFramesRequest(open=streaming_pb2.OpenFrameStream(camera_id="c")))
        await call.read()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="cam-1"))
        await call.done_writing()
        assert await call.code() is grpc.StatusCode.OK
        camera = await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="cam-1"))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert camera.camera_id == "cam-1"


# --- auth -------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def authenticated_server(provider, registry, servicer: CameraServicer) -> AsyncIterator[str]:
    interceptors = server_interceptors(
        SERVICE, authenticator=TokenTable(), max_concurrent=8, registry=registry, tracer_provider=provider
    )
    async with serving(interceptors, servicer) as addr:
        yield addr


async def test_a_call_without_a_token_is_unauthenticated_with_error_info(provider, registry):
    servicer = CameraServicer()
    async with (
        authenticated_server(provider, registry, servicer) as addr,
        grpc.aio.insecure_channel(addr) as ch,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await streaming_pb2_grpc.StreamingServiceStub(ch).GetCamera(streaming_pb2.GetCameraRequest())
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    details = status_details(refused.value)
    assert (details.reason, details.domain) == ("CREDENTIALS_MISSING", "itsmesh")
    assert servicer.principals == []  # the handler never ran


async def test_a_token_without_the_method_permission_is_permission_denied(provider, registry):
    servicer = CameraServicer()
    chain = client_interceptors(SERVICE, token_provider=lambda: "viewer-token", registry=registry)
    async with (
        authenticated_server(provider, registry, servicer) as addr,
        grpc.aio.insecure_channel(addr, interceptors=chain) as channel,
    ):
        stub = streaming_pb2_grpc.StreamingServiceStub(channel)
        camera = await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="cam-1"))
        call = stub.StreamFrames()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
    assert camera.camera_id == "cam-1"
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    details = status_details(refused.value)
    assert details.reason == "MISSING_PERMISSION"
    assert dict(details.metadata) == {"method": f"/{STREAM_FRAMES}", "permission": "frame:stream"}


async def test_health_checks_need_no_token(provider, registry):
    servicer = CameraServicer()
    async with (
        authenticated_server(provider, registry, servicer) as addr,
        grpc.aio.insecure_channel(addr) as ch,
    ):
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_handlers_see_the_principal_on_unary_calls_and_both_stream_styles(provider, spans, registry):
    async def token() -> str:  # token providers may be coroutines (a refresh behind them)
        return "operator-token"

    servicer = CameraServicer()
    chain = client_interceptors(SERVICE, token_provider=token, registry=registry, tracer_provider=provider)
    async with (
        authenticated_server(provider, registry, servicer) as addr,
        grpc.aio.insecure_channel(addr, interceptors=chain) as channel,
    ):
        stub = streaming_pb2_grpc.StreamingServiceStub(channel)
        await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="cam-1"))
        replies = await frame_stream(stub, frames=2)
        telemetry = stub.StreamTelemetry(
            iter(
                [
                    streaming_pb2.StreamTelemetryRequest(
                        open=streaming_pb2.OpenTelemetryStream(device_id="gps-1")
                    ),
                    streaming_pb2.StreamTelemetryRequest(
                        batch=streaming_pb2.TelemetryBatch(samples=[streaming_pb2.TelemetrySample()] * 3)
                    ),
                ]
            )
        )
        telemetry_replies = [reply async for reply in telemetry]
        await eventually(lambda: len(by_kind(spans.get_finished_spans(), SpanKind.CLIENT)) == 3)
    assert [p.subject if p else None for p in servicer.principals] == ["op-1", "op-1", "op-1"]
    assert len(replies) == 3
    assert telemetry_replies[0].opened.stream_id == "gps-1"
    assert telemetry_replies[1].ack.credit_grant == 3
    assert current_principal() is None  # nothing leaks out of the handler's context
    servers = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    clients = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    assert sorted(s.name for s in servers) == sorted(c.name for c in clients)
    assert {s.context.trace_id for s in servers} == {c.context.trace_id for c in clients}


# --- through the mesh client ------------------------------------------------------------------------------
# MeshClient runs the tracing and metrics of client_interceptors(...) in its own attempt path rather than
# as a grpc.aio interceptor: the same spans, traceparent and metrics, one set per attempt.


async def test_each_mesh_attempt_has_its_own_client_span_metrics_and_traceparent(provider, spans, registry):
    servicer = CameraServicer()
    servicer.unavailable = 1  # the first attempt fails, the retry succeeds
    attempts: list[Attempt] = []
    chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
    async with (
        serving(server_interceptors(SERVICE, registry=registry, tracer_provider=provider), servicer) as addr,
        MeshClient.static({SERVICE: [addr]}, interceptors=chain, on_attempt=attempts.append) as mesh,
    ):
        stub = mesh.stub(SERVICE, streaming_pb2_grpc.StreamingServiceStub)
        with provider.get_tracer("tests").start_as_current_span("caller") as caller:
            camera = await stub.GetCamera(
                streaming_pb2.GetCameraRequest(camera_id="flaky"),
                timeout=5.0,
                metadata=(("x-request-id", "r-1"),),
            )
    assert camera.camera_id == "flaky"
    assert [a.code for a in attempts] == ["UNAVAILABLE", "OK"]
    finished = spans.get_finished_spans()
    clients = by_kind(finished, SpanKind.CLIENT)
    servers = by_kind(finished, SpanKind.SERVER)
    assert [c.attributes["rpc.grpc.status_code"] for c in clients] == [14, 0]
    assert [c.status.status_code for c in clients] == [StatusCode.ERROR, StatusCode.UNSET]
    assert all(c.name == GET_CAMERA and c.attributes["peer.service"] == SERVICE for c in clients)
    assert all(c.parent.span_id == caller.get_span_context().span_id for c in clients)
    assert {s.context.trace_id for s in finished} == {caller.get_span_context().trace_id}
    # each attempt's traceparent named its own client span
    assert sorted(s.parent.span_id for s in servers) == sorted(c.context.span_id for c in clients)
    for metadata, remaining in servicer.seen:
        assert metadata["x-request-id"] == "r-1"  # the caller's metadata goes along with the traceparent
        assert "traceparent" in metadata
        assert remaining is not None  # the deadline travels with every attempt
        assert 0 < remaining < 5.1  # (gRPC's timeout header rounds up a little)
    assert called(registry, GET_CAMERA, "UNAVAILABLE") == called(registry, GET_CAMERA, "OK") == 1
    assert (
        sample(
            registry,
            "itsmesh_grpc_client_latency_seconds_count",
            target_service=SERVICE,
            method=GET_CAMERA,
            code="OK",
        )
        == 1
    )
    assert sample(registry, "itsmesh_grpc_client_in_flight", target_service=SERVICE, method=GET_CAMERA) == 0


async def test_a_mesh_bidi_stream_is_one_client_span_and_one_count(provider, spans, registry):
    chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
    async with (
        serving(
            server_interceptors(SERVICE, registry=registry, tracer_provider=provider), CameraServicer()
        ) as addr,
        MeshClient.static({SERVICE: [addr]}, interceptors=chain) as mesh,
    ):
        stub = mesh.stub(SERVICE, streaming_pb2_grpc.StreamingServiceStub)
        replies = await frame_stream(stub, frames=3)
        await eventually(lambda: called(registry, STREAM_FRAMES, "OK") == 1)
        await eventually(lambda: len(spans.get_finished_spans()) == 2)
    assert len(replies) == 4
    [server] = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    [client] = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    assert client.name == server.name == STREAM_FRAMES
    assert server.parent.span_id == client.context.span_id
    assert client.attributes["rpc.grpc.status_code"] == 0
    assert (
        sample(registry, "itsmesh_grpc_client_in_flight", target_service=SERVICE, method=STREAM_FRAMES) == 0
    )


async def test_a_mesh_call_the_caller_cancels_is_counted_cancelled(provider, spans, registry):
    servicer = CameraServicer()
    chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
    async with (
        serving(server_interceptors(SERVICE, registry=registry, tracer_provider=provider), servicer) as addr,
        MeshClient.static({SERVICE: [addr]}, interceptors=chain) as mesh,
    ):
        stub = mesh.stub(SERVICE, streaming_pb2_grpc.StreamingServiceStub)
        task = asyncio.ensure_future(stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="hold")))
        await eventually(lambda: servicer.holding == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: served(registry, GET_CAMERA, "CANCELLED") == 1)
    assert called(registry, GET_CAMERA, "CANCELLED") == 1
    assert sample(registry, "itsmesh_grpc_client_in_flight", target_service=SERVICE, method=GET_CAMERA) == 0
    [client] = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    assert client.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_the_token_interceptor_stays_on_the_mesh_channels(provider, spans, registry):
    servicer = CameraServicer()
    chain = client_interceptors(
        SERVICE, token_provider=lambda: "viewer-token", registry=registry, tracer_provider=provider
    )
    async with (
        authenticated_server(provider, registry, servicer) as addr,
        MeshClient.static({SERVICE: [addr]}, interceptors=chain) as mesh,
    ):
        await mesh.stub(SERVICE, streaming_pb2_grpc.StreamingServiceStub).GetCamera(
            streaming_pb2.GetCameraRequest(camera_id="cam-1")
        )
    assert [p.subject if p else None for p in servicer.principals] == ["viewer-1"]
    [server] = by_kind(spans.get_finished_spans(), SpanKind.SERVER)
    [client] = by_kind(spans.get_finished_spans(), SpanKind.CLIENT)
    assert server.parent.span_id == client.context.span_id
    assert called(registry, GET_CAMERA, "OK") == 1


async def test_a_mesh_client_traces_and_counts_by_default_per_service_called(provider, spans, registry):
    """Without interceptors of its own, the client records into the global provider and registry, each
    route labelled with the service it calls, and the caller's trace still reaches the server."""
    target = f"echo-{uuid.uuid4().hex[:8]}"  # a label of its own in the process-wide registry
    async with (
        serving(
            server_interceptors(SERVICE, registry=registry, tracer_provider=provider), CameraServicer()
        ) as addr,
        MeshClient.static({target: [addr]}) as mesh,
        MeshClient.static({f"{target}-off": [addr]}, telemetry=False) as silent,
    ):
        with provider.get_tracer("tests").start_as_current_span("caller") as caller:
            await mesh.stub(target, streaming_pb2_grpc.StreamingServiceStub).GetCamera(
                streaming_pb2.GetCameraRequest(camera_id="cam-1")
            )
        await silent.stub(f"{target}-off", streaming_pb2_grpc.StreamingServiceStub).GetCamera(
            streaming_pb2.GetCameraRequest(camera_id="cam-2")
        )
    labels = {"target_service": target, "method": GET_CAMERA, "code": "OK"}
    assert REGISTRY.get_sample_value("itsmesh_grpc_client_requests_total", labels) == 1
    assert REGISTRY.get_sample_value("itsmesh_breaker_state", {"service": target, "endpoint": addr}) == 0
    off = {**labels, "target_service": f"{target}-off"}
    assert REGISTRY.get_sample_value("itsmesh_grpc_client_requests_total", off) is None
    first_server = by_kind(spans.get_finished_spans(), SpanKind.SERVER)[0]
    assert first_server.context.trace_id == caller.get_span_context().trace_id


async def test_breaker_states_of_mesh_endpoints_are_exported(provider, registry):
    dead = f"127.0.0.1:{_free_port()}"
    policy = ServicePolicy(
        breaker=BreakerConfig(consecutive_failures=1, cool_down_seconds=60.0),
        retry=RetryPolicy(max_attempts=1),
    )
    chain = client_interceptors(SERVICE, registry=registry, tracer_provider=provider)
    async with (
        serving(
            server_interceptors(SERVICE, registry=registry, tracer_provider=provider), CameraServicer()
        ) as addr,
        MeshClient.static(
            {SERVICE: [addr], "gone": [dead]}, interceptors=chain, config=ClientConfig(default_policy=policy)
        ) as mesh,
    ):
        await mesh.stub(SERVICE, streaming_pb2_grpc.StreamingServiceStub).GetCamera(
            streaming_pb2.GetCameraRequest(camera_id="cam-1")
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await mesh.stub("gone", streaming_pb2_grpc.StreamingServiceStub).GetCamera(
                streaming_pb2.GetCameraRequest(camera_id="cam-1"), timeout=2.0
            )
    assert sample(registry, "itsmesh_breaker_state", service=SERVICE, endpoint=addr) == 0
    assert sample(registry, "itsmesh_breaker_state", service="gone", endpoint=dead) == 2


def _free_port() -> int:
    """A loopback port nothing listens on (bound and released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
