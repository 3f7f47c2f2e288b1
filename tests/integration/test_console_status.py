"""The console's status vector and live push against real PostgreSQL, Redis, the broker and an instance."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from mesh.host import ServiceHost
from services.console.config import ConsoleSettings
from services.console.service import build
from tests.integration.auth_stack import running_stack, user_token
from tests.integration.console_stack import registered_instance


def _settings(infra, **overrides: Any) -> ConsoleSettings:
    values: dict[str, Any] = {
        "database_url": infra.database_url,
        "redis_url": infra.redis_url,
        "kafka_bootstrap_servers": infra.kafka_bootstrap_servers,
        "bind_host": "127.0.0.1",
        "http_port": 0,
        "metrics_port": None,
        "require_auth": False,
        **overrides,
    }
    return ConsoleSettings(**values)


@asynccontextmanager
async def console(infra, **overrides: Any) -> AsyncIterator[tuple[ServiceHost, httpx.AsyncClient]]:
    host = ServiceHost(build(_settings(infra, **overrides)))
    await host.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{host.http_port}", timeout=10) as client:
            yield host, client
    finally:
        await host.stop()


def component(vector: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in vector["components"] if c["name"] == name), None)


async def wait_for_vector(client: httpx.AsyncClient, predicate, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        vector = (await client.get("/api/status")).json()
        if predicate(vector):
            return vector
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met; last vector: {json.dumps(vector)[:2000]}")
        await asyncio.sleep(0.1)


async def test_the_status_vector_describes_real_infrastructure_and_a_registered_instance(infra):
    service = f"consoletest{uuid.uuid4().hex[:6]}"
    target = await registered_instance(infra, service)
    name = f"{service}/{target.settings.instance_id}"
    try:
        async with console(infra) as (_, client):
            vector = await wait_for_vector(
                client,
                lambda v: (
                    (c := component(v, name)) is not None
                    and c["details"]["rps"] is not None
                    and component(v, "kafka")["status"] == "healthy"
                ),
            )
            response = await client.get("/api/status")
    finally:
        await target.stop()
    assert response.headers["cache-control"] == "no-cache"
    assert set(vector) >= {"components", "overview", "sessions", "traffic", "resources", "meta"}
    pg = component(vector, "postgresql")
    assert pg["status"] == "healthy"
    assert pg["latency_ms"] > 0
    assert pg["details"]["connections"] >= 1
    assert pg["details"]["database_size_bytes"] > 0
    assert isinstance(pg["details"]["timescaledb"], bool)
    redis = component(vector, "redis")
    assert redis["status"] == "healthy"
    assert redis["details"]["keys"] >= 1
    assert redis["details"]["used_memory_bytes"] > 0
    kafka = component(vector, "kafka")
    assert kafka["details"]["brokers"] >= 1
    assert "consumer_lag" in kafka["details"]
    mine = component(vector, name)
    assert mine["type"] == service
    assert mine["status"] == "healthy"
    assert mine["details"]["version"]
    assert mine["details"]["uptime_s"] >= 0
    assert mine["details"]["breaker"] == "closed"
    assert mine["details"]["health"] == "SERVING"
    assert vector["traffic"]["mode"] in ("normal", "degraded", "isolated")
    assert vector["sessions"]["websocket_clients"] == 0
    assert vector["sessions"]["camera_streams"] is None, "n/a until streaming reports sessions"
    assert vector["meta"]["version"]
    assert abs(vector["meta"]["generated_at"] - time.time()) < 3
    assert vector["overview"]["infrastructure_total"] == 3


async def test_an_instance_that_stops_shows_as_down_within_two_seconds_and_others_stay_up(infra):
    service = f"consoletest{uuid.uuid4().hex[:6]}"
    target = await registered_instance(infra, service)
    name = f"{service}/{target.settings.instance_id}"
    async with console(infra) as (_, client):
        await wait_for_vector(
            client, lambda v: (c := component(v, name)) is not None and c["status"] == "healthy"
        )
        await target.stop()
        stopped = time.monotonic()
        vector = await wait_for_vector(
            client, lambda v: (c := component(v, name)) is not None and c["status"] == "down", timeout=2.0
        )
        assert time.monotonic() - stopped <= 2.0
        assert component(vector, "postgresql")["status"] == "healthy"
        assert component(vector, "redis")["status"] == "healthy"
        assert any(t["name"] == name and t["current"] == "down" for t in vector["history"])


async def test_a_dead_component_shows_as_down_without_stalling_the_others(infra):
    async with console(infra, database_url="postgresql://postgres@127.0.0.1:1/none") as (_, client):
        started = time.monotonic()
        vector = (await client.get("/api/status")).json()
        vector = await wait_for_vector(
            client, lambda v: v["meta"]["generation"] > vector["meta"]["generation"]
        )
        assert time.monotonic() - started < 2.5, "a dead database must not slow the tick"
        assert component(vector, "postgresql")["status"] == "down"
        assert component(vector, "postgresql")["error"]
        assert component(vector, "redis")["status"] == "healthy"


async def read_events(
    client: httpx.AsyncClient, url: str, count: int, **kwargs: Any
) -> list[tuple[float, dict]]:
    """``count`` status events from the stream, each with its arrival time."""
    events = []
    async with client.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-cache"
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append((time.monotonic(), json.loads(line[6:])))
                if len(events) == count:
                    break
    return events


async def test_the_live_stream_pushes_every_second_to_every_client_and_a_stuck_client_delays_none(infra):
    async with console(infra) as (host, client):
        # a client that never reads (its queue overflowing is covered by the broadcaster's unit tests)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", host.http_port))
        sock.send(b"GET /api/status/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            results = await asyncio.gather(*(read_events(client, "/api/status/stream", 5) for _ in range(5)))
        finally:
            sock.close()
    for events in results:
        generations = [e["meta"]["generation"] for _, e in events]
        assert generations == sorted(generations)
        full = [(at, e) for at, e in events[1:] if e["meta"]["trigger"] == "tick"]
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(full)]
        assert len(gaps) >= 2
        assert all(0.8 <= gap <= 1.2 for gap in gaps), gaps
        for at, event in full:
            age = time.time() - event["meta"]["generated_at"] - (time.monotonic() - at)
            assert age < 1.5


async def test_unauthenticated_callers_get_401_json_and_a_viewer_can_read(infra):
    async with running_stack(infra, with_services=False) as stack:
        viewer = await user_token(stack, "viewer")
        device = await user_token(stack, "device")
        async with console(infra, require_auth=True, auth_url=stack.auth_http) as (_, client):
            anonymous = await client.get("/api/status")
            assert anonymous.status_code == 401
            assert anonymous.json()["error"] == "unauthenticated"
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            assert (
                await client.get("/api/status", headers={"Authorization": "Bearer nonsense"})
            ).status_code == 401
            forbidden = await client.get("/api/status", headers={"Authorization": f"Bearer {device}"})
            assert forbidden.status_code == 403
            ok = await client.get("/api/status", headers={"Authorization": f"Bearer {viewer}"})
            assert ok.status_code == 200
            assert ok.json()["components"]
            assert ok.headers["cache-control"] == "no-cache"
            assert (await client.get("/api/status/stream")).status_code == 401
            events = await read_events(client, f"/api/status/stream?token={viewer}", 1)
            assert events[0][1]["components"]
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/metrics")).status_code == 200


async def test_the_dashboard_and_its_assets_are_served_by_the_app_and_the_console_exports_metrics(infra):
    async with console(infra) as (_, client):
        page = await client.get("/")
        assert page.status_code == 200
        assert "itsmesh console" in page.text
        assert "http" not in page.text.replace("http-equiv", ""), "no external (CDN) assets"
        for asset in ("/static/console.js", "/static/console.css"):
            assert (await client.get(asset)).status_code == 200
        metrics = await client.get("/metrics")
        assert "itsmesh_console_status_ticks_total" in metrics.text
        docs = await client.get("/openapi.json")
        assert "/api/status" in docs.json()["paths"]
        assert (await client.get("/docs")).status_code == 200


@pytest.mark.parametrize("path", ["/api/status", "/api/status/stream"])
async def test_the_token_query_parameter_is_documented_in_openapi(infra, path):
    async with console(infra) as (_, client):
        spec = (await client.get("/openapi.json")).json()
        params = [p["name"] for p in spec["paths"][path]["get"].get("parameters", [])]
        assert "token" in params


async def test_an_instance_going_down_is_pushed_within_250_ms_outside_the_regular_tick(infra):
    service = f"consoletest{uuid.uuid4().hex[:6]}"
    target = await registered_instance(infra, service)
    name = f"{service}/{target.settings.instance_id}"
    async with console(infra) as (_, client):
        await wait_for_vector(
            client, lambda v: (c := component(v, name)) is not None and c["status"] == "healthy"
        )
        async with client.stream("GET", "/api/status/stream") as response:
            lines = response.aiter_lines()
            async for line in lines:  # the primed latest vector, then the first regular tick
                if line.startswith("data: ") and json.loads(line[6:])["meta"]["generation"] > 1:
                    break
            await asyncio.sleep(0.3)  # well inside the next second
            stop_started = time.monotonic()
            await target.stop()
            stopped = time.monotonic()
            async for line in lines:
                if not line.startswith("data: "):
                    continue
                vector = json.loads(line[6:])
                mine = component(vector, name)
                if mine is not None and mine["status"] == "down":
                    break
            arrived = time.monotonic()
    assert vector["meta"]["trigger"] == "change"
    assert arrived - stopped <= 0.25, (arrived - stopped, stopped - stop_started)


async def test_kafka_consumer_lag_is_reported_per_group_and_topic(infra, unique_topic):
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap_servers)
    await producer.start()
    try:
        for _ in range(5):
            await producer.send_and_wait(unique_topic, b"x", partition=0)
    finally:
        await producer.stop()
    group = f"consoletest-{uuid.uuid4().hex[:6]}"
    consumer = AIOKafkaConsumer(
        unique_topic,
        bootstrap_servers=infra.kafka_bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            while not await consumer.getmany(timeout_ms=500):
                pass
        await consumer.commit({TopicPartition(unique_topic, 0): 2})
    finally:
        await consumer.stop()
    async with console(infra) as (_, client):
        vector = await wait_for_vector(
            client,
            lambda v: (component(v, "kafka")["details"].get("consumer_lag") or {}).get(group) is not None,
        )
    assert component(vector, "kafka")["details"]["consumer_lag"][group] == {unique_topic: 3}


async def test_the_websocket_pushes_the_status_vector_about_every_second_over_a_real_socket(infra):
    from websockets.asyncio.client import connect

    async with console(infra) as (host, _):
        url = f"ws://127.0.0.1:{host.http_port}/ws/status"
        async with connect(url) as first, connect(url) as second:
            # The first message is the latest vector, sent on connecting: its gap to the next tick is
            # whatever was left of the current second. The ticks after it are what is measured.
            assert json.loads(await asyncio.wait_for(first.recv(), timeout=5))["components"]
            arrivals: list[float] = []
            for _ in range(3):
                message = json.loads(await asyncio.wait_for(first.recv(), timeout=5))
                arrivals.append(time.monotonic())
                assert message["components"]
            assert json.loads(await asyncio.wait_for(second.recv(), timeout=5))["components"]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.5 < gap < 1.6 for gap in gaps), gaps
