"""Camera registry operations: each change commits with its CameraConfigChanged event (outbox)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from itsmesh.v1 import common_pb2, events_pb2
from mesh.events import CAMERA_EVENTS_TOPIC
from services.streaming.outbox import OutboxRelay
from services.streaming.store import Announce, CameraPage, CameraStore, OutboxEvent


class CameraRegistry:
    """The registry the gRPC front calls with already validated input."""

    def __init__(self, store: CameraStore, relay: OutboxRelay, instance_id: str) -> None:
        self.store = store
        self._relay = relay
        self._instance_id = instance_id

    async def register(self, camera: common_pb2.Camera, changed_by: str) -> common_pb2.Camera:
        """Store a new camera with its announcement; raises store.CameraExists."""
        stored, row_id = await self.store.create(
            camera, self._announce(events_pb2.CONFIG_CHANGE_TYPE_CREATED, (), changed_by)
        )
        await self._relay.published(row_id)
        return stored

    async def update(
        self, camera: common_pb2.Camera, etag: str, changed_fields: list[str], changed_by: str
    ) -> common_pb2.Camera:
        """Store the new configuration with its announcement; raises CameraNotFound or StaleEtag."""
        stored, row_id = await self.store.replace(
            camera, etag, self._announce(events_pb2.CONFIG_CHANGE_TYPE_UPDATED, changed_fields, changed_by)
        )
        await self._relay.published(row_id)
        return stored

    async def delete(self, camera_id: str, etag: str, changed_by: str) -> None:
        """Delete a camera, announced with its last configuration."""
        _, row_id = await self.store.delete(
            camera_id, etag, self._announce(events_pb2.CONFIG_CHANGE_TYPE_DELETED, (), changed_by)
        )
        await self._relay.published(row_id)

    async def get(self, camera_id: str) -> common_pb2.Camera:
        """One camera; raises CameraNotFound."""
        return await self.store.get(camera_id)

    async def list(
        self, *, after: str, limit: int, labels: Mapping[str, str], include_disabled: bool
    ) -> CameraPage:
        """A page of cameras."""
        return await self.store.list(
            after=after, limit=limit, labels=labels, include_disabled=include_disabled
        )

    async def count(self) -> int:
        """Registered cameras."""
        return await self.store.count()

    def _announce(
        self,
        change_type: events_pb2.ConfigChangeType.ValueType,
        changed_fields: Sequence[str],
        changed_by: str,
    ) -> Announce:
        """The builder of the change's event from the camera as stored."""
        return lambda camera: self._event(change_type, camera, changed_fields, changed_by)

    def _event(
        self,
        change_type: events_pb2.ConfigChangeType.ValueType,
        camera: common_pb2.Camera,
        changed_fields: Sequence[str],
        changed_by: str,
    ) -> OutboxEvent:
        event = events_pb2.CameraEvent(
            event_id=str(uuid.uuid4()),
            camera_id=camera.camera_id,
            instance_id=self._instance_id,
            camera_labels=dict(camera.labels),
            config_changed=events_pb2.CameraConfigChanged(
                change_type=change_type,
                camera=camera,
                changed_fields=list(changed_fields),
                changed_by=changed_by,
            ),
        )
        event.event_time.FromDatetime(datetime.now(UTC))
        return OutboxEvent(CAMERA_EVENTS_TOPIC, camera.camera_id, event.event_id, event.SerializeToString())
