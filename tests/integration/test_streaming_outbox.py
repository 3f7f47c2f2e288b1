"""Config-changed events via the registry outbox: committed with the change, published once Kafka answers."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from google.protobuf import field_mask_pb2

from infrastructure.embedded import EmbeddedInfra, free_ports
from itsmesh.v1 import events_pb2, streaming_pb2
from mesh.events import CAMERA_EVENTS_TOPIC
from services.streaming.outbox import RelaySettings
from services.streaming.store import Outbox
from tests.integration.streaming_host import camera, records, streaming_host, stub

pytestmark = pytest.mark.integration

FAST = RelaySettings(poll_s=0.3, publish_timeout_s=1.0, retry_s=0.2, publish_wait_s=1.0)
UPDATED = events_pb2.CONFIG_CHANGE_TYPE_UPDATED
CREATED = events_pb2.CONFIG_CHANGE_TYPE_CREATED


def _changes(found) -> list[events_pb2.CameraConfigChanged]:
    events = [events_pb2.CameraEvent.FromString(r.value) for r in found]
    return [e.config_changed for e in events if e.WhichOneof("kind") == "config_changed"]


async def _published(pg, event_camera_id: str) -> list[bool]:
    """Whether each outbox row of the camera is published, oldest first."""
    rows = await pg.fetch(
        "SELECT published_at FROM streaming.outbox WHERE key = $1 ORDER BY id", event_camera_id
    )
    return [row["published_at"] is not None for row in rows]


async def test_an_update_while_the_broker_is_frozen_is_published_after_it_returns(infra, pg, tmp_path):
    shared = {"DATABASE_URL": infra.database_url, "REDIS_URL": infra.redis_url}
    launcher = EmbeddedInfra(tmp_path, ports=free_ports(), env=shared)
    async with launcher as private, streaming_host(private, relay=FAST) as host, stub(host) as client:
        new = camera()
        created = await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new))
        bootstrap = private.kafka_bootstrap_servers
        found = await records(bootstrap, CAMERA_EVENTS_TOPIC, new.camera_id, lambda f: len(f) >= 1)
        assert [c.change_type for c in _changes(found)] == [CREATED]
        pid = launcher.pids()["kafka"]
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            change = streaming_pb2.UpdateCameraRequest(
                camera=camera(new.camera_id, name="renamed while Kafka is frozen", etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            )
            updated = await client.UpdateCamera(change, timeout=10)
            assert time.monotonic() - started < 5  # waits publish_wait_s for Kafka at most, then returns
            assert updated.config_version == 2
            await asyncio.sleep(1.5)  # the relay tries, times out and retries meanwhile
            assert await _published(pg, new.camera_id) == [True, False]
        finally:
            os.kill(pid, signal.SIGCONT)
        found = await records(bootstrap, CAMERA_EVENTS_TOPIC, new.camera_id, lambda f: len(_changes(f)) >= 2)
        changes = _changes(found)
        assert [c.change_type for c in changes][:2] == [CREATED, UPDATED]
        assert changes[1].camera.name == "renamed while Kafka is frozen"
        assert changes[1].camera.config_version == 2
        # At least once; a batch that timed out may go out again, always with the same event id.
        events = {events_pb2.CameraEvent.FromString(r.value).event_id for r in found}
        assert len(events) == 2
        deadline = time.monotonic() + 10
        while await _published(pg, new.camera_id) != [True, True]:
            assert time.monotonic() < deadline, "the row was never marked published"
            await asyncio.sleep(0.1)


async def test_a_change_made_without_any_broker_is_published_by_another_instance(infra, pg, kafka_bootstrap):
    async with (
        streaming_host(
            infra, relay=FAST, kafka_bootstrap_servers="127.0.0.1:1", wait_for_kafka=False
        ) as offline,
        stub(offline) as client,
    ):
        new = camera()
        await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new), timeout=10)
        await asyncio.sleep(0.5)
        assert await _published(pg, new.camera_id) == [False]
    async with streaming_host(infra, relay=FAST):
        found = await records(kafka_bootstrap, CAMERA_EVENTS_TOPIC, new.camera_id, lambda f: len(f) >= 1)
    changes = _changes(found)
    assert [c.change_type for c in changes] == [CREATED]
    assert changes[0].camera.camera_id == new.camera_id
    assert await _published(pg, new.camera_id) == [True]
    assert await Outbox(pg).prune(0.0) >= 1  # published rows older than the retention are deleted
    assert await _published(pg, new.camera_id) == []
