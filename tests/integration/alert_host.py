"""A real alert service on loopback for the alert tests, with a clock the test moves."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from itsmesh.v1 import alert_pb2, alert_pb2_grpc, common_pb2
from mesh.host import ServiceHost
from services.alert.config import AlertSettings
from services.alert.service import build


class MovableClock:
    """Wall-clock time that starts at the real now and moves only when the test says so."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@asynccontextmanager
async def alert_host(infra: Any, clock: MovableClock, **overrides: Any) -> AsyncIterator[ServiceHost]:
    """An alert host without auth, on a free port, migrated."""
    values: dict[str, Any] = {
        "database_url": infra.database_url,
        "redis_url": infra.redis_url,
        "kafka_bootstrap_servers": infra.kafka_bootstrap_servers,
        "bind_host": "127.0.0.1",
        "grpc_port": 0,
        "register_in_discovery": False,
        "metrics_port": None,
        "drain_grace_s": 1.0,
        "require_auth": False,
        "consume_camera_events": False,
        **overrides,
    }
    host = ServiceHost(build(AlertSettings(**values), clock=clock))
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@asynccontextmanager
async def alert_stub(host: ServiceHost) -> AsyncIterator[alert_pb2_grpc.AlertServiceStub]:
    """A client of ``host``."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
        yield alert_pb2_grpc.AlertServiceStub(channel)


def raise_request(
    camera_id: str, kind: str = "camera_offline", **overrides: Any
) -> alert_pb2.RaiseAlertRequest:
    """A valid RaiseAlert request about ``camera_id`` with a fresh client_alert_id."""
    values: dict[str, Any] = {
        "client_alert_id": uuid.uuid4().hex,
        "labels": {"kind": kind, "camera_id": camera_id},
        "annotations": {"summary": f"{kind} on {camera_id}"},
        "severity": common_pb2.SEVERITY_HIGH,
        "source": "tests",
        **overrides,
    }
    return alert_pb2.RaiseAlertRequest(**values)


def camera_matcher(camera_id: str) -> alert_pb2.LabelMatcher:
    """Matcher selecting one test's camera."""
    return alert_pb2.LabelMatcher(name="camera_id", value=camera_id, type=alert_pb2.LABEL_MATCH_TYPE_EQUAL)


def new_camera() -> str:
    """A camera id no other test uses."""
    return f"cam-{uuid.uuid4().hex[:10]}"


def scoped_routing(receivers: list[dict[str, Any]], route: dict[str, Any], *cameras: str, **top: Any) -> str:
    """A routing configuration in which only these cameras' alerts reach ``route`` (the root's one child);
    the root sends everything else to a sink that is never up. Alerts other tests left open in the shared
    database (held back, or in groups) are so kept away from this test's receivers."""
    sink = f"sink-{uuid.uuid4().hex[:8]}"
    child = {"matchers": [f'camera_id=~"{"|".join(cameras)}"'], **route}
    config = {
        "receivers": [*receivers, {"name": sink, "webhook": {"url": "http://127.0.0.1:9/sink"}}],
        "route": {"receiver": sink, "group_wait": 0, "routes": [child]},
        **top,
    }
    return json.dumps(config)


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``predicate`` (plain or async) until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
