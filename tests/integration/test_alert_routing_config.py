"""The routing file: loaded at start, hot-reloaded on change, a bad file rejected while the old one stays."""

from __future__ import annotations

import asyncio
import json
import os
import time

import grpc
import pytest

from itsmesh.v1 import alert_pb2
from mesh.status import status_details
from tests.integration.alert_host import MovableClock, alert_host, alert_stub

pytestmark = pytest.mark.integration


def _config(receiver_url: str) -> str:
    return json.dumps(
        {
            "receivers": [
                {"name": "ops", "webhook": {"url": receiver_url, "secret": "s3cret"}},
                {"name": "bus", "kafka": {"topic": "alerts.notifications.v1"}},
            ],
            "route": {
                "receiver": "ops",
                "group_by": ["camera_id"],
                "routes": [{"matchers": ['kind="speeding"'], "receiver": "bus"}],
            },
        },
        indent=2,
    )


def _touch_later(path):
    """Make sure the mtime moves even on file systems with coarse timestamps."""
    stamp = time.time_ns() + 2_000_000_000
    os.utime(path, ns=(stamp, stamp))


async def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_the_file_is_loaded_then_hot_reloaded_and_a_bad_file_keeps_the_old_config(infra, tmp_path):
    path = tmp_path / "routing.json"
    path.write_text(_config("http://127.0.0.1:9/first"))
    async with (
        alert_host(infra, MovableClock(), routing_config_path=path, routing_reload_interval_s=0.05) as host,
        alert_stub(host) as stub,
    ):
        first = await stub.GetRoutingConfig(alert_pb2.GetRoutingConfigRequest())
        assert first.source_path == str(path)
        assert first.route_count == 2
        assert {r.name for r in first.receivers} == {"ops", "bus"}
        assert "s3cret" not in first.yaml
        assert first.last_reload_error == ""

        path.write_text(_config("http://127.0.0.1:9/second"))
        _touch_later(path)

        async def hash_changed():
            current = await stub.GetRoutingConfig(alert_pb2.GetRoutingConfigRequest())
            return current.config_hash != first.config_hash

        await _until(hash_changed)
        second = await stub.GetRoutingConfig(alert_pb2.GetRoutingConfigRequest())
        assert "/second" in second.yaml

        path.write_text('{\n  "route": {"receiver": "nobody"},\n  "receivers": []\n}')
        _touch_later(path)

        async def error_reported():
            current = await stub.GetRoutingConfig(alert_pb2.GetRoutingConfigRequest())
            return current.last_reload_error != ""

        await _until(error_reported)
        kept = await stub.GetRoutingConfig(alert_pb2.GetRoutingConfigRequest())
        assert kept.config_hash == second.config_hash
        assert "route.receiver: unknown receiver 'nobody'" in kept.last_reload_error


async def test_reload_with_inline_text_validates_and_names_line_and_column(infra):
    async with alert_host(infra, MovableClock()) as host, alert_stub(host) as stub:
        empty = await stub.GetRoutingConfig(alert_pb2.GetRoutingConfigRequest())
        assert empty.config_hash == ""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml='{\n  "route": {,}\n}'))
        details = status_details(caught.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.field_violations[0][0] == "yaml"
        assert details.field_violations[0][1].startswith("line 2, column 13: ")

        checked = await stub.ReloadRoutingConfig(
            alert_pb2.ReloadRoutingConfigRequest(yaml=_config("http://127.0.0.1:9/x"), validate_only=True)
        )
        assert checked.route_count == 2
        assert (await stub.GetRoutingConfig(alert_pb2.GetRoutingConfigRequest())).config_hash == ""

        applied = await stub.ReloadRoutingConfig(
            alert_pb2.ReloadRoutingConfigRequest(yaml=_config("http://127.0.0.1:9/x"))
        )
        assert applied.config_hash == checked.config_hash
        assert applied.source_path == ""
        with pytest.raises(grpc.aio.AioRpcError) as no_file:
            await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest())
        assert status_details(no_file.value).code == grpc.StatusCode.INVALID_ARGUMENT
