"""Frames from a camera over StreamFrames: buffered, sent within credit, resumed from the server's mark.

On every (re)open the server reports the camera's durable acknowledged-through sequence; buffered frames
up to it are settled at once and only later ones are sent again. The server recognises a frame it
already has as a duplicate, so resending is always safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from itsmesh.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.edge.buffer import PendingBuffer
from mesh.edge.stream import Metadata, Outcome, ResultHook, ResumableStream, TokenSource


@dataclass(frozen=True, slots=True)
class Frame:
    """One camera frame before it is sent."""

    jpeg: bytes
    capture_time: float | None = None
    """Unix seconds; None = now."""
    detections: Sequence[common_pb2.Detection] = ()
    has_edge_detections: bool = False
    """True when the camera's own detector ran on this frame (even if it found nothing)."""
    sequence: int | None = None
    """Strictly increasing per camera; None = the next one."""


class CameraStream(ResumableStream):
    """StreamFrames for one camera; create it with ``EdgeSession.camera()``."""

    def __init__(
        self,
        stub: streaming_pb2_grpc.StreamingServiceStub,
        token: TokenSource | None,
        camera_id: str,
        buffer: PendingBuffer,
        *,
        client_version: str,
        on_result: ResultHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(stub, token, buffer, client_version=client_version, on_result=on_result, clock=clock)
        self.camera_id = camera_id
        self._rejections: dict[int, tuple[str, str, str]] = {}
        self._duplicates: set[int] = set()

    async def send(self, frame: Frame | streaming_pb2.Frame) -> int:
        """Buffer ``frame`` for sending (waits while the buffer is full); returns its sequence."""
        if isinstance(frame, Frame):
            message = streaming_pb2.Frame(
                jpeg=frame.jpeg,
                detections=list(frame.detections),
                has_edge_detections=frame.has_edge_detections,
                sequence=frame.sequence or 0,
            )
            taken = frame.capture_time if frame.capture_time is not None else self._clock()
            message.capture_time.FromNanoseconds(round(taken * 1e9))
        else:
            message = frame
        if not message.sequence:
            message.sequence = self._next_sequence()
        await self._enqueue(message.sequence, message.SerializeToString())
        return message.sequence

    def _call(self, metadata: Metadata) -> Any:
        return self._stub.StreamFrames(metadata=metadata)  # type: ignore[call-arg]  # reader/writer style

    def _open_request(self) -> streaming_pb2.StreamFramesRequest:
        pending = self._buffer.sequences()
        return streaming_pb2.StreamFramesRequest(
            open=streaming_pb2.OpenFrameStream(
                camera_id=self.camera_id,
                resume_from_sequence=pending[0] if pending else 0,
                take_over=True,  # our previous stream may not have ended on the server yet
                client_version=self._client_version,
            )
        )

    def _opened(self, response: streaming_pb2.StreamFramesResponse) -> None:
        if response.WhichOneof("message") != "opened":
            raise ConnectionError("the server did not open the frame stream")
        opened = response.opened
        self._max_batch = max(1, opened.max_batch_frames)
        self._settle_through(opened.acked_through_sequence)
        self._grant(opened.initial_credit)

    def _batch_request(self, items: Sequence[tuple[int, bytes]]) -> streaming_pb2.StreamFramesRequest:
        frames = [streaming_pb2.Frame.FromString(payload) for _, payload in items]
        if len(frames) == 1:
            return streaming_pb2.StreamFramesRequest(frame=frames[0])
        return streaming_pb2.StreamFramesRequest(batch=streaming_pb2.FrameBatch(frames=frames))

    def _acknowledged(self, ack: streaming_pb2.FrameAck) -> None:
        for rejection in ack.rejections:
            reason = common_pb2.FrameRejectReason.Name(rejection.reason)
            self._rejections[rejection.sequence] = (reason, "", rejection.detail)
        self._duplicates.update(ack.duplicate_sequences)
        self._settle_through(ack.acked_through_sequence)
        self._grant(ack.credit_grant)

    def _settle_through(self, through: int) -> None:
        for sequence in self._buffer.sequences():
            if sequence > through:
                break
            rejected = self._rejections.pop(sequence, None)
            if rejected is not None:
                self._settle(sequence, Outcome.REJECTED, *rejected)
            elif sequence in self._duplicates:
                self._settle(sequence, Outcome.DUPLICATE)
            else:
                self._settle(sequence, Outcome.ACCEPTED)
        self._duplicates = {s for s in self._duplicates if s > through}
        self._rejections = {s: r for s, r in self._rejections.items() if s > through}
