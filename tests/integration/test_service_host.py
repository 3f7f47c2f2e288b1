"""The service host against real gRPC servers on loopback and the real embedded PostgreSQL."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from itsmesh.v1 import analytics_pb2, analytics_pb2_grpc, common_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.host import GrpcService, ServiceHost, ServiceSpec
from services.auth.config import AuthSettings
from services.auth.service import build as build_auth
from services.streaming.config import StreamingSettings
from services.streaming.service import build as build_streaming

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _settings(infra, **overrides) -> StreamingSettings:
    values = {
        "database_url": infra.database_url,
        "redis_url": infra.redis_url,
        "bind_host": "127.0.0.1",
        "grpc_port": 0,
        "drain_grace_s": 5.0,
    }
    return StreamingSettings(**{**values, **overrides})


class SlowStreaming(streaming_pb2_grpc.StreamingServiceServicer):
    """A servicer whose GetCamera takes a while, to watch draining."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def GetCamera(self, request, context):
        self.entered.set()
        await asyncio.sleep(0.5)
        return common_pb2.Camera(camera_id=request.camera_id)


async def _health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return reply.status


async def test_streaming_host_serves_health_for_the_process_and_its_service(infra):
    host = ServiceHost(build_streaming(_settings(infra)))
    await host.start()
    try:
        address = f"127.0.0.1:{host.grpc_port}"
        assert await _health(address) == SERVING
        assert await _health(address, "itsmesh.v1.StreamingService") == SERVING
    finally:
        await host.stop()


async def test_reflection_lists_the_service_and_health(infra):
    host = ServiceHost(build_streaming(_settings(infra, migrate_on_start=False)))
    await host.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = [s.name async for r in replies for s in r.list_services_response.service]
        assert {"itsmesh.v1.StreamingService", "grpc.health.v1.Health"} <= set(names)
    finally:
        await host.stop()


async def test_rpcs_a_servicer_leaves_out_answer_unimplemented_not_internal(infra):
    spec = ServiceSpec(
        name="analytics",
        settings=_settings(infra, migrate_on_start=False),
        grpc_services=[
            GrpcService.from_generated(
                analytics_pb2,
                analytics_pb2_grpc,
                "AnalyticsService",
                analytics_pb2_grpc.AnalyticsServiceServicer(),
            )
        ],
        uses_database=False,
    )
    host = ServiceHost(spec)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetPipelineStatus(analytics_pb2.GetPipelineStatusRequest(), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await host.stop()


async def test_graceful_stop_reports_not_serving_and_drains_the_call_in_flight(infra):
    servicer = SlowStreaming()
    spec = ServiceSpec(
        name="streaming",
        settings=_settings(infra, migrate_on_start=False),
        grpc_services=[
            GrpcService.from_generated(streaming_pb2, streaming_pb2_grpc, "StreamingService", servicer)
        ],
        uses_database=False,
    )
    host = ServiceHost(spec)
    await host.start()
    address = f"127.0.0.1:{host.grpc_port}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = streaming_pb2_grpc.StreamingServiceStub(channel)
        in_flight = asyncio.ensure_future(
            stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="c9"), timeout=5)
        )
        await servicer.entered.wait()
        stopping = asyncio.ensure_future(host.stop())
        await asyncio.sleep(0.05)
        assert host.draining.is_set()
        statuses = [s async for s in _watch_once(address)]
        reply = await in_flight
        await stopping
    assert reply.camera_id == "c9", "the call in flight completed during the drain"
    assert statuses in ([], [NOT_SERVING]), "new callers see NOT_SERVING or are refused"


async def _watch_once(address: str):
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=0.3
            )
        except grpc.aio.AioRpcError:
            return
        yield reply.status


async def test_a_taken_port_fails_start_with_a_message_naming_the_service(infra):
    first = ServiceHost(build_streaming(_settings(infra, migrate_on_start=False)))
    await first.start()
    try:
        clash = ServiceHost(
            build_streaming(_settings(infra, migrate_on_start=False, grpc_port=first.grpc_port))
        )
        with pytest.raises(OSError, match="streaming"):
            await clash.start()
        await clash.stop()
    finally:
        await first.stop()


async def test_auth_host_serves_rest_with_openapi_docs_and_grpc_health(infra):
    settings = AuthSettings(
        database_url=infra.database_url,
        redis_url=infra.redis_url,
        bind_host="127.0.0.1",
        grpc_port=0,
        http_port=0,
    )
    host = ServiceHost(build_auth(settings))
    await host.start()
    try:
        assert await _health(f"127.0.0.1:{host.grpc_port}", "itsmesh.v1.AuthService") == SERVING
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{host.http_port}") as client:
            assert (await client.get("/healthz")).json() == {"status": "SERVING"}
            assert (await client.get("/docs")).status_code == 200
            assert (await client.get("/openapi.json")).json()["info"]["title"] == "itsmesh auth"
    finally:
        await host.stop()


async def test_a_serving_host_is_registered_in_discovery_and_leaves_it_on_stop(infra):
    from mesh.registry import list_instances, open_redis

    host = ServiceHost(build_streaming(_settings(infra, migrate_on_start=False)))
    await host.start()
    redis = open_redis(infra.redis_url)
    try:
        listed = {i.instance_id: i for i in await list_instances(redis, "streaming")}
        assert listed[host.settings.instance_id].address == f"127.0.0.1:{host.grpc_port}"
        await host.stop()
        assert host.settings.instance_id not in {
            i.instance_id for i in await list_instances(redis, "streaming")
        }
    finally:
        await host.stop()
        await redis.aclose()
