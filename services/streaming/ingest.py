"""The asyncio shell of StreamFrames: moves frames to Kafka and acks back, decisions left to AckWindow.

Per stream, these owned parts run until the stream ends:
- the pump reads requests into a small bounded inbox, so the reader sees which messages arrived together;
- the reader takes them, runs the cheap frame checks and hands the records to the producer in sequence
  order (so Kafka acknowledges them in that order within the camera's partition): the accepted frames of
  a batch, and single frames reaching the inbox within HOLD_TURNS more loop turns, go as one
  ``publish_many`` (one span, one send loop); a sampled frame is decoded in a worker thread meanwhile,
  and the records after it wait for it in the publisher queue, published together there, so reading
  never waits for a decode;
- the settler waits for those acknowledgements, in order, and settles the frames in the window;
- the writer (the handler itself) sends the acks the window says are due, after recording the new
  high-water mark in PostgreSQL, so a frame is acknowledged only once its event is in Kafka;
- the status keeper renews the stream's entry in the cluster view (live_status) every second.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from redis.exceptions import RedisError

from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2
from mesh.events import (
    CAMERA_DETECTIONS_TOPIC,
    CAMERA_DLQ_TOPIC,
    CAMERA_EVENTS_TOPIC,
    Acknowledgement,
    EventPublisher,
    PublishError,
)
from mesh.interceptors import current_principal
from mesh.pg_pool import DATABASE_DOWN
from mesh.status import StatusError, status_error
from mesh.tasks import stop_task
from services.streaming.detection import DEFAULT_DETECTION, DetectionSettings, MotionDetector, MovingObject
from services.streaming.event_ids import uuid5_text
from services.streaming.frames import FrameLimits, Rejection, check_frame
from services.streaming.live_status import LEASE_S, REFRESH_S, LiveStatusStore, Renewal, offline_status
from services.streaming.quality import (
    DEFAULT_THRESHOLDS,
    MIN_SAMPLE_INTERVAL_S,
    SAMPLE_EVERY_FRAMES,
    Degraded,
    Measurement,
    QualityThresholds,
    QualityTracker,
    measure_jpeg,
)
from services.streaming.stats import FrameCounters, LatencyWindow
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
    quality_min_sample_interval_s: float = MIN_SAMPLE_INTERVAL_S
    """...but samples of a stream are at least this far apart (arrival time), so a camera sending a
    backlog at thousands of frames/s is decoded no more often than a live one."""
    quality_thresholds: QualityThresholds = DEFAULT_THRESHOLDS
    """When a sampled frame counts as degraded, and the hysteresis of degraded/restored events."""
    detection: DetectionSettings = DEFAULT_DETECTION
    """Server-side moving-vehicle detection on sampled frames of cameras without edge detection."""
    config_check_s: float = 5.0
    """How often a stream re-reads its camera: a change made on any instance applies within this long,
    and a camera disabled or deleted meanwhile ends the stream."""


INBOX_MESSAGES: Final = 64
"""Most stream messages read ahead of the one being handled (bounded: gRPC flow control holds the rest)."""

HOLD_TURNS: Final = 2
"""Loop turns the reader waits for more messages before it publishes its run of accepted frames. A message
takes two turns from grpc to the inbox (grpc's completion callback wakes the pump, which then queues it),
so a one-turn wait just misses it; with two, the run grows under load (at most ``max_batch_frames``)
instead of paying a Kafka send loop and span every two or three frames. An idle stream's frame waits
only these turns."""


_NAMESPACE_BYTES: Final = EVENT_NAMESPACE.bytes


def detection_event_id(camera_id: str, sequence: int) -> str:
    """The event id of a frame: the same for every publication of (camera, sequence)."""
    return uuid5_text(_NAMESPACE_BYTES, f"{camera_id}/{sequence}")


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
    instance_id: str = ""
    last_quality: common_pb2.FrameQuality | None = None
    """The latest sampled quality measurement of the stream."""
    active_issues: tuple[common_pb2.QualityIssue.ValueType, ...] = ()
    ack_latency_ms: tuple[float, float] = (0.0, 0.0)
    """Receive → Kafka-acked latency (p50, p99) over the last 10 s."""

    def camera_status(self) -> streaming_pb2.CameraStatus:
        """The camera's status while this stream is live."""
        status = streaming_pb2.CameraStatus(
            camera_id=self.camera_id,
            state=streaming_pb2.CAMERA_CONNECTION_STATE_ONLINE,
            stream_id=self.stream_id,
            instance_id=self.instance_id,
            connect_time=timestamp(self.open_time),
            acked_through_sequence=self.acked_through,
            frames_per_second=self.frames_per_second,
            frames_accepted=self.accepted,
            frames_rejected=self.rejected,
            frames_duplicate=self.duplicate,
            active_issues=self.active_issues,
            ack_latency_p50_ms=self.ack_latency_ms[0],
            ack_latency_p99_ms=self.ack_latency_ms[1],
        )
        if self.last_frame_time is not None:
            status.last_frame_time.CopyFrom(timestamp(self.last_frame_time))
        if self.last_quality is not None:
            status.last_quality.CopyFrom(self.last_quality)
        return status

    def offline_status(self) -> streaming_pb2.CameraStatus:
        """The camera's status once this stream has ended: no stream, counters or rates, quality kept."""
        return offline_status(self.camera_status())

    def stream_info(self) -> streaming_pb2.StreamInfo:
        """The stream as ListStreams shows it."""
        info = streaming_pb2.StreamInfo(
            stream_id=self.stream_id,
            kind=streaming_pb2.STREAM_KIND_FRAMES,
            source_id=self.camera_id,
            peer=self.peer,
            open_time=timestamp(self.open_time),
            items_received=self.received,
            items_accepted=self.accepted,
            items_rejected=self.rejected,
            items_duplicate=self.duplicate,
            items_in_flight=self.in_flight,
            credit_available=self.credit,
            acked_through_sequence=self.acked_through,
            client_version=self.client_version,
            instance_id=self.instance_id,
        )
        if self.last_message_time is not None:
            info.last_message_time.CopyFrom(timestamp(self.last_message_time))
        return info


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
    capture_time: timestamp_pb2.Timestamp | None
    """Converted only for the ack that covers the frame (most frames never need it as a datetime)."""
    in_window: bool = True
    thumbnail: streaming_pb2.LatestFrame | None = None
    received_at: float | None = None
    """Monotonic time the frame arrived, for the ack latency of accepted frames."""


@dataclass(frozen=True, slots=True)
class _Arrival:
    """When an accepted frame's message arrived, and whether the frame becomes the thumbnail."""

    now: float
    """Monotonic time."""
    received_s: float
    """Unix time."""
    thumbnail: bool
    jpeg_size_bytes: int


@dataclass(frozen=True, slots=True)
class _Described:
    """The event of an accepted frame, built but not yet published."""

    event: events_pb2.CameraDetectionEvent
    thumbnail: streaming_pb2.LatestFrame | None
    received_at: float

    def pending(self, acked: Awaitable[None]) -> _Pending:
        """The frame waiting for ``acked``; its capture time is read only when it settles."""
        event = self.event
        return _Pending(
            event.sequence,
            acked,
            None,
            event.capture_time,
            thumbnail=self.thumbnail,
            received_at=self.received_at,
        )


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
        live: LiveStatusStore | None = None,
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
        self.live = live
        """The cluster view of streams in Redis; None runs this instance on its own view."""
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
        try:
            first = await anext(iterator, None)
        except DecodeError as exc:
            raise _unparsable() from exc
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
                status_error(grpc.StatusCode.ABORTED, "taken over by a newer stream", reason="TAKEN_OVER"),
                taken_over=True,
            )
            try:
                async with asyncio.timeout(self.limits.event_timeout_s):
                    await existing.finished.wait()  # its in-flight frames are settled and recorded first
            except TimeoutError:
                log.warning("taken-over stream did not finish in time", extra={"camera_id": camera_id})
        stream = _Stream(self, camera, opening, context)
        await self._claim(stream, take_over=opening.take_over)
        self._live[camera_id] = stream
        self._last_open[camera_id] = stream.open_time
        try:
            await stream.run(iterator)
        finally:
            if self._live.get(camera_id) is stream:
                del self._live[camera_id]

    async def _claim(self, stream: _Stream, *, take_over: bool) -> None:
        """Claim the camera cluster-wide: ALREADY_EXISTS while another instance streams it (no take_over).

        Without Redis the claim is skipped (logged): one stream per camera then holds per instance only.
        """
        if self.live is None:
            return
        snapshot = stream.snapshot()
        try:
            holder = await self.live.claim(
                self._instance_id, snapshot.camera_status(), snapshot.stream_info(), take_over=take_over
            )
        except (RedisError, OSError) as exc:
            log.warning(
                "stream not claimed in Redis", extra={"camera_id": snapshot.camera_id, "error": str(exc)}
            )
            return
        if holder is not None:
            raise status_error(
                grpc.StatusCode.ALREADY_EXISTS,
                f"camera {snapshot.camera_id} already has a live stream on instance {holder}; "
                "set take_over to replace it",
                reason="STREAM_EXISTS",
                retry_delay_s=LEASE_S,
            )

    async def report_lapsed_streams(self) -> None:
        """Announce offline the cameras whose instance stopped renewing their lease (it died).

        Runs until cancelled on every instance; Redis hands each lapsed camera to exactly one of them.
        """
        live = self.live
        if live is None:
            return
        failing = False
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                for status in await live.take_lapsed():
                    await self._report_lapsed(live, status)
            except (RedisError, OSError, asyncpg.PostgresError) as exc:
                if not failing:  # once per outage
                    log.warning("lapsed streams not checked", extra={"error": str(exc)})
                failing = True
                continue
            failing = False

    async def _report_lapsed(self, live: LiveStatusStore, status: streaming_pb2.CameraStatus) -> None:
        if not await live.release(status.stream_id, offline_status(status)):
            return  # the camera reconnected meanwhile: it is not offline
        try:
            camera = await self._store.get(status.camera_id)
        except CameraNotFound:
            return
        offline = events_pb2.CameraOffline(
            stream_id=status.stream_id,
            reason=events_pb2.CAMERA_OFFLINE_REASON_LEASE_EXPIRED,
            acked_through_sequence=status.acked_through_sequence,
            detail=f"instance {status.instance_id} stopped renewing the stream's lease",
        )
        if status.HasField("last_frame_time"):
            offline.last_frame_time.CopyFrom(status.last_frame_time)
        log.info("stream lease lapsed", extra={"camera_id": status.camera_id})
        await self.publish_camera_event(camera, offline=offline)

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
        # read once while the call is surely alive: the status task may still ask after the call ended,
        # and grpc's peer() on a finished call can crash the process
        self._peer = context.peer() or ""
        self.stream_id = str(uuid.uuid4())
        self._template = self._event_template(camera)
        self.open_time = datetime.fromtimestamp(ingest._wall_clock(), UTC)
        self.counters = FrameCounters()
        self._last_message_s: float | None = None
        self._message_s = 0.0
        """Unix time the message being handled arrived."""
        self._message_at = 0.0
        """Monotonic time the message being handled arrived."""
        limits = ingest.limits
        self._limits = limits
        self._frame_limits = FrameLimits(
            width_px=camera.resolution.width_px,
            height_px=camera.resolution.height_px,
            max_frame_bytes=limits.max_frame_bytes,
        )
        self.window = AckWindow(window=limits.window_frames, ack_delay_s=limits.ack_delay_s)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._run: list[_Described] = []
        """Accepted frames whose events are built, published together before the reader next waits."""
        self._jobs: asyncio.Queue[Coroutine[Any, Any, None] | _Described] = asyncio.Queue()
        """Publications waiting behind a sampled frame's decode; at most one window of frames."""
        self._publishing = False
        self._last_inspection: asyncio.Task[_Inspection] | None = None
        self._inspections: set[asyncio.Task[_Inspection]] = set()
        self._changed = asyncio.Event()
        self._writer_sleeps_until: float | None = None
        """Until when the writer sleeps (inf: until woken); None while it is awake."""
        self._ended: StatusError | None = None
        self._taken_over = False
        self._previous_capture_s: float | None = None
        self._settled_capture: dict[int, timestamp_pb2.Timestamp] = {}
        self._last_durable_capture: datetime | None = None
        self._durable = 0
        self._reader_done = False
        self.finished = asyncio.Event()
        self._next_thumbnail_at = float("-inf")
        self._thumbnailer: asyncio.Task[None] | None = None
        self._quality = QualityTracker(
            limits.quality_thresholds,
            limits.quality_sample_every_frames,
            limits.quality_min_sample_interval_s,
        )
        self._last_quality: common_pb2.FrameQuality | None = None
        self._ack_latency = LatencyWindow()
        self._detector = None if camera.edge_detection else MotionDetector(limits.detection)

    def snapshot(self) -> StreamSnapshot:
        """What this stream has done so far."""
        counters, window, now = self.counters, self.window, self._ingest._clock()
        return StreamSnapshot(
            stream_id=self.stream_id,
            camera_id=self._camera.camera_id,
            peer=self._peer,
            client_version=self._opening.client_version,
            open_time=self.open_time,
            last_message_time=None
            if self._last_message_s is None
            else datetime.fromtimestamp(self._last_message_s, UTC),
            last_frame_time=self._last_durable_capture,
            acked_through=self._durable,
            received=counters.received,
            accepted=counters.accepted,
            rejected=counters.rejected,
            duplicate=counters.duplicate,
            in_flight=window.in_flight,
            credit=window.credit,
            backpressure=window.backpressure,
            frames_per_second=counters.accepted_rate.rate(now),
            instance_id=self._ingest._instance_id,
            last_quality=self._last_quality,
            active_issues=self._quality.active_issues,
            ack_latency_ms=self._ack_latency.percentiles(now),
        )

    def end(self, error: StatusError, *, taken_over: bool = False) -> None:
        """Make the stream end with ``error`` (taken over, camera deleted)."""
        self._ended = error
        self._taken_over = taken_over
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
                peer=self._peer,
                acked_through_sequence=durable,
                client_version=self._opening.client_version,
            ),
        )
        detail = "stream ended"
        reason = events_pb2.CAMERA_OFFLINE_REASON_STREAM_ERROR
        reader = asyncio.create_task(self._read(requests), name=f"frames-reader-{self.stream_id}")
        settler = asyncio.create_task(self._settle(), name=f"frames-settler-{self.stream_id}")
        publisher = asyncio.create_task(self._publish_jobs(), name=f"frames-publisher-{self.stream_id}")
        drain_wait = asyncio.create_task(ingest._draining.wait(), name=f"frames-drain-{self.stream_id}")
        for task in (reader, settler, publisher, drain_wait):  # an end or an error the writer must see
            task.add_done_callback(lambda _: self._changed.set())
        keeper = asyncio.create_task(self._keep_status(), name=f"frames-status-{self.stream_id}")
        try:
            detail = await self._write(reader, settler, publisher, drain_wait)
            reason = events_pb2.CAMERA_OFFLINE_REASON_STREAM_CLOSED
        except StatusError as error:
            detail = error.message
            raise
        finally:
            for task in (reader, settler, publisher, drain_wait):
                task.cancel()
            await asyncio.gather(reader, settler, publisher, drain_wait, return_exceptions=True)
            while not self._jobs.empty():  # never started: close them, so none is left un-awaited
                _close(self._jobs.get_nowait())
            for inspection in list(self._inspections):
                await stop_task(inspection)
            await stop_task(keeper)  # may sit in a Redis command, which can swallow one cancel
            if self._thumbnailer is not None:
                await stop_task(self._thumbnailer)
            self.window.close()
            await self._release()
            self.finished.set()
            if not self._taken_over:  # else the camera is online on the newer stream, which said so
                if ingest._draining.is_set():
                    reason = events_pb2.CAMERA_OFFLINE_REASON_SERVER_SHUTDOWN
                offline = events_pb2.CameraOffline(
                    stream_id=self.stream_id,
                    reason=reason,
                    acked_through_sequence=self._durable,
                    detail=detail,
                )
                if self._last_durable_capture is not None:
                    offline.last_frame_time.FromDatetime(self._last_durable_capture)
                await ingest.publish_camera_event(camera, offline=offline)

    def _idle(self) -> bool:
        """Nothing waits to be published or settled."""
        return self._jobs.empty() and not self._publishing and self._queue.empty()

    async def _keep_status(self) -> None:
        """Renew this stream's live status in the cluster view every REFRESH_S; end the stream if lost.

        Every ``config_check_s`` it also follows the camera's configuration, changed on any instance.
        """
        live, camera_id, clock = self._ingest.live, self._camera.camera_id, self._ingest._clock
        failing = False
        next_config_check = clock() + self._limits.config_check_s
        while True:
            await asyncio.sleep(REFRESH_S)
            if clock() >= next_config_check:
                next_config_check = clock() + self._limits.config_check_s
                if not await self._follow_config():
                    return
            if live is None:
                continue
            snapshot = self.snapshot()
            try:
                renewal = await live.renew(
                    self._ingest._instance_id, snapshot.camera_status(), snapshot.stream_info()
                )
                if renewal is Renewal.GONE:
                    renewal = await self._reclaim(live)
            except (RedisError, OSError) as exc:
                if not failing:  # once per outage, not once per second
                    log.warning("live status not renewed", extra={"camera_id": camera_id, "error": str(exc)})
                failing = True
                continue
            failing = False
            if renewal is Renewal.TAKEN_OVER:
                self.end(
                    status_error(
                        grpc.StatusCode.ABORTED,
                        "taken over by a newer stream on another instance",
                        reason="TAKEN_OVER",
                    ),
                    taken_over=True,
                )
                return
            if renewal is Renewal.GONE:
                self.end(status_error(grpc.StatusCode.NOT_FOUND, f"camera {camera_id} was deleted"))
                return

    async def _follow_config(self) -> bool:
        """Apply the camera's current configuration; False (stream ended) once it is deleted or disabled."""
        camera_id = self._camera.camera_id
        try:
            camera = await self._ingest._store.get(camera_id)
        except CameraNotFound:
            self.end(status_error(grpc.StatusCode.NOT_FOUND, f"camera {camera_id} was deleted"))
            return False
        except (asyncpg.PostgresError, *DATABASE_DOWN) as exc:
            log.warning("camera configuration not checked", extra={"camera_id": camera_id, "error": str(exc)})
            return True
        if camera.disabled:
            self.end(
                status_error(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"camera {camera_id} was disabled",
                    reason="CAMERA_DISABLED",
                )
            )
            return False
        if camera.config_version != self._camera.config_version:
            # Frames read from now on are checked and described with the new configuration.
            self._camera = camera
            self._template = self._event_template(camera)
            self._frame_limits = FrameLimits(
                width_px=camera.resolution.width_px,
                height_px=camera.resolution.height_px,
                max_frame_bytes=self._limits.max_frame_bytes,
            )
            if camera.edge_detection:
                self._detector = None
            elif self._detector is None:
                self._detector = MotionDetector(self._limits.detection)
            log.info("camera configuration followed", extra={"camera_id": camera_id})
        return True

    async def _reclaim(self, live: LiveStatusStore) -> Renewal:
        """The status vanished: deleted on another instance, or lost by Redis (then claim it again)."""
        try:
            await self._ingest._store.get(self._camera.camera_id)
        except CameraNotFound:
            return Renewal.GONE
        snapshot = self.snapshot()
        holder = await live.claim(
            self._ingest._instance_id, snapshot.camera_status(), snapshot.stream_info(), take_over=False
        )
        return Renewal.RENEWED if holder is None else Renewal.TAKEN_OVER

    async def _release(self) -> None:
        """Leave the camera OFFLINE in the cluster view (unless a newer stream holds it by now)."""
        live = self._ingest.live
        if live is None:
            return
        try:
            async with asyncio.timeout(self._limits.event_timeout_s):
                await live.release(self.stream_id, self.snapshot().offline_status())
        except (RedisError, OSError, TimeoutError) as exc:  # the lease runs out by itself
            log.warning(
                "live status not released", extra={"camera_id": self._camera.camera_id, "error": str(exc)}
            )

    async def _write(
        self,
        reader: asyncio.Task[None],
        settler: asyncio.Task[None],
        publisher: asyncio.Task[None],
        drain: asyncio.Task[Any],
    ) -> str:
        """Send due acks until the stream ends; returns why it ended."""
        window, clock, loop = self.window, self._ingest._clock, asyncio.get_running_loop()
        draining_sent = False
        while True:
            self._changed.clear()  # before looking, so a change made while we look wakes the wait below
            if self._ended is not None:
                # Taken over or deleted: read nothing more, but settle and record what is in flight so
                # the next stream starts from a high-water mark that covers every published frame.
                reader.cancel()
                if self._idle() and not window.in_flight:
                    ack = window.take_ack(clock(), force=True)
                    if ack is not None:
                        await self._send(ack)
                    raise self._ended
            for task in (reader, settler, publisher):
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
            finished = (self._reader_done or draining_sent) and self._idle() and not window.in_flight
            ack = window.take_ack(clock(), force=finished)
            if ack is not None:
                await self._send(ack)
                continue
            if finished:
                if self._ended is not None:
                    raise self._ended
                return "drained" if draining_sent else "closed by the camera"
            deadline = window.next_deadline()
            if deadline is None:
                self._writer_sleeps_until = math.inf
                await self._changed.wait()
                self._writer_sleeps_until = None
                continue
            delay = deadline - clock()
            if delay > 0:
                # A timer that sets the event: less work per wake-up than an asyncio.timeout block.
                timer = loop.call_later(delay, self._changed.set)
                self._writer_sleeps_until = deadline
                await self._changed.wait()
                self._writer_sleeps_until = None
                timer.cancel()

    async def _send(self, ack: Ack) -> None:
        if ack.acked_through > self._durable:
            settled = [s for s in self._settled_capture if s <= ack.acked_through]
            capture = (
                self._settled_capture[max(settled)].ToDatetime(UTC) if settled else self._last_durable_capture
            )
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
        """Handle the messages in arrival order; the detection events of frames that arrived together
        (a batch, and single frames already waiting in the inbox) are published as one batch."""
        inbox: asyncio.Queue[streaming_pb2.StreamFramesRequest | BaseException | None] = asyncio.Queue(
            maxsize=INBOX_MESSAGES
        )
        pump = asyncio.create_task(self._pump(requests, inbox), name=f"frames-pump-{self.stream_id}")
        wall_clock, clock = self._ingest._wall_clock, self._ingest._clock
        max_batch = self._limits.max_batch_frames
        try:
            while True:
                if inbox.empty() and self._run and not await self._more_arrive(inbox):
                    await self._flush()  # nothing more on its way: publish what arrived together
                request = await inbox.get()
                if request is None:
                    await self._flush()
                    return
                if isinstance(request, BaseException):
                    raise request
                # Read once per message, not per frame: the frames of a message arrived together.
                self._last_message_s = self._message_s = wall_clock()
                self._message_at = clock()
                kind = request.WhichOneof("message")
                if kind == "frame":
                    await self._take(request.frame)
                elif kind == "batch":
                    frames = request.batch.frames
                    if len(frames) > max_batch:
                        raise status_error(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"a batch holds at most {max_batch} frames, got {len(frames)}",
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
                if len(self._run) >= max_batch:
                    await self._flush()
        except DecodeError as exc:  # grpc.aio parses each message as it is read: UNKNOWN unless mapped
            raise _unparsable() from exc
        finally:
            if self._run:  # cut short (cancelled or failed): the publisher task still publishes them,
                for described in self._run:  # in order, so the frames in the window always settle
                    self._jobs.put_nowait(described)
                self._run = []
            await stop_task(pump)
            self._reader_done = True
            self._changed.set()

    @staticmethod
    async def _more_arrive(inbox: asyncio.Queue[Any]) -> bool:
        """True once a message reaches the (empty) inbox within HOLD_TURNS loop turns: single frames
        already on their way join the run (measured: about a third less CPU per single frame than
        waiting one turn, ~210 instead of ~300 µs with the camera in the same process)."""
        for _ in range(HOLD_TURNS):
            await asyncio.sleep(0)
            if not inbox.empty():
                return True
        return False

    async def _pump(
        self,
        requests: AsyncIterator[streaming_pb2.StreamFramesRequest],
        inbox: asyncio.Queue[streaming_pb2.StreamFramesRequest | BaseException | None],
    ) -> None:
        """Read the stream into the (bounded) inbox while frames before are handled; None at its end."""
        try:
            async for request in requests:
                await inbox.put(request)
        except BaseException as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                raise  # stopped by the reader
            await inbox.put(exc)  # raised by the reader after the messages before it
            return
        await inbox.put(None)

    async def _take(self, frame: streaming_pb2.Frame) -> None:
        window, ingest = self.window, self._ingest
        now, received_s = self._message_at, self._message_s
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
            self._changed.set()  # an ack is due; an accepted frame alone gives the writer nothing to do
            return
        if verdict is Verdict.OUT_OF_ORDER:
            rejection = Rejection(
                common_pb2.FRAME_REJECT_REASON_SEQUENCE_OUT_OF_ORDER,
                f"sequence {frame.sequence} is not above {window.received_through}",
                "sequence",
            )
            window.reject_unpublished(frame.sequence, rejection.reason, rejection.detail, now)
            self._changed.set()
            await self._flush()
            await self._then(self._reject(frame, rejection, in_window=False))
            return
        jpeg = frame.jpeg  # reading the field copies the image: once per frame
        checked = check_frame(frame, self._frame_limits, received_s, self._previous_capture_s, jpeg=jpeg)
        if isinstance(checked, Rejection):
            await self._flush()
            await self._then(self._reject(frame, checked, in_window=True))
            return
        capture_s = frame.capture_time.seconds + frame.capture_time.nanos / 1e9
        self._previous_capture_s = capture_s
        # Whether the frame is a thumbnail is decided here, in arrival order, whichever path it takes.
        arrival = _Arrival(now, received_s, self._thumbnail_due(now), len(jpeg))
        if not self._quality.should_sample(now):
            described = self._describe(frame, checked.width_px, checked.height_px, arrival, _NOT_SAMPLED)
            if self._jobs.empty() and not self._publishing:
                self._run.append(described)
            else:
                self._jobs.put_nowait(described)  # behind a decode: published with its neighbours there
            return
        await self._flush()
        inspection = self._start_inspection(frame, checked.width_px, checked.height_px, capture_s)
        await self._then(
            self._accept(frame, checked.width_px, checked.height_px, arrival, inspection), wait=True
        )

    async def _then(self, job: Coroutine[Any, Any, None], *, wait: bool = False) -> None:
        """Publish in arrival order: at once while nothing waits, else behind what does (a decode).

        ``wait``: the job itself waits (for its frame's decode), so it is queued rather than run here.
        """
        if not wait and self._jobs.empty() and not self._publishing:
            await job
        else:
            self._jobs.put_nowait(job)

    async def _publish_jobs(self) -> None:
        """Runs the publications queued behind a sampled frame's decode, in order; the accepted frames
        queued next to each other are published as one batch."""
        jobs, max_batch = self._jobs, self._limits.max_batch_frames
        while True:
            job: Coroutine[Any, Any, None] | _Described | None = await jobs.get()
            self._publishing = True
            try:
                run: list[_Described] = []
                while isinstance(job, _Described):
                    run.append(job)
                    job = None if jobs.empty() or len(run) >= max_batch else jobs.get_nowait()
                try:
                    await self._publish_run(run)
                except BaseException:
                    if job is not None:
                        job.close()  # taken from the queue but never started
                    raise
                if job is not None:
                    await job
            finally:
                self._publishing = False
            self._changed.set()

    def _start_inspection(
        self, frame: streaming_pb2.Frame, width_px: int, height_px: int, capture_s: float
    ) -> asyncio.Task[_Inspection]:
        """Decode a sampled frame in a worker thread while the reader goes on; samples run one at a time
        (the frozen-frame check and the detector compare each sample with the one before)."""
        previous = self._last_inspection

        async def inspect() -> _Inspection:
            if previous is not None:
                await asyncio.wait({previous})
            return await self._inspect(frame, width_px, height_px, capture_s)

        task = asyncio.create_task(inspect(), name=f"frames-inspect-{self.stream_id}")
        self._last_inspection = task
        self._inspections.add(task)
        task.add_done_callback(self._inspections.discard)
        return task

    async def _reject(self, frame: streaming_pb2.Frame, rejection: Rejection, *, in_window: bool) -> None:
        acked = await self._dead_letter(frame, rejection)
        self._queue.put_nowait(_Pending(frame.sequence, acked, rejection, None, in_window=in_window))

    async def _accept(
        self,
        frame: streaming_pb2.Frame,
        width_px: int,
        height_px: int,
        arrival: _Arrival,
        inspected: _Inspection | asyncio.Task[_Inspection],
    ) -> None:
        inspection = inspected if isinstance(inspected, _Inspection) else await inspected
        described = self._describe(frame, width_px, height_px, arrival, inspection)
        acked = await self._publish(CAMERA_DETECTIONS_TOPIC, described.event)
        self._queue.put_nowait(described.pending(acked))
        if inspection.quality_event is not None:
            # Published after the frame's event and settled in the same order, outside the ack window.
            quality_acked = await self._publish(CAMERA_EVENTS_TOPIC, inspection.quality_event)
            self._queue.put_nowait(_Pending(frame.sequence, quality_acked, None, None, in_window=False))

    async def _flush(self) -> None:
        """Publish the reader's run of accepted frames."""
        run, self._run = self._run, []
        await self._publish_run(run)

    async def _publish_run(self, run: list[_Described]) -> None:
        """Publish accepted frames as one batch, in order; each frame settles on its own ack."""
        if not run:
            return
        camera_id = self._camera.camera_id
        try:
            acks = await self._ingest._publisher.publish_many(
                CAMERA_DETECTIONS_TOPIC, [(camera_id, described.event) for described in run]
            )
        except PublishError as exc:
            raise _unavailable(exc) from exc
        put = self._queue.put_nowait
        for described, acked in zip(run, acks, strict=True):
            put(described.pending(acked))

    def _event_template(self, camera: common_pb2.Camera) -> events_pb2.CameraDetectionEvent:
        """The fields every detection event of this stream shares under ``camera``'s configuration."""
        return events_pb2.CameraDetectionEvent(
            camera_id=camera.camera_id,
            detection_source=common_pb2.DETECTION_SOURCE_NONE,
            quality=_NOT_SAMPLED.quality,
            camera_config_version=camera.config_version,
            stream_id=self.stream_id,
            instance_id=self._ingest._instance_id,
        )

    def _describe(
        self,
        frame: streaming_pb2.Frame,
        width_px: int,
        height_px: int,
        arrival: _Arrival,
        inspection: _Inspection,
    ) -> _Described:
        """The detection event of an accepted frame (and its thumbnail when one is due)."""
        event = events_pb2.CameraDetectionEvent()
        event.CopyFrom(self._template)  # copying the shared fields costs half of setting them one by one
        sequence = frame.sequence
        event.event_id = detection_event_id(self._camera.camera_id, sequence)
        event.sequence = sequence
        event.capture_time.CopyFrom(frame.capture_time)
        size = event.frame_size
        size.width_px, size.height_px = width_px, height_px
        event.jpeg_size_bytes = arrival.jpeg_size_bytes
        if frame.has_edge_detections:
            event.detections.extend(frame.detections)
            event.detection_source = common_pb2.DETECTION_SOURCE_EDGE
        elif inspection.detections is not None:
            event.detections.extend(inspection.detections)
            event.detection_source = common_pb2.DETECTION_SOURCE_SERVER
        elif frame.detections:
            event.detections.extend(frame.detections)
        if inspection is not _NOT_SAMPLED:
            event.quality.CopyFrom(inspection.quality)
        event.receive_time.FromNanoseconds(int(arrival.received_s * 1e9))
        thumbnail = None
        if arrival.thumbnail:
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
        return _Described(event, thumbnail, arrival.now)

    def _thumbnail_due(self, now: float) -> bool:
        """True for the accepted frame that becomes the console thumbnail (about one a second)."""
        if self._ingest.thumbnails is None or now < self._next_thumbnail_at:
            return False
        self._next_thumbnail_at = now + INTERVAL_S
        return True

    async def _inspect(
        self, frame: streaming_pb2.Frame, width_px: int, height_px: int, capture_s: float
    ) -> _Inspection:
        """Quality (and, without edge detections, server-side detections) of a sampled frame.

        A sampled frame that passed the cheap checks but does not decode stays accepted: its quality is
        recorded as not sampled and no detector runs.
        """
        tracker = self._quality
        detector = None if frame.has_edge_detections else self._detector
        measured, moving = await asyncio.to_thread(
            _measure_and_detect, frame.jpeg, tracker, detector, width_px, height_px
        )
        if measured is None:
            return _NOT_SAMPLED
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
        self._last_quality = quality
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
            peer=self._peer,
            instance_id=self._ingest._instance_id,
        )
        letter.reject_time.FromDatetime(datetime.now(UTC))
        return await self._publish(CAMERA_DLQ_TOPIC, letter)

    async def _publish(self, topic: str, message: Message) -> Awaitable[None]:
        try:
            return await self._ingest._publisher.publish(topic, self._camera.camera_id, message)
        except PublishError as exc:
            raise _unavailable(exc) from exc

    def _kafka_slow(self) -> None:
        self.window.set_backpressure(True, self._ingest._clock())
        self._changed.set()

    async def _settle(self) -> None:
        window, clock, loop = self.window, self._ingest._clock, asyncio.get_running_loop()
        while True:
            pending = await self._queue.get()
            acked = pending.acked
            if isinstance(acked, Acknowledgement) and acked.done():
                slow = None  # acknowledged with an earlier record of its Kafka batch: no wait, no timer
            else:
                # A timer, not a task per frame (in a profile this halved the settle cost); it fires only
                # when Kafka is slow, turning back-pressure on until this acknowledgement arrives.
                slow = loop.call_later(self._limits.backpressure_after_s, self._kafka_slow)
            try:
                await acked
            except PublishError as exc:
                raise _unavailable(exc) from exc
            finally:
                if slow is not None:
                    slow.cancel()
            now = clock()
            if window.backpressure:
                window.set_backpressure(False, now)
            if pending.rejection is not None:
                self.counters.record_rejected()
                self._ingest.totals.record_rejected()
            elif pending.in_window:
                self.counters.record_accepted(now)
                self._ingest.totals.record_accepted(now)
                if pending.received_at is not None:
                    self._ack_latency.record(now, now - pending.received_at)
            if pending.in_window:
                reason = (
                    None
                    if pending.rejection is None
                    else (int(pending.rejection.reason), pending.rejection.detail)
                )
                window.settle(pending.sequence, now, reason)
                if pending.capture_time is not None:
                    self._settled_capture[pending.sequence] = pending.capture_time
            if pending.thumbnail is not None:
                self._keep_thumbnail(pending.thumbnail)  # only frames Kafka has
            self._nudge_writer()

    def _nudge_writer(self) -> None:
        """Wake the writer after a settlement when it must look: it sleeps past the next ack now due,
        or this is the last settlement for now. Not once per frame: each wake-up costs a timer."""
        until = self._writer_sleeps_until
        if until is None:
            return  # awake: it looks at the window again before it sleeps
        if self._queue.empty() or self._reader_done or self._ended is not None:
            self._changed.set()
            return
        deadline = self.window.next_deadline()
        if deadline is not None and deadline < until:
            self._changed.set()

    def _keep_thumbnail(self, thumbnail: streaming_pb2.LatestFrame) -> None:
        """Store the thumbnail in the background, so a slow Redis never holds up acknowledgements."""
        thumbnails = self._ingest.thumbnails
        if thumbnails is None or (self._thumbnailer is not None and not self._thumbnailer.done()):
            return  # the previous one is still being written: skip this one (about one a second)
        self._thumbnailer = asyncio.create_task(
            thumbnails.put(thumbnail), name=f"frames-thumbnail-{self.stream_id}"
        )


@dataclass(frozen=True, slots=True)
class _Inspection:
    quality: common_pb2.FrameQuality
    quality_event: events_pb2.CameraEvent | None = None
    detections: list[common_pb2.Detection] | None = None
    """Server-side detections; None when the detector did not run on this frame."""


_NOT_SAMPLED: Final = _Inspection(common_pb2.FrameQuality(sampled=False))


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


def _close(job: Coroutine[Any, Any, None] | _Described) -> None:
    if not isinstance(job, _Described):
        job.close()


def _unparsable() -> StatusError:
    return status_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "a message of the stream is not a StreamFramesRequest",
        field_violations={"message": "wire format is corrupt"},
    )


def _unavailable(exc: Exception) -> StatusError:
    return status_error(
        grpc.StatusCode.UNAVAILABLE,
        f"Kafka did not acknowledge: {exc}; reconnect and resume",
        retry_delay_s=1.0,
    )


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """An aware datetime as a Timestamp."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value
