"""Consumes camera.events.v1 and raises or resolves camera alerts; commits only after they are stored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError

from itsmesh.v1 import events_pb2
from mesh.events import CAMERA_EVENTS_TOPIC
from services.alert.camera_events import raise_for_event
from services.alert.routing_source import Clock
from services.alert.store import RaiseInput

log = logging.getLogger(__name__)

GROUP_ID = "alert"
RETRY_S = 1.0


async def consume_camera_events(
    bootstrap_servers: str, apply: Callable[[RaiseInput], Awaitable[object]], clock: Clock
) -> None:
    """Run until cancelled; reconnects when the broker goes away."""
    while True:
        consumer = AIOKafkaConsumer(
            CAMERA_EVENTS_TOPIC,
            bootstrap_servers=bootstrap_servers,
            group_id=GROUP_ID,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        try:
                            event = events_pb2.CameraEvent.FromString(record.value or b"")
                        except DecodeError:
                            log.warning("undecodable camera event skipped", extra={"offset": record.offset})
                            continue
                        raised = raise_for_event(event, clock())
                        if raised is not None:
                            await apply(raised)
                if batches:
                    await consumer.commit()
        except KafkaError as exc:
            log.warning("camera event consumer lost the broker; reconnecting", extra={"error": str(exc)})
        except Exception:  # e.g. the database is down: nothing was committed, so the events come again
            log.exception("camera event not applied; consuming again from the last commit")
        finally:
            await consumer.stop()
        await asyncio.sleep(RETRY_S)
