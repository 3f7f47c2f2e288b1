"""Notification batching per alert group against a real webhook receiver, with Alertmanager's timing:
group_wait before the first notification, group_interval between batches of changes, repeat_interval for
an unchanged firing group, one notification carrying every alert of the group."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from itsmesh.v1 import alert_pb2
from tests.integration.alert_host import (
    MovableClock,
    alert_host,
    alert_stub,
    camera_matcher,
    new_camera,
    raise_request,
    scoped_routing,
    until,
)
from tests.integration.alert_receiver import webhook_receiver

pytestmark = pytest.mark.integration

FAST = {"delivery_poll_interval_s": 0.02}
# Groups outlive a host: a receiver name of this module's own keeps other tests' groups off these hooks.
RECEIVER = f"grouping-{uuid.uuid4().hex[:8]}"


async def _quiet(hook, count):
    """Nothing beyond ``count`` notifications arrives while the workers get several rounds."""
    await asyncio.sleep(0.3)
    assert len(hook.received) == count


def _ids(request):
    return sorted(a["alert_id"] for a in request.json()["alerts"])


async def test_a_group_notifies_once_per_batch_with_all_its_alerts(infra):
    clock = MovableClock()
    async with webhook_receiver() as hook, alert_host(infra, clock, **FAST) as host, alert_stub(host) as stub:
        camera, other = new_camera(), new_camera()
        route = {"receiver": RECEIVER, "group_by": ["camera_id"], "group_wait": "30s", "group_interval": "5m"}
        route["repeat_interval"] = "1h"
        config = scoped_routing([{"name": RECEIVER, "webhook": {"url": hook.url()}}], route, camera, other)
        await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=config))
        a, b, c = [
            (await stub.RaiseAlert(raise_request(camera, kind=kind))).alert
            for kind in ("camera_offline", "camera_quality_degraded", "speeding")
        ]
        d = (await stub.RaiseAlert(raise_request(other))).alert
        clock.advance(29)
        await _quiet(hook, 0)  # group_wait: alerts arriving together wait to go out together

        clock.advance(1)
        await until(lambda: len(hook.received) == 2)
        by_camera = {r.json()["group_labels"]["camera_id"]: r for r in hook.received}
        first = by_camera[camera].json()
        assert first["notification_type"] == "firing"
        assert _ids(by_camera[camera]) == sorted([a.alert_id, b.alert_id, c.alert_id])
        assert first["common_labels"] == {"camera_id": camera}
        assert _ids(by_camera[other]) == [d.alert_id]
        delivery_ids = {
            (await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=x.alert_id))).deliveries[0].delivery_id
            for x in (a, b, c)
        }
        assert delivery_ids == {first["notification_id"]}  # each alert's history shows the one notification

        clock.advance(30)  # t = 60: a new alert joins; the group waits group_interval after its last batch
        e = (await stub.RaiseAlert(raise_request(camera, kind="wrong_way"))).alert
        [group] = (
            await stub.ListAlertGroups(alert_pb2.ListAlertGroupsRequest(matchers=[camera_matcher(camera)]))
        ).groups
        assert len(group.alerts) == 4
        clock.advance(269)  # t = 329, last batch at 30
        await _quiet(hook, 2)
        clock.advance(1)  # t = 330 = 30 + group_interval
        await until(lambda: len(hook.received) == 3)
        second = hook.received[2]
        assert second.json()["notification_type"] == "firing"
        assert _ids(second) == sorted([a.alert_id, b.alert_id, c.alert_id, e.alert_id])

        clock.advance(10)  # t = 340: a resolution is a change too, sent with the next batch
        await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=a.alert_id))
        await _quiet(hook, 3)
        clock.advance(290)  # t = 630 = 330 + group_interval
        await until(lambda: len(hook.received) == 4)
        third = hook.received[3].json()
        assert third["notification_type"] == "firing"
        statuses = {x["alert_id"]: x["status"] for x in third["alerts"]}
        assert statuses == {
            a.alert_id: "ALERT_STATUS_RESOLVED",
            b.alert_id: "ALERT_STATUS_FIRING",
            c.alert_id: "ALERT_STATUS_FIRING",
            e.alert_id: "ALERT_STATUS_FIRING",
        }

        clock.advance(3599)  # unchanged: repeated only after repeat_interval (t = 630 + 3600)
        await until(lambda: len(hook.received) >= 5)  # the other camera's group repeats (last batch at 30)
        await _quiet(hook, 5)
        assert hook.received[4].json()["group_labels"] == {"camera_id": other}
        assert hook.received[4].json()["notification_type"] == "repeat"
        clock.advance(1)
        await until(lambda: len(hook.received) == 6)
        repeat = hook.received[5]
        assert repeat.json()["notification_type"] == "repeat"
        assert _ids(repeat) == sorted([b.alert_id, c.alert_id, e.alert_id])

        for x in (b, c, e):  # all resolved: one resolved notification, then the group is gone
            await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=x.alert_id))
        clock.advance(300)
        await until(lambda: len(hook.received) == 7)
        last = hook.received[6].json()
        assert last["notification_type"] == "resolved"
        assert {x["status"] for x in last["alerts"]} == {"ALERT_STATUS_RESOLVED"}
        assert sorted(x["alert_id"] for x in last["alerts"]) == sorted([b.alert_id, c.alert_id, e.alert_id])
        groups = await stub.ListAlertGroups(
            alert_pb2.ListAlertGroupsRequest(matchers=[camera_matcher(camera)])
        )
        assert list(groups.groups) == []


async def test_a_new_alert_after_the_group_ended_starts_a_new_group_wait(infra):
    clock = MovableClock()
    async with webhook_receiver() as hook, alert_host(infra, clock, **FAST) as host, alert_stub(host) as stub:
        camera = new_camera()
        route = {"receiver": RECEIVER, "group_by": ["camera_id"], "group_wait": "10s", "group_interval": "1m"}
        config = scoped_routing([{"name": RECEIVER, "webhook": {"url": hook.url()}}], route, camera)
        await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=config))
        first = (await stub.RaiseAlert(raise_request(camera))).alert
        await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=first.alert_id))
        clock.advance(10)
        await _quiet(hook, 0)  # resolved before it was ever notified: nothing to tell
        second = (await stub.RaiseAlert(raise_request(camera))).alert
        clock.advance(9)
        await _quiet(hook, 0)
        clock.advance(1)
        await until(lambda: len(hook.received) == 1)
        assert _ids(hook.received[0]) == [second.alert_id]
