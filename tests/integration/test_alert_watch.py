"""WatchAlerts: a snapshot of open alerts, then live changes matching the filters."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from itsmesh.v1 import alert_pb2, common_pb2
from tests.integration.alert_host import (
    MovableClock,
    alert_host,
    alert_stub,
    camera_matcher,
    new_camera,
    raise_request,
)

pytestmark = pytest.mark.integration


async def test_watch_sends_a_snapshot_then_created_repeated_acknowledged_resolved(infra):
    async with alert_host(infra, MovableClock()) as host, alert_stub(host) as stub:
        camera = new_camera()
        existing = (await stub.RaiseAlert(raise_request(camera, kind="camera_offline"))).alert
        other_camera = (await stub.RaiseAlert(raise_request(new_camera()))).alert
        call = stub.WatchAlerts(
            alert_pb2.WatchAlertsRequest(matchers=[camera_matcher(camera)], send_initial_snapshot=True)
        )
        stream = call.__aiter__()

        async def next_change():
            return await asyncio.wait_for(stream.__anext__(), 5)

        snapshot = await next_change()
        assert snapshot.change_type == alert_pb2.ALERT_CHANGE_TYPE_SNAPSHOT
        assert snapshot.alert.alert_id == existing.alert_id
        assert (await next_change()).change_type == alert_pb2.ALERT_CHANGE_TYPE_SNAPSHOT_END

        await stub.RaiseAlert(raise_request(new_camera()))  # another camera: filtered out
        created = (await stub.RaiseAlert(raise_request(camera, kind="camera_quality_degraded"))).alert
        change = await next_change()
        assert (change.change_type, change.alert.alert_id) == (
            alert_pb2.ALERT_CHANGE_TYPE_CREATED,
            created.alert_id,
        )
        await stub.RaiseAlert(raise_request(camera, kind="camera_quality_degraded"))
        repeated = await next_change()
        assert repeated.change_type == alert_pb2.ALERT_CHANGE_TYPE_REPEATED
        assert repeated.alert.occurrence_count == 2
        await stub.AcknowledgeAlert(alert_pb2.AcknowledgeAlertRequest(alert_id=created.alert_id))
        acked = await next_change()
        assert acked.change_type == alert_pb2.ALERT_CHANGE_TYPE_ACKNOWLEDGED
        assert acked.alert.status == common_pb2.ALERT_STATUS_ACKNOWLEDGED
        await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=existing.alert_id))
        resolved = await next_change()
        assert (resolved.change_type, resolved.alert.alert_id) == (
            alert_pb2.ALERT_CHANGE_TYPE_RESOLVED,
            existing.alert_id,
        )
        assert resolved.HasField("change_time")
        assert other_camera.alert_id != existing.alert_id
        call.cancel()


async def test_watch_filters_by_status_and_severity(infra):
    async with alert_host(infra, MovableClock()) as host, alert_stub(host) as stub:
        camera = new_camera()
        call = stub.WatchAlerts(
            alert_pb2.WatchAlertsRequest(
                matchers=[camera_matcher(camera)],
                statuses=[common_pb2.ALERT_STATUS_RESOLVED],
                min_severity=common_pb2.SEVERITY_HIGH,
            )
        )
        stream = call.__aiter__()
        low = (await stub.RaiseAlert(raise_request(camera, kind="a", severity=common_pb2.SEVERITY_LOW))).alert
        high = (
            await stub.RaiseAlert(raise_request(camera, kind="b", severity=common_pb2.SEVERITY_HIGH))
        ).alert
        await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=low.alert_id))
        await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=high.alert_id))
        change = await asyncio.wait_for(stream.__anext__(), 5)
        assert (change.change_type, change.alert.alert_id) == (
            alert_pb2.ALERT_CHANGE_TYPE_RESOLVED,
            high.alert_id,
        )
        call.cancel()


async def test_a_draining_instance_ends_watch_streams_with_unavailable(infra):
    async with alert_host(infra, MovableClock(), drain_grace_s=5.0) as host, alert_stub(host) as stub:
        call = stub.WatchAlerts(alert_pb2.WatchAlertsRequest(send_initial_snapshot=False))
        stream = call.__aiter__()
        await asyncio.sleep(0.2)  # the stream is open
        host.draining.set()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(stream.__anext__(), 2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_watcher_on_one_instance_sees_changes_made_through_another_once_and_in_order(infra):
    clock = MovableClock()
    async with (
        alert_host(infra, clock) as host_a,
        alert_host(infra, clock) as host_b,
        alert_stub(host_a) as stub_a,
        alert_stub(host_b) as stub_b,
    ):
        camera = new_camera()
        call = stub_a.WatchAlerts(
            alert_pb2.WatchAlertsRequest(matchers=[camera_matcher(camera)], send_initial_snapshot=True)
        )
        stream = call.__aiter__()

        async def next_change():
            return await asyncio.wait_for(stream.__anext__(), 5)

        assert (await next_change()).change_type == alert_pb2.ALERT_CHANGE_TYPE_SNAPSHOT_END
        await asyncio.sleep(0.3)  # both instances are subscribed to the change bus

        # Each step waits for the watcher before acting through the other instance: a change that
        # overtook an older one of the same alert would make the older one be dropped as stale.
        seen = []
        created = (await stub_b.RaiseAlert(raise_request(camera))).alert  # through B
        await stub_b.RaiseAlert(raise_request(camera))
        seen += [await next_change(), await next_change()]
        await stub_a.AcknowledgeAlert(alert_pb2.AcknowledgeAlertRequest(alert_id=created.alert_id))  # A
        seen.append(await next_change())
        await stub_b.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=created.alert_id))  # B
        seen.append(await next_change())
        other = (await stub_a.RaiseAlert(raise_request(camera, kind="camera_quality_degraded"))).alert
        seen.append(await next_change())
        assert [(c.change_type, c.alert.alert_id) for c in seen] == [
            (alert_pb2.ALERT_CHANGE_TYPE_CREATED, created.alert_id),
            (alert_pb2.ALERT_CHANGE_TYPE_REPEATED, created.alert_id),
            (alert_pb2.ALERT_CHANGE_TYPE_ACKNOWLEDGED, created.alert_id),
            (alert_pb2.ALERT_CHANGE_TYPE_RESOLVED, created.alert_id),
            (alert_pb2.ALERT_CHANGE_TYPE_CREATED, other.alert_id),
        ]
        assert [c.alert.occurrence_count for c in seen[:2]] == [1, 2]
        assert seen[3].alert.status == common_pb2.ALERT_STATUS_RESOLVED
        # no duplicate follows (A's own changes reach it locally and again over Redis)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.__anext__(), 0.5)
        call.cancel()
