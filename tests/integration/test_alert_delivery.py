"""Delivery to real receivers on loopback: signed webhooks, Kafka, retries with backoff, give-up and requeue,
a failing receiver never blocking another, silences and resolutions."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaConsumer

from itsmesh.v1 import alert_pb2, common_pb2, events_pb2
from mesh.events import ALERT_NOTIFICATIONS_TOPIC, ensure_topics
from tests.integration.alert_host import (
    MovableClock,
    alert_host,
    alert_stub,
    camera_matcher,
    new_camera,
    raise_request,
)
from tests.integration.alert_receiver import webhook_receiver

pytestmark = pytest.mark.integration

SECRET = "hmac-secret-for-tests"
FAST = {
    "delivery_poll_interval_s": 0.02,
    "delivery_backoff_base_s": 5.0,
    "delivery_backoff_max_s": 10.0,
    "delivery_max_attempts": 3,
}


def _routing(receivers: list[dict], routes: list[dict], root: str) -> str:
    # Grouped by camera: every test raises about its own cameras, so its groups are its own.
    route = {
        "receiver": root,
        "group_wait": 0,
        "group_interval": "1m",
        "group_by": ["camera_id"],
        "routes": routes,
    }
    return json.dumps({"receivers": receivers, "route": route})


async def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _deliveries(stub, alert_id):
    return list((await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=alert_id))).deliveries)


async def _settled(stub, alert_id, count=1):
    async def done():
        found = await _deliveries(stub, alert_id)
        final = (alert_pb2.DELIVERY_STATE_SUCCEEDED, alert_pb2.DELIVERY_STATE_FAILED)
        return found if len(found) >= count and all(d.state in final for d in found) else None

    return await _until(done)


async def _apply(stub, text):
    await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=text))


async def test_a_webhook_gets_a_signed_json_notification_and_the_attempt_is_recorded(infra):
    clock = MovableClock()
    async with (
        webhook_receiver() as hook,
        alert_host(infra, clock, **FAST) as host,
        alert_stub(host) as stub,
    ):
        await _apply(
            stub, _routing([{"name": "ops", "webhook": {"url": hook.url(), "secret": SECRET}}], [], "ops")
        )
        camera = new_camera()
        raised = await stub.RaiseAlert(raise_request(camera))
        [delivery] = await _settled(stub, raised.alert.alert_id)
        assert delivery.state == alert_pb2.DELIVERY_STATE_SUCCEEDED
        assert delivery.receiver == "ops"
        assert delivery.receiver_type == alert_pb2.RECEIVER_TYPE_WEBHOOK
        assert delivery.notification_type == common_pb2.NOTIFICATION_TYPE_FIRING
        [attempt] = delivery.attempts
        assert attempt.outcome == alert_pb2.DELIVERY_OUTCOME_SUCCESS
        assert attempt.http_status_code == 200
        assert attempt.latency_ms > 0
        [request] = hook.received
        body = request.json()
        assert body["notification_id"] == delivery.delivery_id
        assert body["alerts"][0]["labels"]["camera_id"] == camera
        expected = hmac.new(
            SECRET.encode(),
            request.headers["x-itsmesh-timestamp"].encode() + b"." + request.body,
            hashlib.sha256,
        ).hexdigest()
        assert request.headers["x-itsmesh-signature"] == f"sha256={expected}"
        # a repeat is deduplicated: no second notification
        await stub.RaiseAlert(raise_request(camera))
        await asyncio.sleep(0.2)
        assert len(hook.received) == 1
        # resolving notifies the resolution, in the group's next batch (group_interval after the first)
        clock.advance(1)
        await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=raised.alert.alert_id))
        await asyncio.sleep(0.2)
        assert len(hook.received) == 1
        clock.advance(59)
        found = await _settled(stub, raised.alert.alert_id, count=2)
        assert found[0].notification_type == common_pb2.NOTIFICATION_TYPE_RESOLVED
        assert hook.received[-1].json()["notification_type"] == "resolved"


async def test_a_receiver_that_fails_then_recovers_is_retried_with_backoff(infra):
    clock = MovableClock()
    async with (
        webhook_receiver(script=[500, 503]) as hook,
        alert_host(infra, clock, **FAST) as host,
        alert_stub(host) as stub,
    ):
        await _apply(stub, _routing([{"name": "ops", "webhook": {"url": hook.url()}}], [], "ops"))
        raised = await stub.RaiseAlert(raise_request(new_camera()))
        alert_id = raised.alert.alert_id

        async def attempts(n):
            async def check():
                found = await _deliveries(stub, alert_id)
                return found[0] if found and len(found[0].attempts) >= n and found[0].state != 1 else None

            return await _until(check)

        first = await attempts(1)
        assert first.state == alert_pb2.DELIVERY_STATE_RETRYING
        assert first.attempts[0].http_status_code == 500
        assert "HTTP 500" in first.attempts[0].error
        due = first.next_attempt_time.ToDatetime().replace(tzinfo=clock.now.tzinfo)
        assert clock.now <= due <= clock.now + timedelta(seconds=5)  # first retry: jitter within base
        await asyncio.sleep(0.2)
        assert len(hook.received) == 1  # not before the clock reaches the retry time
        clock.advance(10)
        second = await attempts(2)
        assert second.attempts[1].http_status_code == 503
        clock.advance(10)
        third = await attempts(3)
        assert third.state == alert_pb2.DELIVERY_STATE_SUCCEEDED
        assert [a.outcome for a in third.attempts] == [
            alert_pb2.DELIVERY_OUTCOME_ERROR,
            alert_pb2.DELIVERY_OUTCOME_ERROR,
            alert_pb2.DELIVERY_OUTCOME_SUCCESS,
        ]


async def test_a_failing_receiver_gives_up_and_retry_failed_deliveries_requeues_it(infra):
    clock = MovableClock()
    async with (
        webhook_receiver(default_status=500) as hook,
        alert_host(infra, clock, **FAST) as host,
        alert_stub(host) as stub,
    ):
        await _apply(stub, _routing([{"name": "flaky", "webhook": {"url": hook.url()}}], [], "flaky"))
        alert_id = (await stub.RaiseAlert(raise_request(new_camera()))).alert.alert_id
        for _ in range(3):
            clock.advance(20)
            await asyncio.sleep(0.15)
        [failed] = await _settled(stub, alert_id)
        assert failed.state == alert_pb2.DELIVERY_STATE_FAILED
        assert len(failed.attempts) == 3
        dry = await stub.RetryFailedDeliveries(
            alert_pb2.RetryFailedDeliveriesRequest(alert_id=alert_id, validate_only=True)
        )
        assert list(dry.delivery_ids) == [failed.delivery_id]
        hook.default_status = 200
        requeued = await stub.RetryFailedDeliveries(alert_pb2.RetryFailedDeliveriesRequest(alert_id=alert_id))
        assert requeued.requeued_count == 1
        [delivered] = await _settled(stub, alert_id)
        assert delivered.state == alert_pb2.DELIVERY_STATE_SUCCEEDED
        assert len(delivered.attempts) == 4
        listed = await stub.ListDeliveries(
            alert_pb2.ListDeliveriesRequest(receiver="flaky", states=[alert_pb2.DELIVERY_STATE_SUCCEEDED])
        )
        assert failed.delivery_id in [d.delivery_id for d in listed.deliveries]


async def test_a_hanging_receiver_does_not_hold_up_another(infra):
    async with (
        webhook_receiver(delay_s=3.0) as slow,
        webhook_receiver() as fast,
        alert_host(infra, MovableClock(), **FAST) as host,
        alert_stub(host) as stub,
    ):
        receivers = [
            {"name": "slow", "webhook": {"url": slow.url(), "timeout": "1s"}},
            {"name": "fast", "webhook": {"url": fast.url()}},
        ]
        routes = [
            {"matchers": ['kind="camera_offline"'], "receiver": "slow", "continue": True},
            {"matchers": ['kind="camera_offline"'], "receiver": "fast"},
        ]
        await _apply(stub, _routing(receivers, routes, "fast"))
        started = time.monotonic()
        alert_id = (await stub.RaiseAlert(raise_request(new_camera()))).alert.alert_id
        await asyncio.wait_for(fast.arrived.wait(), 5)
        assert time.monotonic() - started < 0.9  # before the slow receiver's timeout

        async def both_tried():
            found = {d.receiver: d for d in await _deliveries(stub, alert_id)}
            slow_done = "slow" in found and len(found["slow"].attempts) >= 1
            return found if slow_done and found.get("fast") and found["fast"].attempts else None

        by_receiver = await _until(both_tried)
        assert by_receiver["fast"].state == alert_pb2.DELIVERY_STATE_SUCCEEDED
        assert by_receiver["slow"].state == alert_pb2.DELIVERY_STATE_RETRYING
        assert by_receiver["slow"].attempts[0].outcome == alert_pb2.DELIVERY_OUTCOME_TIMEOUT
        assert 900 <= by_receiver["slow"].attempts[0].latency_ms < 3000


async def test_kafka_receiver_publishes_an_alert_notification(infra):
    await ensure_topics(infra.kafka_bootstrap_servers)
    clock = MovableClock()
    patient = {**FAST, "delivery_max_attempts": 10_000}
    async with alert_host(infra, clock, **patient) as host, alert_stub(host) as stub:
        await _apply(
            stub,
            json.dumps(
                {
                    "receivers": [{"name": "bus", "kafka": {"topic": ALERT_NOTIFICATIONS_TOPIC}}],
                    "route": {"receiver": "bus", "group_wait": 0, "group_by": ["camera_id"]},
                }
            ),
        )
        camera = new_camera()
        alert_id = (await stub.RaiseAlert(raise_request(camera))).alert.alert_id

        async def succeeded():
            # The publisher connects in the background; an attempt before that is UNREACHABLE and retried
            # after its backoff, which this movable clock has to reach.
            clock.advance(10)
            found = await _deliveries(stub, alert_id)
            return found if found and found[0].state == alert_pb2.DELIVERY_STATE_SUCCEEDED else None

        [delivery] = await _until(succeeded, timeout=30)
        consumer = AIOKafkaConsumer(
            ALERT_NOTIFICATIONS_TOPIC,
            bootstrap_servers=infra.kafka_bootstrap_servers,
            group_id=f"test-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            found = None
            deadline = time.monotonic() + 30
            while found is None and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=300)
                for record in (r for batch in batches.values() for r in batch):
                    if dict(record.headers).get("event-id") == delivery.delivery_id.encode():
                        found = events_pb2.AlertNotification.FromString(record.value)
            assert found is not None
            assert found.notification_id == delivery.delivery_id
            assert found.alerts[0].labels["camera_id"] == camera
            assert found.notification_type == common_pb2.NOTIFICATION_TYPE_FIRING
        finally:
            await consumer.stop()


async def test_silenced_alerts_are_stored_but_not_notified(infra):
    clock = MovableClock()
    async with webhook_receiver() as hook, alert_host(infra, clock, **FAST) as host, alert_stub(host) as stub:
        await _apply(stub, _routing([{"name": "ops", "webhook": {"url": hook.url()}}], [], "ops"))
        camera = new_camera()
        silence = alert_pb2.Silence(matchers=[camera_matcher(camera)], comment="cleaning")
        silence.end_time.FromDatetime(clock.now + timedelta(hours=1))
        await stub.CreateSilence(alert_pb2.CreateSilenceRequest(silence=silence))
        raised = await stub.RaiseAlert(raise_request(camera))
        assert raised.alert.silenced
        assert raised.alert.group_key == ""  # it joined no group
        groups = await stub.ListAlertGroups(
            alert_pb2.ListAlertGroupsRequest(matchers=[camera_matcher(camera)])
        )
        assert list(groups.groups) == []
        await asyncio.sleep(0.3)
        assert hook.received == []
        assert await _deliveries(stub, raised.alert.alert_id) == []


async def test_pending_deliveries_survive_a_restart_of_the_service(infra, tmp_path):
    clock = MovableClock()
    routing = tmp_path / "routing.json"
    async with webhook_receiver() as hook:
        config = {
            "receivers": [{"name": "ops", "webhook": {"url": hook.url()}}],
            "route": {"receiver": "ops", "group_wait": "30s", "group_by": ["camera_id"]},
        }
        routing.write_text(json.dumps(config))
        async with (
            alert_host(infra, clock, routing_config_path=routing, **FAST) as host,
            alert_stub(host) as stub,
        ):
            camera = new_camera()
            alert_id = (await stub.RaiseAlert(raise_request(camera))).alert.alert_id
            [group] = (
                await stub.ListAlertGroups(
                    alert_pb2.ListAlertGroupsRequest(matchers=[camera_matcher(camera)])
                )
            ).groups
            assert group.next_notify_time.ToDatetime(tzinfo=clock.now.tzinfo) == clock.now + timedelta(
                seconds=30
            )
            assert await _deliveries(stub, alert_id) == []
        assert hook.received == []  # stopped before group_wait ended: the group is pending in PostgreSQL
        hook.script.append(500)
        async with (
            alert_host(infra, clock, routing_config_path=routing, **FAST) as host,
            alert_stub(host) as stub,
        ):
            clock.advance(30)

            async def retrying():
                found = await _deliveries(stub, alert_id)
                return found[0] if found and found[0].state == alert_pb2.DELIVERY_STATE_RETRYING else None

            pending = await _until(retrying)  # the group notified after the restart; its receiver failed
        async with (
            alert_host(infra, clock, routing_config_path=routing, **FAST) as host,
            alert_stub(host) as stub,
        ):
            clock.advance(FAST["delivery_backoff_base_s"])  # the retry that was due when it stopped
            [delivered] = await _settled(stub, alert_id)
            assert delivered.delivery_id == pending.delivery_id
            assert delivered.state == alert_pb2.DELIVERY_STATE_SUCCEEDED
            assert len(delivered.attempts) == 2
            assert len(hook.received) == 2


async def test_alert_groups_list_open_alerts_by_group_and_receiver(infra):
    clock = MovableClock()
    async with webhook_receiver() as hook, alert_host(infra, clock, **FAST) as host, alert_stub(host) as stub:
        receiver = f"ops-{uuid.uuid4().hex[:6]}"
        config = {
            "receivers": [{"name": receiver, "webhook": {"url": hook.url()}}],
            "route": {"receiver": receiver, "group_wait": 0, "group_by": ["camera_id"]},
        }
        await _apply(stub, json.dumps(config))
        camera = new_camera()
        a = (await stub.RaiseAlert(raise_request(camera, kind="camera_offline"))).alert
        b = (await stub.RaiseAlert(raise_request(camera, kind="camera_quality_degraded"))).alert
        await _settled(stub, a.alert_id)  # b joined after the first notification: it waits for group_interval
        listed = await stub.ListAlertGroups(alert_pb2.ListAlertGroupsRequest(receiver=receiver))
        [group] = listed.groups
        assert dict(group.group_labels) == {"camera_id": camera}
        assert sorted(x.alert_id for x in group.alerts) == sorted([a.alert_id, b.alert_id])
        assert group.HasField("last_notify_time")
        filtered = await stub.ListAlertGroups(
            alert_pb2.ListAlertGroupsRequest(receiver=receiver, matchers=[camera_matcher("another-camera")])
        )
        assert list(filtered.groups) == []


async def test_an_offline_camera_inhibits_its_quality_alert_and_a_mute_interval_mutes_a_route(infra):
    clock = MovableClock()
    async with webhook_receiver() as hook, alert_host(infra, clock, **FAST) as host, alert_stub(host) as stub:
        config = {
            "receivers": [{"name": "ops", "webhook": {"url": hook.url()}}],
            "route": {
                "receiver": "ops",
                "group_wait": 0,
                "group_by": ["camera_id"],
                "routes": [{"matchers": ['kind="speeding"'], "mute_time_intervals": ["always"]}],
            },
            "inhibit_rules": [
                {
                    "source_matchers": ['kind="camera_offline"'],
                    "target_matchers": ['kind="camera_quality_degraded"'],
                    "equal": ["camera_id"],
                }
            ],
            "mute_time_intervals": [
                {
                    "name": "always",
                    "time_intervals": [{"times": [{"start_time": "00:00", "end_time": "24:00"}]}],
                }
            ],
        }
        await _apply(stub, json.dumps(config))
        camera = new_camera()
        offline = (await stub.RaiseAlert(raise_request(camera, kind="camera_offline"))).alert
        quality = (await stub.RaiseAlert(raise_request(camera, kind="camera_quality_degraded"))).alert
        elsewhere = (await stub.RaiseAlert(raise_request(new_camera(), kind="camera_quality_degraded"))).alert
        speeding = (await stub.RaiseAlert(raise_request(camera, kind="speeding"))).alert
        await _settled(stub, offline.alert_id)
        await _settled(stub, elsewhere.alert_id)
        stored = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=quality.alert_id))
        assert stored.inhibited
        assert list(stored.inhibited_by) == [offline.fingerprint]
        assert list(stored.deliveries) == []
        muted = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=speeding.alert_id))
        assert muted.muted
        assert list(muted.deliveries) == []
        listed = await stub.ListAlerts(alert_pb2.ListAlertsRequest(matchers=[camera_matcher(camera)]))
        assert [a.alert_id for a in listed.alerts] == [offline.alert_id]
        notified = {r.json()["alerts"][0]["alert_id"] for r in hook.received}
        assert notified == {offline.alert_id, elsewhere.alert_id}


async def test_max_alerts_sends_the_first_alerts_the_count_left_out_and_a_console_link(infra):
    clock = MovableClock()
    async with (
        webhook_receiver() as hook,
        alert_host(infra, clock, console_url="http://console.test:8080", **FAST) as host,
        alert_stub(host) as stub,
    ):
        camera = new_camera()
        config = {
            "receivers": [{"name": "ops", "webhook": {"url": hook.url(), "max_alerts": 2}}],
            "route": {
                "receiver": "ops",
                "group_wait": "30s",
                "group_by": ["camera_id"],
                "routes": [{"matchers": [f'camera_id="{camera}"'], "receiver": "ops"}],
            },
        }
        await _apply(stub, json.dumps(config))
        raised = [
            (await stub.RaiseAlert(raise_request(camera, kind))).alert.alert_id
            for kind in ("camera_offline", "speeding", "wrong_way")
        ]
        clock.advance(30)
        [delivery] = await _settled(stub, raised[0])
        assert delivery.state == alert_pb2.DELIVERY_STATE_SUCCEEDED
        [request] = hook.received
        body = request.json()
        assert len(body["alerts"]) == 2
        assert {a["alert_id"] for a in body["alerts"]} < set(raised)
        assert body["truncated_alerts"] == 1
        assert body["console_url"] == "http://console.test:8080/#alerts"


async def test_a_send_cut_off_by_a_stop_is_sent_again_at_once_by_the_next_instance(infra, tmp_path):
    clock = MovableClock()  # never moves: the retry must not wait for the send's 60 s lease to run out
    routing = tmp_path / "routing.json"
    async with webhook_receiver(delay_s=30.0) as hook:
        routing.write_text(_routing([{"name": "ops", "webhook": {"url": hook.url()}}], [], "ops"))
        async with (
            alert_host(infra, clock, routing_config_path=routing, **FAST) as host,
            alert_stub(host) as stub,
        ):
            alert_id = (await stub.RaiseAlert(raise_request(new_camera()))).alert.alert_id
            await asyncio.wait_for(hook.arrived.wait(), 5)  # the receiver has it and does not answer
        hook.delay_s = 0.0
        async with (
            alert_host(infra, clock, routing_config_path=routing, **FAST) as host,
            alert_stub(host) as stub,
        ):
            [delivery] = await _settled(stub, alert_id)
        assert delivery.state == alert_pb2.DELIVERY_STATE_SUCCEEDED
        assert len(delivery.attempts) == 1  # the cut-off send left no attempt behind: it was not answered
        assert len(hook.received) == 2
        assert hook.received[0].json()["notification_id"] == hook.received[1].json()["notification_id"]


async def test_an_alert_resolved_on_another_instance_is_notified_when_it_fires_again(infra):
    clock = MovableClock()
    async with (
        webhook_receiver() as hook,
        alert_host(infra, clock, **FAST) as first,
        alert_host(infra, clock, **FAST) as second,
        alert_stub(first) as stub,
        alert_stub(second) as other,
    ):
        config = _routing([{"name": "ops", "webhook": {"url": hook.url()}}], [], "ops")
        await _apply(stub, config)
        await _apply(other, config)
        camera = new_camera()
        fired = (await stub.RaiseAlert(raise_request(camera))).alert
        assert fired.group_key
        await other.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=fired.alert_id))
        # the first instance last saw this fingerprint open; the raise still creates and notifies a new one
        again = await stub.RaiseAlert(raise_request(camera))
        assert again.outcome == alert_pb2.RAISE_ALERT_OUTCOME_CREATED
        assert again.alert.alert_id != fired.alert_id
        clock.advance(60)  # the group's group_interval after its first notification

        async def notified_again():
            return [r for r in hook.received if r.json()["alerts"][0]["alert_id"] == again.alert.alert_id]

        await _until(notified_again)
