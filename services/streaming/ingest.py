"""The asyncio shell of StreamFrames: moves frames to Kafka and acks back, decisions left to AckWindow.

Per stream, three owned parts run until the stream ends:
- the reader takes requests, runs the cheap frame checks and hands each record to the producer (in
  sequence order, so Kafka acknowledges them in that order within the camera's partition);
- the settler waits for those acknowledgements, in order, and settles the frames in the window;
- the writer (the handler itself) sends the acks the window says are due, after recording the new
  high-water mark in PostgreSQL, so a frame is acknowledged only once its event is in Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2
from mesh.events import (
    CAMERA_DETECTIONS_TOPIC,
    CAMERA_DLQ_TOPIC,
    CAMERA_EVENTS_TOPIC,
    EventPublisher,
    PublishError,
)
from mesh.interceptors import current_principal
from mesh.status import StatusError, status_error
from services.streaming.detection import DEFAULT_DETECTION, DetectionSettings, MotionDetector, MovingObject
from services.streaming.frames import FrameLimits, Rejection, check_frame
from services.streaming.quality import (
    DEFAULT_THRESHOLDS,
    SAMPLE_EVERY_FRAMES,
    Degraded,
    Measurement,
    QualityThresholds,
    QualityTracker,
    measure_jpeg,
)
from services.streaming.stats import FrameCounters
from services.streaming.store import CameraNotFound, CameraStore
from services.streaming.thumbnails import INTERVAL_S, ThumbnailStore
from services.streaming.validation import ID_PATTERN
from services.streaming.window import Ack, AckWindow, CreditExceeded, Verdict

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Clock = Callable[[], float]

EVENT_NAMESPACE: Final = uuid.UUID("6f1c1f0e-8a5e-4c2b-9a53-2f1f6f0d6a11")
"""Namespace of the deterministic event ids: uuid5(namespace, "camera_id/sequence")."""


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """Per-stream limits of frame ingest."""

    window_frames: int = 128
    """Most frames a stream holds unsettled; also the initial credit."""
    max_frame_bytes: int = 2 * 1024 * 1024
    max_batch_frames: int = 32
    max_dlq_payload_bytes: int = 256 * 1024
    ack_delay_s: float = 0.002
    reconnect_after_s: float = 1.0
    backpressure_after_s: float = 0.5
    """A Kafka acknowledgement slower than this turns back-pressure on (no credit) until it arrives."""
    event_timeout_s: float = 5.0
    """How long online/offline events may take before they are given up (logged)."""
    quality_sample_every_frames: int = SAMPLE_EVERY_FRAMES
    """Every Nth accepted frame of a stream is decoded at reduced size for the image-quality checks."""
    quality_thresholds: QualityThresholds = DEFAULT_THRESHOLDS
    """When a sampled frame counts as degraded, and the hysteresis of degraded/restored events."""
    detection: DetectionSettings = DEFAULT_DETECTION
    """Server-side moving-vehicle detection on sampled frames of cameras without edge detection."""


def detection_event_id(camera_id: str, sequence: int) -> str:
    """The event id of a frame: the same for every publication of (camera, sequence)."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{camera_id}/{sequence}"))


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """What one open frame stream has done so far, for the status RPCs."""

    stream_id: str
    camera_id: str
    peer: str
    client_version: str
    open_time: datetime
    last_message_time: datetime | None
    last_frame_time: datetime | None
    """Capture time of the last durably acknowledged frame."""
    acked_through: int
    received: int
    accepted: int
    rejected: int
    duplicate: int
    in_flight: int
    credit: int
    backpressure: bool
    frames_per_second: float


@dataclass(frozen=True, slots=True)
class IngestSnapshot:
    """Counters of this instance since it started, for GetIngestStatus."""

    instance_id: str
    start_time: datetime
    frame_streams: int
    accepted: int
    rejected: int
    duplicate: int
    frames_per_second: float
    in_flight: int
    backpressure: bool
    kafka_started: bool


