"""Camera configurations for the pipelines: fetched from the streaming service's registry over the mesh
(GetCamera), cached, and replaced by the full configuration that config-changed events carry."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any, Final

import grpc
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError

from itsmesh.v1 import events_pb2, streaming_pb2
from mesh.events import CAMERA_EVENTS_TOPIC
from services.analytics.camera_config import CameraConfig, camera_config_from_proto

log = logging.getLogger(__name__)

GET_CAMERA_TIMEOUT_S: Final = 5.0
RETRY_S: Final = 1.0


class CameraUnavailableError(Exception):
    """The registry could not be asked (streaming down): the records must be consumed again later."""

    retriable = True


class CameraConfigs:
    """Latest known configuration per camera; ``get`` asks the registry when it has none or an older one.

    ``stub`` is a StreamingService stub (through the mesh client). ``on_change`` is told of every
    configuration that replaced a cached one, so the owner can reconfigure that camera's pipeline.
    """

    def __init__(self, stub: Any, on_change: Callable[[CameraConfig], None] | None = None) -> None:
        self._stub = stub
        self._configs: dict[str, CameraConfig] = {}
        self._deleted: set[str] = set()
        self.on_change = on_change

    def cached(self, camera_id: str) -> CameraConfig | None:
        """The cached configuration, without asking anyone."""
        return self._configs.get(camera_id)

    async def get(self, camera_id: str, min_version: int = 0) -> CameraConfig | None:
        """The camera's configuration at least at ``min_version``; None when the camera does not exist.

        Raises ``CameraUnavailableError`` when the registry cannot be reached.
        """
        config = self._configs.get(camera_id)
        if config is not None and config.config_version >= min_version:
            return config
        if config is None and camera_id in self._deleted and min_version == 0:
            return None
        try:
            camera = await self._stub.GetCamera(
                streaming_pb2.GetCameraRequest(camera_id=camera_id), timeout=GET_CAMERA_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._deleted.add(camera_id)
                self._configs.pop(camera_id, None)
                return None
            raise CameraUnavailableError(f"GetCamera({camera_id}) failed: {exc.code().name}") from exc
        return self.put(camera_config_from_proto(camera))

    def put(self, config: CameraConfig) -> CameraConfig:
        """Cache ``config`` unless a newer one is cached; returns the configuration in force."""
        current = self._configs.get(config.camera_id)
        if current is not None and current.config_version >= config.config_version:
            return current
        self._configs[config.camera_id] = config
        self._deleted.discard(config.camera_id)
        if current is not None and self.on_change is not None:
            self.on_change(config)
        return config

    def apply_event(self, event: events_pb2.CameraEvent) -> None:
        """Take in a camera.events.v1 event; only config changes matter here."""
        if event.WhichOneof("kind") != "config_changed":
            return
        change = event.config_changed
        if change.change_type == events_pb2.CONFIG_CHANGE_TYPE_DELETED:
            self._configs.pop(event.camera_id, None)
            self._deleted.add(event.camera_id)
            return
        self.put(camera_config_from_proto(change.camera))

    async def follow(self, bootstrap_servers: str, topic: str = CAMERA_EVENTS_TOPIC) -> None:
        """Apply config-changed events until cancelled.

        Every instance reads every partition from the newest record (no consumer group): any instance may
        own any camera's detections, and a configuration missed while down is fetched on demand because
        frames carry the version they were accepted with.
        """
        while True:
            consumer = AIOKafkaConsumer(
                topic,
                bootstrap_servers=bootstrap_servers,
                group_id=None,
                client_id=f"analytics-config-{uuid.uuid4().hex[:8]}",
                auto_offset_reset="latest",
            )
            try:
                await consumer.start()
                async for record in consumer:
                    try:
                        self.apply_event(events_pb2.CameraEvent.FromString(record.value or b""))
                    except DecodeError:
                        log.warning("undecodable camera event skipped", extra={"offset": record.offset})
            except KafkaError as exc:
                log.warning("camera event follower lost the broker", extra={"error": str(exc)})
            finally:
                await consumer.stop()
            await asyncio.sleep(RETRY_S)
