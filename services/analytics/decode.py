"""Protos → domain values of the pipeline: a ``camera.detections.v1`` event as a DetectionFrame."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from services.analytics.camera_config import object_class_label
from services.analytics.model import Box, DetectionFrame


def detection_frame_from_event(event: Any) -> DetectionFrame:
    """An ``events_pb2.CameraDetectionEvent`` as a DetectionFrame (boxes as corner coordinates)."""
    boxes = tuple(
        Box(
            x1=d.box.left_px,
            y1=d.box.top_px,
            x2=d.box.left_px + d.box.width_px,
            y2=d.box.top_px + d.box.height_px,
            object_class=object_class_label(d.object_class),
            confidence=float(d.confidence),
        )
        for d in event.detections
    )
    return DetectionFrame(
        camera_id=event.camera_id,
        sequence=int(event.sequence),
        capture_time=event.capture_time.ToDatetime(UTC),
        boxes=boxes,
        event_id=event.event_id,
        config_version=int(event.camera_config_version),
    )
