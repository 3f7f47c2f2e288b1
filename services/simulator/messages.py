"""Simulated frames as protobuf messages: the ``Frame`` a camera sends, and the ``CameraDetectionEvent``
streaming would publish for it (for tests that feed analytics without a streaming service).

Sequences sent are ``sequence_base`` plus the plan's; capture times are ``start_time`` plus scene time.
"""

from __future__ import annotations

from collections.abc import Iterator

from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2
from services.simulator.frames import SimFrame
from services.simulator.plan import CameraPlan


def detections(frame: SimFrame) -> list[common_pb2.Detection]:
    """The frame's reported (jittered) boxes as edge detections."""
    return [
        common_pb2.Detection(
            object_class=d.vehicle.kind.object_class,
            confidence=d.confidence,
            box=common_pb2.BoundingBox(
                left_px=d.box.left, top_px=d.box.top, width_px=d.box.width, height_px=d.box.height
            ),
        )
        for d in frame.detections
    ]


def frame_message(
    camera: CameraPlan, frame: SimFrame, jpeg: bytes, start_time: float, sequence_base: int
) -> streaming_pb2.Frame:
    """The StreamFrames ``Frame`` of a simulated frame."""
    message = streaming_pb2.Frame(
        sequence=sequence_base + frame.sequence,
        jpeg=jpeg,
        has_edge_detections=camera.frame_options.edge_detections,
        detections=detections(frame),
    )
    message.capture_time.FromNanoseconds(round((start_time + frame.t) * 1e9))
    return message


def detection_events(
    camera: CameraPlan, start_time: float, sequence_base: int = 0
) -> Iterator[events_pb2.CameraDetectionEvent]:
    """What streaming publishes for the camera's frames, in sending order, duplicates and disorder included
    (streaming itself would publish only first copies in increasing order; consumers must cope either way).
    Event ids are derived from camera and sequence, so a duplicate carries its original's id."""
    frames, _ = camera.frames()
    size = camera.registration.resolution
    source = (
        common_pb2.DETECTION_SOURCE_EDGE
        if camera.frame_options.edge_detections
        else common_pb2.DETECTION_SOURCE_NONE
    )
    for frame in frames:
        sequence = sequence_base + frame.sequence
        event = events_pb2.CameraDetectionEvent(
            event_id=f"{camera.camera_id}:{sequence}",
            camera_id=camera.camera_id,
            sequence=sequence,
            frame_size=common_pb2.ImageSize(width_px=size.width_px, height_px=size.height_px),
            detections=detections(frame),
            detection_source=source,
            camera_config_version=1,
        )
        event.capture_time.FromNanoseconds(round((start_time + frame.t) * 1e9))
        event.receive_time.CopyFrom(event.capture_time)
        yield event
