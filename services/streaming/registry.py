"""Camera registry operations: store the configuration, then publish CameraConfigChanged events."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from itsmesh.v1 import common_pb2, events_pb2
from mesh.events import CAMERA_EVENTS_TOPIC, EventPublisher
from services.streaming.store import CameraPage, CameraStore


class CameraRegistry:
    """The registry the gRPC front calls with already validated input."""

    def __init__(self, store: CameraStore, publisher: EventPublisher, instance_id: str) -> None:
        self.store = store
        self._publisher = publisher
        self._instance_id = instance_id

    async def register(self, camera: common_pb2.Camera, changed_by: str) -> common_pb2.Camera:
        """Store a new camera and announce it; raises store.CameraExists."""
        stored = await self.store.create(camera)
        await self._announce(events_pb2.CONFIG_CHANGE_TYPE_CREATED, stored, (), changed_by)
        return stored

    async def update(
        self, camera: common_pb2.Camera, etag: str, changed_fields: list[str], changed_by: str
    ) -> common_pb2.Camera:
        """Store the new configuration and announce it; raises CameraNotFound or StaleEtag."""
        stored = await self.store.replace(camera, etag)
        await self._announce(events_pb2.CONFIG_CHANGE_TYPE_UPDATED, stored, changed_fields, changed_by)
        return stored

    async def delete(self, camera_id: str, etag: str, changed_by: str) -> None:
        """Delete a camera and announce it with its last configuration."""
        last = await self.store.delete(camera_id, etag)
        await self._announce(events_pb2.CONFIG_CHANGE_TYPE_DELETED, last, (), changed_by)

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

    async def _announce(
        self,
        change_type: events_pb2.ConfigChangeType.ValueType,
        camera: common_pb2.Camera,
        changed_fields: Sequence[str],
        changed_by: str,
    ) -> None:
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
        await self._publisher.publish_and_wait(CAMERA_EVENTS_TOPIC, camera.camera_id, event)
