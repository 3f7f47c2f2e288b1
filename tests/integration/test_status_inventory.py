"""What `itsmesh status` reads (mesh.inventory): health, the breaker state clients report, error rates."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import grpc
import pytest

from itsmesh.v1 import streaming_pb2, streaming_pb2_grpc
from mesh.breaker import BreakerConfig
from mesh.client import ClientConfig, MeshClient, ServicePolicy
from mesh.endpoints import Instance
from mesh.host import ServiceHost
from mesh.inventory import collect_inventory
from mesh.registry import Registration, open_redis
from mesh.retry import RetryPolicy
from services.streaming.config import StreamingSettings
from services.streaming.service import build as build_streaming
from tests.integration.private_valkey import PrivateValkey

pytestmark = pytest.mark.integration


async def test_inventory_shows_health_breakers_and_error_rates(infra):
    with tempfile.TemporaryDirectory(prefix="itsmesh-inventory-") as directory:
        valkey = PrivateValkey(Path(directory))
        await valkey.start()
        redis = open_redis(valkey.url)
        settings = StreamingSettings(
            database_url=infra.database_url,
            redis_url=valkey.url,
            kafka_bootstrap_servers=infra.kafka_bootstrap_servers,
            bind_host="127.0.0.1",
            grpc_port=0,
            metrics_port=0,
            require_auth=False,
            drain_grace_s=1.0,
        )
        host = ServiceHost(build_streaming(settings))
        await host.start()
        # A registered instance that refuses every connection, as a crashed one does until its lease lapses.
        dead = Instance("streaming", "dead-1", "127.0.0.1:1", started_at=time.time())
        try:
            async with Registration(valkey.url, dead, ttl_s=30.0):
                policy = ServicePolicy(
                    balancer="round_robin",
                    breaker=BreakerConfig(consecutive_failures=1, cool_down_seconds=60.0),
                    retry=RetryPolicy(max_attempts=1),
                )
                config = ClientConfig(default_policy=policy, client_id="inventory-test")
                mesh = await MeshClient.from_registry(valkey.url, ["streaming"], config=config)
                async with mesh:
                    stub = mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub)
                    codes = []
                    for i in range(12):  # unknown cameras: NOT_FOUND from the live one, refusal from the dead
                        try:
                            await stub.GetCamera(
                                streaming_pb2.GetCameraRequest(camera_id=f"nope-{i}"), timeout=2
                            )
                        except grpc.aio.AioRpcError as exc:
                            codes.append(exc.code())
                    assert grpc.StatusCode.NOT_FOUND in codes
                    reports = await collect_inventory(redis, window_s=0.5, timeout_s=1.0)
            rows = {r.instance.instance_id: r for r in reports}
            live = rows[settings.instance_id]
            assert live.health.serving
            assert live.lifetime is not None
            assert live.lifetime.errors >= 1
            assert live.lifetime.error_rate is not None
            assert live.lifetime.error_rate > 0
            gone = rows["dead-1"]
            assert not gone.health.serving
            assert [(b.state, b.client) for b in gone.breakers] == [("open", "inventory-test")]
        finally:
            await host.stop()
            await redis.aclose()
            await valkey.kill()