@dataclass(slots=True)
class _Pending:
    sequence: int
    acked: Awaitable[None]
    rejection: Rejection | None
    capture_time: datetime | None
    in_window: bool = True
    thumbnail: streaming_pb2.LatestFrame | None = None


class _StreamEnded(Exception):
    """Raised into a stream that must end (taken over, camera deleted)."""

    def __init__(self, error: StatusError) -> None:
        super().__init__(error.message)
        self.error = error


class FrameIngest:
    """Serves StreamFrames for every camera streaming to this instance."""

    def __init__(
        self,
        store: CameraStore,
        publisher: EventPublisher,
        instance_id: str,
        draining: asyncio.Event,
        limits: IngestLimits | None = None,
        *,
        thumbnails: ThumbnailStore | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._instance_id = instance_id
        self._draining = draining
        self.limits = limits or IngestLimits()
        self._clock = clock
        self._wall_clock = wall_clock
        self._live: dict[str, _Stream] = {}
        self._last_open: dict[str, datetime] = {}
        self.thumbnails = thumbnails
        self.totals = FrameCounters()
        self.start_time = datetime.fromtimestamp(wall_clock(), UTC)

    def stream_of(self, camera_id: str) -> StreamSnapshot | None:
        """The live stream of ``camera_id`` on this instance, if any."""
        stream = self._live.get(camera_id)
        return None if stream is None else stream.snapshot()

    def streams(self) -> list[StreamSnapshot]:
        """The live frame streams of this instance."""
        return [stream.snapshot() for stream in list(self._live.values())]

    def last_open_time(self, camera_id: str) -> datetime | None:
        """When the camera's current or last stream on this instance opened."""
        return self._last_open.get(camera_id)

    @property
    def instance_id(self) -> str:
        """Id of this streaming instance."""
        return self._instance_id

    def snapshot(self) -> IngestSnapshot:
        """Counters and back-pressure state of this instance."""
        live = list(self._live.values())
        totals = self.totals
        return IngestSnapshot(
            instance_id=self._instance_id,
            start_time=self.start_time,
            frame_streams=len(live),
            accepted=totals.accepted,
            rejected=totals.rejected,
            duplicate=totals.duplicate,
            frames_per_second=totals.accepted_rate.rate(self._clock()),
            in_flight=sum(stream.window.in_flight for stream in live),
            backpressure=any(stream.window.backpressure for stream in live),
            kafka_started=self._publisher.started,
        )

    async def end_camera(self, camera_id: str) -> None:
        """End the live stream of a deleted camera, if this instance holds it."""
        stream = self._live.get(camera_id)
        self._last_open.pop(camera_id, None)
        if stream is not None:
            stream.end(status_error(grpc.StatusCode.NOT_FOUND, f"camera {camera_id} was deleted"))

    async def serve(
        self, requests: AsyncIterator[streaming_pb2.StreamFramesRequest], context: Context
    ) -> None:
        """Run one StreamFrames call to its end; raises StatusError for the stream errors of the contract."""
        iterator = aiter(requests)
        first = await anext(iterator, None)
        if first is None or first.WhichOneof("message") != "open":
            raise status_error(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message of a frame stream must be `open`",
                field_violations={"open": "required as the first message"},
            )
        opening = first.open
        camera_id = opening.camera_id
        if not ID_PATTERN.match(camera_id):
            raise status_error(
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid open.camera_id",
                field_violations={"open.camera_id": "1-63 characters of [a-z0-9._-]"},
            )
        principal = current_principal()
        if principal is not None and principal.kind == "device" and principal.subject != camera_id:
            raise status_error(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this device token may not stream for camera {camera_id}",
                reason="DEVICE_MISMATCH",
            )
        try:
            camera = await self._store.get(camera_id)
        except CameraNotFound:
            raise status_error(
                grpc.StatusCode.NOT_FOUND, f"camera {camera_id} is not registered", reason="CAMERA_NOT_FOUND"
            ) from None
        if camera.disabled:
            raise status_error(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"camera {camera_id} is disabled",
                reason="CAMERA_DISABLED",
            )
        if self._draining.is_set():
            raise status_error(
                grpc.StatusCode.UNAVAILABLE, "this instance is shutting down", retry_delay_s=1.0
            )
        existing = self._live.get(camera_id)
        if existing is not None:
            if not opening.take_over:
                raise status_error(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"camera {camera_id} already has a live stream; set take_over to replace it",
                    reason="STREAM_EXISTS",
                )
            existing.end(
                status_error(grpc.StatusCode.ABORTED, "taken over by a newer stream", reason="TAKEN_OVER")
            )
            try:
                async with asyncio.timeout(self.limits.event_timeout_s):
                    await existing.finished.wait()  # its in-flight frames are settled and recorded first
            except TimeoutError:
                log.warning("taken-over stream did not finish in time", extra={"camera_id": camera_id})
        stream = _Stream(self, camera, opening, context)
        self._live[camera_id] = stream
        self._last_open[camera_id] = stream.open_time
        try:
            await stream.run(iterator)
        finally:
            if self._live.get(camera_id) is stream:
                del self._live[camera_id]

    def camera_event(self, camera: common_pb2.Camera, **kind: Message) -> events_pb2.CameraEvent:
        """A CameraEvent of ``camera`` from this instance, with ``kind`` (online=..., offline=..., ...)."""
        event = events_pb2.CameraEvent(
            event_id=str(uuid.uuid4()),
            camera_id=camera.camera_id,
            instance_id=self._instance_id,
            camera_labels=dict(camera.labels),
            **kind,  # type: ignore[arg-type]
        )
        event.event_time.FromDatetime(datetime.now(UTC))
        return event

    async def publish_camera_event(self, camera: common_pb2.Camera, **kind: Message) -> None:
        """Publish a CameraEvent (online/offline); failures are logged, never raised."""
        event = self.camera_event(camera, **kind)
        try:
            async with asyncio.timeout(self.limits.event_timeout_s):
                await self._publisher.publish_and_wait(CAMERA_EVENTS_TOPIC, camera.camera_id, event)
        except (PublishError, TimeoutError) as exc:
            log.warning(
                "camera event not published", extra={"camera_id": camera.camera_id, "error": str(exc)}
            )


class _Stream:
    """One open frame stream."""

    def __init__(
        self,
        ingest: FrameIngest,
        camera: common_pb2.Camera,
        opening: streaming_pb2.OpenFrameStream,
        context: Context,
    ) -> None:
        self._ingest = ingest
        self._camera = camera
        self._opening = opening
        self._context = context
        self.stream_id = str(uuid.uuid4())
        self.open_time = datetime.fromtimestamp(ingest._wall_clock(), UTC)
        self.counters = FrameCounters()
        self._last_message_time: datetime | None = None
        limits = ingest.limits
        self._limits = limits
        self._frame_limits = FrameLimits(
            width_px=camera.resolution.width_px,
            height_px=camera.resolution.height_px,
            max_frame_bytes=limits.max_frame_bytes,
        )
        self.window = AckWindow(window=limits.window_frames, ack_delay_s=limits.ack_delay_s)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._ended: StatusError | None = None
        self._previous_capture_s: float | None = None
        self._settled_capture: dict[int, datetime | None] = {}
        self._last_durable_capture: datetime | None = None
        self._durable = 0
        self._reader_done = False
        self.finished = asyncio.Event()
        self._next_thumbnail_at = float("-inf")
        self._quality = QualityTracker(limits.quality_thresholds, limits.quality_sample_every_frames)
        self._detector = None if camera.edge_detection else MotionDetector(limits.detection)

    def snapshot(self) -> StreamSnapshot:
        """What this stream has done so far."""
        counters, window = self.counters, self.window
        return StreamSnapshot(
            stream_id=self.stream_id,
            camera_id=self._camera.camera_id,
            peer=self._context.peer() or "",
            client_version=self._opening.client_version,
            open_time=self.open_time,
            last_message_time=self._last_message_time,
            last_frame_time=self._last_durable_capture,
            acked_through=self._durable,
            received=counters.received,
            accepted=counters.accepted,
            rejected=counters.rejected,
            duplicate=counters.duplicate,
            in_flight=window.in_flight,
            credit=window.credit,
            backpressure=window.backpressure,
            frames_per_second=counters.accepted_rate.rate(self._ingest._clock()),
        )

    def end(self, error: StatusError) -> None:
        """Make the stream end with ``error`` (taken over, camera deleted)."""
        self._ended = error
        self._changed.set()

    async def run(self, requests: AsyncIterator[streaming_pb2.StreamFramesRequest]) -> None:
        ingest, camera, clock = self._ingest, self._camera, self._ingest._clock
        durable, last_capture = await ingest._store.acked_through(camera.camera_id)
        if last_capture is not None:
            self._previous_capture_s = last_capture.timestamp()
        self._last_durable_capture, self._durable = last_capture, durable
        credit = self.window.open(durable, clock())
        await self._context.write(
            streaming_pb2.StreamFramesResponse(
                opened=streaming_pb2.FrameStreamOpened(
                    stream_id=self.stream_id,
                    acked_through_sequence=durable,
                    initial_credit=credit,
                    max_frame_bytes=self._limits.max_frame_bytes,
                    max_batch_frames=self._limits.max_batch_frames,
                    expected_resolution=camera.resolution,
                    instance_id=ingest._instance_id,
                )
            )
        )
        await ingest.publish_camera_event(
            camera,
            online=events_pb2.CameraOnline(
                stream_id=self.stream_id,
                peer=self._context.peer() or "",
                acked_through_sequence=durable,
                client_version=self._opening.client_version,
            ),
        )
        detail = "stream ended"
        reader = asyncio.create_task(self._read(requests), name=f"frames-reader-{self.stream_id}")
        settler = asyncio.create_task(self._settle(), name=f"frames-settler-{self.stream_id}")
        drain_wait = asyncio.create_task(ingest._draining.wait(), name=f"frames-drain-{self.stream_id}")
        drain_wait.add_done_callback(lambda _: self._changed.set())
        try:
            detail = await self._write(reader, settler, drain_wait)
        except StatusError as error:
            detail = error.message
            raise
        finally:
            for task in (reader, settler, drain_wait):
                task.cancel()
            await asyncio.gather(reader, settler, drain_wait, return_exceptions=True)
            self.window.close()
            offline = events_pb2.CameraOffline(
                stream_id=self.stream_id, acked_through_sequence=self._durable, detail=detail
            )
            if self._last_durable_capture is not None:
                offline.last_frame_time.FromDatetime(self._last_durable_capture)
            self.finished.set()
            await ingest.publish_camera_event(camera, offline=offline)

    async def _write(
        self, reader: asyncio.Task[None], settler: asyncio.Task[None], drain: asyncio.Task[Any]
    ) -> str:
        """Send due acks until the stream ends; returns why it ended."""
        window, clock = self.window, self._ingest._clock
        draining_sent = False
        while True:
            self._changed.clear()  # before looking, so a change made while we look wakes the wait below
            if self._ended is not None:
                # Taken over or deleted: read nothing more, but settle and record what is in flight so
                # the next stream starts from a high-water mark that covers every published frame.
                reader.cancel()
                if self._queue.empty() and not window.in_flight:
                    ack = window.take_ack(clock(), force=True)
                    if ack is not None:
                        await self._send(ack)
                    raise self._ended
            for task in (reader, settler):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    error = task.exception()
                    assert error is not None
                    raise error
            if drain.done() and not draining_sent:
                window.drain(clock())
                draining_sent = True
                await self._context.write(
                    streaming_pb2.StreamFramesResponse(
                        draining=streaming_pb2.StreamDraining(
                            reason="shutdown", reconnect_after=_duration(self._limits.reconnect_after_s)
                        )
                    )
                )
            finished = (self._reader_done or draining_sent) and self._queue.empty() and not window.in_flight
            ack = window.take_ack(clock(), force=finished)
            if ack is not None:
                await self._send(ack)
                continue
            if finished:
                if self._ended is not None:
                    raise self._ended
                return "drained" if draining_sent else "closed by the camera"
            deadline = window.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - clock())
            if timeout is None or timeout > 0:
                try:
                    async with asyncio.timeout(timeout):
                        await self._changed.wait()
                except TimeoutError:
                    pass

    async def _send(self, ack: Ack) -> None:
        if ack.acked_through > self._durable:
            settled = [s for s in self._settled_capture if s <= ack.acked_through]
            capture = self._settled_capture[max(settled)] if settled else self._last_durable_capture
            # Written before the ack leaves: a frame the camera saw acknowledged is never republished.
            await self._ingest._store.advance(self._camera.camera_id, ack.acked_through, capture)
            for sequence in settled:
                del self._settled_capture[sequence]
            self._last_durable_capture, self._durable = capture, ack.acked_through
        await self._context.write(
            streaming_pb2.StreamFramesResponse(
                ack=streaming_pb2.FrameAck(
                    acked_through_sequence=ack.acked_through,
                    rejections=[
                        streaming_pb2.FrameRejection(sequence=s, reason=r, detail=d)  # type: ignore[arg-type]
                        for s, r, d in ack.rejections
                    ],
                    duplicate_sequences=ack.duplicates,
                    credit_grant=ack.credit_grant,
                    backpressure=ack.backpressure,
                )
            )
        )

    async def _read(self, requests: AsyncIterator[streaming_pb2.StreamFramesRequest]) -> None:
        try:
            async for request in requests:
                self._last_message_time = datetime.fromtimestamp(self._ingest._wall_clock(), UTC)
                kind = request.WhichOneof("message")
                if kind == "frame":
                    await self._take(request.frame)
                elif kind == "batch":
                    frames = request.batch.frames
                    if len(frames) > self._limits.max_batch_frames:
                        raise status_error(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"a batch holds at most {self._limits.max_batch_frames} frames, "
                            f"got {len(frames)}",
                            reason="BATCH_TOO_LARGE",
                        )
                    for frame in frames:
                        await self._take(frame)
                else:
                    raise status_error(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "`open` may be sent only once; then frames or batches",
                        field_violations={"message": f"unexpected {kind or 'empty message'}"},
                    )
                self._changed.set()
        finally:
            self._reader_done = True
            self._changed.set()

    async def _take(self, frame: streaming_pb2.Frame) -> None:
        window, ingest = self.window, self._ingest
        now = ingest._clock()
        try:
            verdict = window.receive(frame.sequence, now)
        except CreditExceeded as exc:
            raise status_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; wait for credit", reason="CREDIT_EXCEEDED"
            ) from None
        self.counters.record_received()
        ingest.totals.record_received()
        if verdict is Verdict.DUPLICATE:
            self.counters.record_duplicate()
            ingest.totals.record_duplicate()
            return
        if verdict is Verdict.OUT_OF_ORDER:
            rejection = Rejection(
                common_pb2.FRAME_REJECT_REASON_SEQUENCE_OUT_OF_ORDER,
                f"sequence {frame.sequence} is not above {window.received_through}",
                "sequence",
            )
            window.reject_unpublished(frame.sequence, rejection.reason, rejection.detail, now)
            acked = await self._dead_letter(frame, rejection)
            self._queue.put_nowait(_Pending(frame.sequence, acked, rejection, None, in_window=False))
            return
        checked = check_frame(frame, self._frame_limits, ingest._wall_clock(), self._previous_capture_s)
        if isinstance(checked, Rejection):
            acked = await self._dead_letter(frame, checked)
            self._queue.put_nowait(_Pending(frame.sequence, acked, checked, None))
            return
        capture_s = frame.capture_time.seconds + frame.capture_time.nanos / 1e9
        self._previous_capture_s = capture_s
        inspection = await self._inspect(frame, checked.width_px, checked.height_px, capture_s)
        if frame.has_edge_detections:
            detections, source = list(frame.detections), common_pb2.DETECTION_SOURCE_EDGE
        elif inspection.detections is not None:
            detections, source = inspection.detections, common_pb2.DETECTION_SOURCE_SERVER
        else:
            detections, source = list(frame.detections), common_pb2.DETECTION_SOURCE_NONE
        event = events_pb2.CameraDetectionEvent(
            event_id=detection_event_id(self._camera.camera_id, frame.sequence),
            camera_id=self._camera.camera_id,
            sequence=frame.sequence,
            capture_time=frame.capture_time,
            frame_size=common_pb2.ImageSize(width_px=checked.width_px, height_px=checked.height_px),
            jpeg_size_bytes=len(frame.jpeg),
            detections=detections,
            detection_source=source,
            quality=inspection.quality,
            camera_config_version=self._camera.config_version,
            stream_id=self.stream_id,
            instance_id=ingest._instance_id,
        )
        event.receive_time.FromDatetime(datetime.now(UTC))
        acked = await self._publish(CAMERA_DETECTIONS_TOPIC, event)
        thumbnail = None
        if ingest.thumbnails is not None and now >= self._next_thumbnail_at:
            self._next_thumbnail_at = now + INTERVAL_S
            thumbnail = streaming_pb2.LatestFrame(
                camera_id=event.camera_id,
                sequence=event.sequence,
                capture_time=event.capture_time,
                jpeg=frame.jpeg,
                frame_size=event.frame_size,
                detections=event.detections,
                detection_source=event.detection_source,
                quality=event.quality,
            )
        self._queue.put_nowait(
            _Pending(frame.sequence, acked, None, frame.capture_time.ToDatetime(UTC), thumbnail=thumbnail)
        )
        if inspection.quality_event is not None:
            # Published after the frame's event and settled in the same order, outside the ack window.
            quality_acked = await self._publish(CAMERA_EVENTS_TOPIC, inspection.quality_event)
            self._queue.put_nowait(_Pending(frame.sequence, quality_acked, None, None, in_window=False))

    async def _inspect(
        self, frame: streaming_pb2.Frame, width_px: int, height_px: int, capture_s: float
    ) -> _Inspection:
        """Quality (and, without edge detections, server-side detections) of a sampled frame.

        A sampled frame that passed the cheap checks but does not decode stays accepted: its quality is
        recorded as not sampled and no detector runs.
        """
        tracker = self._quality
        if not tracker.should_sample():
            return _Inspection(common_pb2.FrameQuality(sampled=False))
        detector = None if frame.has_edge_detections else self._detector
        measured, moving = await asyncio.to_thread(
            _measure_and_detect, frame.jpeg, tracker, detector, width_px, height_px
        )
        if measured is None:
            return _Inspection(common_pb2.FrameQuality(sampled=False))
        detections = None
        if moving is not None:
            detections = [
                common_pb2.Detection(
                    object_class=common_pb2.OBJECT_CLASS_VEHICLE,
                    confidence=m.confidence,
                    box=common_pb2.BoundingBox(
                        left_px=m.left_px, top_px=m.top_px, width_px=m.width_px, height_px=m.height_px
                    ),
                )
                for m in moving
            ]
        quality = measured.to_proto()
        transition = tracker.observe(measured, frame.sequence, capture_s)
        if transition is None:
            return _Inspection(quality, detections=detections)
        ingest, camera_id = self._ingest, self._camera.camera_id
        if isinstance(transition, Degraded):
            degraded = events_pb2.CameraQualityDegraded(
                issues=transition.issues, quality=quality, sequence=transition.sequence
            )
            degraded.degraded_duration.CopyFrom(_duration(transition.degraded_for_s))
            log.info("camera quality degraded", extra={"camera_id": camera_id})
            event = ingest.camera_event(self._camera, quality_degraded=degraded)
        else:
            restored = events_pb2.CameraQualityRestored(
                cleared_issues=transition.cleared_issues, quality=quality, sequence=transition.sequence
            )
            log.info("camera quality restored", extra={"camera_id": camera_id})
            event = ingest.camera_event(self._camera, quality_restored=restored)
        return _Inspection(quality, event, detections)

    async def _dead_letter(self, frame: streaming_pb2.Frame, rejection: Rejection) -> Awaitable[None]:
        payload = frame.SerializeToString()
        limit = self._limits.max_dlq_payload_bytes
        letter = events_pb2.DeadLetter(
            event_id=str(uuid.uuid4()),
            source=events_pb2.DEAD_LETTER_SOURCE_CAMERA_FRAME,
            source_id=self._camera.camera_id,
            sequence=frame.sequence,
            frame_reject_reason=rejection.reason,
            reason_detail=rejection.detail,
            field=rejection.field,
            payload=payload[:limit],
            payload_type=streaming_pb2.Frame.DESCRIPTOR.full_name,
            payload_truncated=len(payload) > limit,
            payload_size_bytes=len(payload),
            stream_id=self.stream_id,
            peer=self._context.peer() or "",
            instance_id=self._ingest._instance_id,
        )
        letter.reject_time.FromDatetime(datetime.now(UTC))
        return await self._publish(CAMERA_DLQ_TOPIC, letter)

    async def _publish(self, topic: str, message: Message) -> Awaitable[None]:
        try:
            return await self._ingest._publisher.publish(topic, self._camera.camera_id, message)
        except PublishError as exc:
            raise _unavailable(exc) from exc

    async def _settle(self) -> None:
        window, clock = self.window, self._ingest._clock
        while True:
            pending = await self._queue.get()
            acked = asyncio.ensure_future(pending.acked)
            try:
                done, _ = await asyncio.wait({acked}, timeout=self._limits.backpressure_after_s)
                if not done:  # Kafka is slow: withhold credit until it answers again
                    window.set_backpressure(True, clock())
                    self._changed.set()
                    await acked
                    window.set_backpressure(False, clock())
                acked.result()
            except PublishError as exc:
                raise _unavailable(exc) from exc
            finally:
                acked.cancel()
            if pending.rejection is not None:
                self.counters.record_rejected()
                self._ingest.totals.record_rejected()
            elif pending.in_window:
                self.counters.record_accepted(clock())
                self._ingest.totals.record_accepted(clock())
            if pending.in_window:
                reason = (
                    None
                    if pending.rejection is None
                    else (int(pending.rejection.reason), pending.rejection.detail)
                )
                window.settle(pending.sequence, clock(), reason)
                if pending.capture_time is not None:
                    self._settled_capture[pending.sequence] = pending.capture_time
            if pending.thumbnail is not None and self._ingest.thumbnails is not None:
                await self._ingest.thumbnails.put(pending.thumbnail)  # only frames Kafka has
            self._changed.set()


@dataclass(frozen=True, slots=True)
class _Inspection:
    quality: common_pb2.FrameQuality
    quality_event: events_pb2.CameraEvent | None = None
    detections: list[common_pb2.Detection] | None = None
    """Server-side detections; None when the detector did not run on this frame."""


def _measure_and_detect(
    jpeg: bytes,
    tracker: QualityTracker,
    detector: MotionDetector | None,
    width_px: int,
    height_px: int,
) -> tuple[Measurement | None, list[MovingObject] | None]:
    """Decode once at reduced size for both the quality checks and the detector; runs in a worker thread."""
    measured = measure_jpeg(jpeg, tracker.previous, tracker.thresholds)
    if measured is None or detector is None:
        return measured, None
    return measured, detector.detect(measured.image, width_px, height_px)


def _unavailable(exc: Exception) -> StatusError:
    return status_error(
        grpc.StatusCode.UNAVAILABLE,
        f"Kafka did not acknowledge: {exc}; reconnect and resume",
        retry_delay_s=1.0,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value
