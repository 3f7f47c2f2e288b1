"""Escalation with a movable clock: unacknowledged alerts reach the next tier; acknowledged ones stop."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from itsmesh.v1 import alert_pb2, common_pb2
from tests.integration.alert_host import (
    MovableClock,
    alert_host,
    alert_stub,
    new_camera,
    raise_request,
    scoped_routing,
)
from tests.integration.alert_receiver import webhook_receiver

pytestmark = pytest.mark.integration

FAST = {"delivery_poll_interval_s": 0.02, "escalation_poll_interval_s": 0.02}


async def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_an_unacknowledged_alert_climbs_the_tiers_and_an_acknowledged_one_stops(infra):
    clock = MovableClock()
    async with (
        webhook_receiver() as ops,
        webhook_receiver() as lead,
        webhook_receiver() as oncall,
        alert_host(infra, clock, **FAST) as host,
        alert_stub(host) as stub,
    ):
        receivers = [
            {"name": "ops", "webhook": {"url": ops.url()}},
            {"name": "lead", "webhook": {"url": lead.url()}},
            {"name": "oncall", "webhook": {"url": oncall.url()}},
        ]
        policies = [
            {
                "name": "cameras",
                "tiers": [
                    {"after": "0s", "receivers": ["ops"]},
                    {"after": "10m", "receivers": ["lead"]},
                    {"after": "20m", "receivers": ["oncall"]},
                ],
            }
        ]
        route = {
            "receiver": "ops",
            "group_wait": 0,
            "group_by": ["camera_id"],
            "escalation_policy": "cameras",
        }
        ignored_camera, handled_camera = new_camera(), new_camera()
        # scoped: alerts other tests left open must not climb these tiers when the clock jumps
        config = scoped_routing(
            receivers, route, ignored_camera, handled_camera, escalation_policies=policies
        )
        await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=config))
        fired_at = clock.now
        ignored = (await stub.RaiseAlert(raise_request(ignored_camera))).alert
        handled = (await stub.RaiseAlert(raise_request(handled_camera))).alert
        await _until(lambda: _count(ops, 2))
        state = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=ignored.alert_id))
        assert state.escalation_level == 0
        assert state.next_escalation_time.ToDatetime() == (fired_at + timedelta(minutes=10)).replace(
            tzinfo=None
        )
        await stub.AcknowledgeAlert(alert_pb2.AcknowledgeAlertRequest(alert_id=handled.alert_id))

        clock.advance(599)
        await asyncio.sleep(0.2)
        assert lead.received == []  # not a second early
        clock.advance(1)
        await _until(lambda: _count(lead, 1))
        body = lead.received[0].json()
        assert body["notification_type"] == "escalation"
        assert body["alerts"][0]["alert_id"] == ignored.alert_id
        escalated = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=ignored.alert_id))
        assert escalated.escalation_level == 1
        escalation = next(d for d in escalated.deliveries if d.receiver == "lead")
        assert escalation.notification_type == common_pb2.NOTIFICATION_TYPE_ESCALATION
        assert escalation.escalation_level == 1

        clock.advance(600)
        await _until(lambda: _count(oncall, 1))
        final = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=ignored.alert_id))
        assert final.escalation_level == 2
        assert not final.HasField("next_escalation_time")
        clock.advance(3600)
        await asyncio.sleep(0.2)
        assert len(lead.received) == 1  # the acknowledged alert never escalated
        assert len(oncall.received) == 1


async def _count(receiver, n):
    return len(receiver.received) >= n
