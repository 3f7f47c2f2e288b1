"""Alerts held back by an inhibition, a silence or a mute interval are notified once that ends — and their
state changes visibly (GetAlert, WatchAlerts SUPPRESSION_CHANGED)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

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

FAST = {"delivery_poll_interval_s": 0.02, "suppression_recheck_interval_s": 0.05}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _config(hook, cameras, **extra) -> str:
    name = f"ops-{uuid.uuid4().hex[:8]}"
    route = {"receiver": name, "group_wait": 0, "group_by": ["camera_id", "kind"], **extra.pop("route", {})}
    return scoped_routing([{"name": name, "webhook": {"url": hook.url()}}], route, *cameras, **extra)


def _notified(hook):
    return [a["alert_id"] for r in hook.received for a in r.json()["alerts"]]


async def test_an_inhibited_alert_is_notified_when_the_inhibiting_alert_resolves(infra):
    clock = MovableClock()
    async with webhook_receiver() as hook, alert_host(infra, clock, **FAST) as host, alert_stub(host) as stub:
        rules = [
            {
                "source_matchers": ['kind="camera_offline"'],
                "target_matchers": ['kind="camera_quality_degraded"'],
                "equal": ["camera_id"],
            }
        ]
        camera = new_camera()
        config = _config(hook, [camera], inhibit_rules=rules)
        await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=config))
        call = stub.WatchAlerts(alert_pb2.WatchAlertsRequest(matchers=[camera_matcher(camera)]))
        stream = call.__aiter__()
        await asyncio.sleep(0.2)
        offline = (await stub.RaiseAlert(raise_request(camera, kind="camera_offline"))).alert
        quality = (await stub.RaiseAlert(raise_request(camera, kind="camera_quality_degraded"))).alert
        await until(lambda: offline.alert_id in _notified(hook))
        await asyncio.sleep(0.3)
        assert quality.alert_id not in _notified(hook)
        held = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=quality.alert_id))
        assert held.inhibited
        assert list(held.inhibited_by) == [offline.fingerprint]

        await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=offline.alert_id))
        await until(lambda: quality.alert_id in _notified(hook))
        freed = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=quality.alert_id))
        assert not freed.inhibited
        assert list(freed.inhibited_by) == []
        assert len(freed.deliveries) == 1
        changes = []
        while not changes or changes[-1].change_type != alert_pb2.ALERT_CHANGE_TYPE_SUPPRESSION_CHANGED:
            changes.append(await asyncio.wait_for(stream.__anext__(), 5))
        assert changes[-1].alert.alert_id == quality.alert_id
        assert not changes[-1].alert.inhibited
        call.cancel()


async def test_a_silenced_alert_is_notified_when_the_silence_is_deleted_or_expires(infra):
    clock = MovableClock()
    async with webhook_receiver() as hook, alert_host(infra, clock, **FAST) as host, alert_stub(host) as stub:
        deleted_camera, expiring_camera = new_camera(), new_camera()
        config = _config(hook, [deleted_camera, expiring_camera])
        await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=config))
        silence_ids = []
        for camera in (deleted_camera, expiring_camera):
            silence = alert_pb2.Silence(matchers=[camera_matcher(camera)], comment="maintenance")
            silence.end_time.FromDatetime(clock.now + timedelta(hours=1))
            created = await stub.CreateSilence(alert_pb2.CreateSilenceRequest(silence=silence))
            silence_ids.append(created.silence_id)
        deleted = (await stub.RaiseAlert(raise_request(deleted_camera))).alert
        expiring = (await stub.RaiseAlert(raise_request(expiring_camera))).alert
        assert deleted.silenced
        assert expiring.silenced
        await asyncio.sleep(0.3)
        assert hook.received == []

        await stub.DeleteSilence(alert_pb2.DeleteSilenceRequest(silence_id=silence_ids[0]))
        await until(lambda: deleted.alert_id in _notified(hook))
        assert expiring.alert_id not in _notified(hook)
        freed = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=deleted.alert_id))
        assert not freed.silenced
        deadline = time.monotonic() + 10
        while freed.deliveries[0].state != alert_pb2.DELIVERY_STATE_SUCCEEDED:  # recorded before time jumps
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
            freed = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=deleted.alert_id))

        clock.advance(3600)  # the second silence ends
        await until(lambda: expiring.alert_id in _notified(hook))
        assert len(hook.received) == 2, [
            (r.json()["notification_type"], _notified_one(r)) for r in hook.received
        ]


async def test_a_muted_alert_is_notified_when_the_mute_interval_ends(infra):
    clock = MovableClock()
    today = WEEKDAYS[clock.now.weekday()]
    async with webhook_receiver() as hook, alert_host(infra, clock, **FAST) as host, alert_stub(host) as stub:
        camera = new_camera()
        config = _config(
            hook,
            [camera],
            route={"mute_time_intervals": ["today"]},
            mute_time_intervals=[{"name": "today", "time_intervals": [{"weekdays": [today]}]}],
        )
        await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=config))
        muted = (await stub.RaiseAlert(raise_request(camera))).alert
        assert muted.muted
        await asyncio.sleep(0.3)
        assert hook.received == []
        clock.advance(24 * 3600)  # the next day is not muted
        await until(lambda: muted.alert_id in _notified(hook))
        assert not (await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=muted.alert_id))).muted


def _notified_one(request):
    return [(a["alert_id"], a["status"]) for a in request.json()["alerts"]]
