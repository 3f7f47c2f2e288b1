"""camera.events.v1 through the real broker: offline raises an alert, online resolves it."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from itsmesh.v1 import alert_pb2, common_pb2, events_pb2
from mesh.events import CAMERA_EVENTS_TOPIC, EventPublisher, ensure_topics
from tests.integration.alert_host import MovableClock, alert_host, alert_stub, camera_matcher, new_camera

pytestmark = pytest.mark.integration


async def _alerts(stub, camera):
    request = alert_pb2.ListAlertsRequest(matchers=[camera_matcher(camera)], include_suppressed=True)
    return list((await stub.ListAlerts(request)).alerts)


async def _until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_offline_event_raises_and_online_event_resolves(infra):
    await ensure_topics(infra.kafka_bootstrap_servers)
    camera = new_camera()
    async with (
        EventPublisher(infra.kafka_bootstrap_servers) as publisher,
        alert_host(infra, MovableClock(), consume_camera_events=True) as host,
        alert_stub(host) as stub,
    ):
        offline = events_pb2.CameraEvent(
            event_id=str(uuid.uuid4()),
            camera_id=camera,
            offline=events_pb2.CameraOffline(reason=events_pb2.CAMERA_OFFLINE_REASON_STREAM_CLOSED),
        )
        offline.event_time.GetCurrentTime()
        await publisher.publish_and_wait(CAMERA_EVENTS_TOPIC, camera, offline, offline.event_id)
        await publisher.publish_and_wait(
            CAMERA_EVENTS_TOPIC, camera, offline, offline.event_id
        )  # redelivered

        async def fired():
            found = await _alerts(stub, camera)
            return found if found and found[0].status == common_pb2.ALERT_STATUS_FIRING else None

        [alert] = await _until(fired)
        assert alert.labels["kind"] == "camera_offline"
        assert alert.occurrence_count == 1  # the duplicate event was a replay
        assert alert.evidence.camera_event.event_id == offline.event_id

        online = events_pb2.CameraEvent(
            event_id=str(uuid.uuid4()), camera_id=camera, online=events_pb2.CameraOnline()
        )
        online.event_time.GetCurrentTime()
        await publisher.publish_and_wait(CAMERA_EVENTS_TOPIC, camera, online, online.event_id)

        async def resolved():
            found = await _alerts(stub, camera)
            return found if found and found[0].status == common_pb2.ALERT_STATUS_RESOLVED else None

        [done] = await _until(resolved)
        assert done.alert_id == alert.alert_id
        assert done.resolved_by == "auto"
