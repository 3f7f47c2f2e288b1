"""gRPC front of the streaming service: proto ↔ domain translation and input validation.

Every error leaves through ``mesh.status`` with details: INVALID_ARGUMENT with a BadRequest naming each
bad field, NOT_FOUND, ALREADY_EXISTS, ABORTED for a stale etag, UNAVAILABLE + RetryInfo when Kafka or
PostgreSQL cannot be reached.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from google.protobuf import empty_pb2, field_mask_pb2
from redis.exceptions import RedisError

from itsmesh.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.events import PublishError
from mesh.interceptors import current_principal
from mesh.pg_pool import DATABASE_DOWN
from mesh.status import (
    StatusError,
    abort_with,
    abort_with_error,
    errors_as_status,
    raise_for_violations,
    status_error,
)
from services.streaming.ingest import FrameIngest
from services.streaming.ingest import timestamp as _timestamp
from services.streaming.registry import CameraRegistry
from services.streaming.stats import connection_state
from services.streaming.store import CameraExists, CameraNotFound, StaleEtag
from services.streaming.telemetry_ingest import TelemetryIngest
from services.streaming.validation import IMMUTABLE_FIELDS, validate_camera

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
RETRY_DELAY_S = 1.0
_DETAIL_FIELDS = ("zones", "lanes", "counting_lines", "calibration", "rules")


class StreamingServicer(streaming_pb2_grpc.StreamingServiceServicer):
    """Answers itsmesh.v1.StreamingService; registry and ingest are attached by the service's resources."""

    def __init__(self) -> None:
        self.registry: CameraRegistry | None = None
        self.ingest: FrameIngest | None = None
        self.telemetry: TelemetryIngest | None = None

    def _registry(self) -> CameraRegistry:
        if self.registry is None:
            raise status_error(grpc.StatusCode.UNAVAILABLE, "the registry is starting", retry_delay_s=1.0)
        return self.registry

    # --- registry -------------------------------------------------------------------------------------

    async def RegisterCamera(
        self, request: streaming_pb2.RegisterCameraRequest, context: Context
    ) -> common_pb2.Camera:
        async with _errors(context):
            camera = _input_camera(request.camera)
            raise_for_violations(validate_camera(camera))
            if request.validate_only:
                return camera
            return await self._registry().register(camera, _subject())
        raise AssertionError("unreachable")  # _errors aborts or the body returns

    async def GetCamera(self, request: streaming_pb2.GetCameraRequest, context: Context) -> common_pb2.Camera:
        async with _errors(context):
            _require_id(request.camera_id, "camera_id")
            return await self._registry().get(request.camera_id)
        raise AssertionError("unreachable")

    async def ListCameras(
        self, request: streaming_pb2.ListCamerasRequest, context: Context
    ) -> streaming_pb2.ListCamerasResponse:
        async with _errors(context):
            if not 0 <= request.page_size <= MAX_PAGE_SIZE:
                raise_for_violations([("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")])
            labels = dict(request.labels)
            filters = _filter_digest(labels, request.include_disabled)
            after = _decode_token(request.page_token, filters)
            page = await self._registry().list(
                after=after,
                limit=request.page_size or DEFAULT_PAGE_SIZE,
                labels=labels,
                include_disabled=request.include_disabled,
            )
            if request.view != streaming_pb2.CAMERA_VIEW_FULL:
                for camera in page.cameras:
                    for name in _DETAIL_FIELDS:
                        camera.ClearField(name)  # type: ignore[arg-type]
            return streaming_pb2.ListCamerasResponse(
                cameras=page.cameras,
                next_page_token=_encode_token(page.next_after, filters) if page.next_after else "",
                total_size=page.total,
            )
        raise AssertionError("unreachable")

    async def UpdateCamera(
        self, request: streaming_pb2.UpdateCameraRequest, context: Context
    ) -> common_pb2.Camera:
        async with _errors(context):
            _require_id(request.camera.camera_id, "camera.camera_id")
            paths = list(request.update_mask.paths)
            if not paths:
                raise_for_violations([("update_mask", "name at least one field to update")])
            bad = [
                ("update_mask", f"{path!r} is not an updatable Camera field")
                for path in paths
                if path.split(".", 1)[0] in IMMUTABLE_FIELDS
                or not field_mask_pb2.FieldMask(paths=[path]).IsValidForDescriptor(
                    common_pb2.Camera.DESCRIPTOR
                )
            ]
            raise_for_violations(bad)
            current = await self._registry().get(request.camera.camera_id)
            updated = common_pb2.Camera()
            updated.CopyFrom(current)
            field_mask_pb2.FieldMask(paths=paths).MergeMessage(
                _input_camera(request.camera),
                updated,
                replace_message_field=True,
                replace_repeated_field=True,
            )
            raise_for_violations(validate_camera(updated))
            if request.validate_only:
                return updated
            changed = sorted({path.split(".", 1)[0] for path in paths})
            return await self._registry().update(updated, request.camera.etag, changed, _subject())
        raise AssertionError("unreachable")

    async def DeleteCamera(
        self, request: streaming_pb2.DeleteCameraRequest, context: Context
    ) -> empty_pb2.Empty:
        async with _errors(context):
            _require_id(request.camera_id, "camera_id")
            await self._registry().delete(request.camera_id, request.etag, _subject())
            if self.ingest is not None:
                await self.ingest.end_camera(request.camera_id)
                try:  # the camera is gone already: Redis trouble must not turn that into an error
                    if self.ingest.thumbnails is not None:
                        await self.ingest.thumbnails.delete(request.camera_id)
                    if self.ingest.live is not None:  # its owner, on any instance, then ends the stream
                        await self.ingest.live.forget(request.camera_id)
                except (RedisError, OSError) as exc:
                    log.warning(
                        "deleted camera left in Redis until its keys expire",
                        extra={"camera_id": request.camera_id, "error": str(exc)},
                    )
            return empty_pb2.Empty()
        raise AssertionError("unreachable")

    async def GetLatestFrame(
        self, request: streaming_pb2.GetLatestFrameRequest, context: Context
    ) -> streaming_pb2.LatestFrame:
        async with _errors(context):
            _require_id(request.camera_id, "camera_id")
            ingest = self.ingest
            frame = None
            if ingest is not None and ingest.thumbnails is not None:
                frame = await ingest.thumbnails.get(request.camera_id)
            if frame is None:
                raise status_error(
                    grpc.StatusCode.NOT_FOUND,
                    f"no recent frame of camera {request.camera_id}",
                    reason="NO_RECENT_FRAME",
                )
            return frame
        raise AssertionError("unreachable")

    # --- live status ----------------------------------------------------------------------------------

    def _ingest(self) -> FrameIngest:
        if self.ingest is None:
            raise status_error(grpc.StatusCode.UNAVAILABLE, "ingest is starting", retry_delay_s=1.0)
        return self.ingest

    async def _camera_statuses(self, camera_ids: list[str]) -> dict[str, streaming_pb2.CameraStatus]:
        """Statuses from the cluster view in Redis, this instance's own streams fresher; Redis down: local."""
        ingest = self._ingest()
        shared: dict[str, streaming_pb2.CameraStatus] = {}
        if ingest.live is not None:
            try:
                shared = await ingest.live.statuses(camera_ids)
            except (RedisError, OSError) as exc:
                log.warning(
                    "cluster status unavailable; answering from this instance", extra={"error": str(exc)}
                )
        statuses: dict[str, streaming_pb2.CameraStatus] = {}
        unknown: list[str] = []
        for camera_id in camera_ids:
            local, found = ingest.stream_of(camera_id), shared.get(camera_id)
            if local is not None and (found is None or found.stream_id in ("", local.stream_id)):
                statuses[camera_id] = local.camera_status()
            elif found is not None:
                statuses[camera_id] = found
            else:
                unknown.append(camera_id)
        progress = await self._registry().store.acked_through_many(unknown) if unknown else {}
        for camera_id in unknown:  # never streamed, or its status expired: PostgreSQL knows the progress
            durable, last_frame = progress.get(camera_id, (0, None))
            status = streaming_pb2.CameraStatus(camera_id=camera_id, acked_through_sequence=durable)
            opened = ingest.last_open_time(camera_id)
            if opened is not None:
                status.connect_time.CopyFrom(_timestamp(opened))
            if last_frame is not None:
                status.last_frame_time.CopyFrom(_timestamp(last_frame))
            status.state = connection_state(
                live=False, acked_through=durable, ever_streamed=opened is not None or last_frame is not None
            )
            statuses[camera_id] = status
        return statuses

    async def _online_count(self) -> int:
        ingest = self._ingest()
        if ingest.live is not None:
            try:
                return len(await ingest.live.live_cameras())
            except (RedisError, OSError) as exc:
                log.warning("cluster status unavailable; counting this instance", extra={"error": str(exc)})
        return len(ingest.streams())

    async def _frame_streams(self) -> list[streaming_pb2.StreamInfo]:
        """Frame streams of the cluster; this instance's own with their current counters."""
        ingest = self._ingest()
        shared: list[streaming_pb2.StreamInfo] = []
        if ingest.live is not None:
            try:
                shared = await ingest.live.live_streams()
            except (RedisError, OSError) as exc:
                log.warning("cluster streams unavailable; listing this instance", extra={"error": str(exc)})
        mine = {stream.stream_id: stream.stream_info() for stream in ingest.streams()}
        return [mine.pop(info.stream_id, info) for info in shared] + list(mine.values())

    async def GetCameraStatus(
        self, request: streaming_pb2.GetCameraStatusRequest, context: Context
    ) -> streaming_pb2.CameraStatus:
        async with _errors(context):
            _require_id(request.camera_id, "camera_id")
            await self._registry().get(request.camera_id)  # NOT_FOUND for unknown cameras
            return (await self._camera_statuses([request.camera_id]))[request.camera_id]
        raise AssertionError("unreachable")

    async def ListCameraStatuses(
        self, request: streaming_pb2.ListCameraStatusesRequest, context: Context
    ) -> streaming_pb2.ListCameraStatusesResponse:
        async with _errors(context):
            _check_page_size(request.page_size)
            if request.state not in streaming_pb2.CameraConnectionState.values():
                raise_for_violations([("state", f"unknown CameraConnectionState {request.state}")])
            labels = dict(request.labels)
            filters = _filter_digest(labels, True) + f"/{int(request.state)}"
            cursor = _decode_token(request.page_token, filters)
            registry, limit = self._registry(), request.page_size or DEFAULT_PAGE_SIZE
            statuses: list[streaming_pb2.CameraStatus] = []
            next_after = ""
            # The state filter applies before paging: scan the registry until the page is full.
            while len(statuses) < limit:
                page = await registry.list(after=cursor, limit=limit, labels=labels, include_disabled=True)
                found = await self._camera_statuses([camera.camera_id for camera in page.cameras])
                for index, camera in enumerate(page.cameras):
                    status = found[camera.camera_id]
                    if request.state in (streaming_pb2.CAMERA_CONNECTION_STATE_UNSPECIFIED, status.state):
                        statuses.append(status)
                    if len(statuses) == limit:
                        more = index + 1 < len(page.cameras) or page.next_after is not None
                        next_after = camera.camera_id if more else ""
                        break
                if page.next_after is None:
                    break
                cursor = page.next_after
            return streaming_pb2.ListCameraStatusesResponse(
                statuses=statuses,
                next_page_token=_encode_token(next_after, filters) if next_after else "",
                online_count=await self._online_count(),
                registered_count=await registry.count(),
            )
        raise AssertionError("unreachable")

    async def ListStreams(
        self, request: streaming_pb2.ListStreamsRequest, context: Context
    ) -> streaming_pb2.ListStreamsResponse:
        async with _errors(context):
            _check_page_size(request.page_size)
            if request.kind not in streaming_pb2.StreamKind.values():
                raise_for_violations([("kind", f"unknown StreamKind {request.kind}")])
            filters = f"streams/{int(request.kind)}"
            after = _decode_token(request.page_token, filters)
            ingest = self._ingest()
            streams: list[streaming_pb2.StreamInfo] = []
            if request.kind in (streaming_pb2.STREAM_KIND_UNSPECIFIED, streaming_pb2.STREAM_KIND_FRAMES):
                streams = sorted(await self._frame_streams(), key=_stream_key)
            telemetry_kinds = (streaming_pb2.STREAM_KIND_UNSPECIFIED, streaming_pb2.STREAM_KIND_TELEMETRY)
            if request.kind in telemetry_kinds and self.telemetry is not None:
                # Telemetry streams of this instance only (they keep no cluster-wide lease).
                streams = sorted([*streams, *self.telemetry.stream_infos()], key=_stream_key)
            if after:
                streams = [stream for stream in streams if _stream_key(stream) > after]
            limit = request.page_size or DEFAULT_PAGE_SIZE
            page = streams[:limit]
            next_after = _stream_key(page[-1]) if len(streams) > limit else ""
            return streaming_pb2.ListStreamsResponse(
                streams=page,
                next_page_token=_encode_token(next_after, filters) if next_after else "",
                instance_id=ingest.instance_id,
            )
        raise AssertionError("unreachable")

    async def GetIngestStatus(
        self, request: streaming_pb2.GetIngestStatusRequest, context: Context
    ) -> streaming_pb2.IngestStatus:
        async with _errors(context):
            ingest = self._ingest()
            snapshot = ingest.snapshot()
            redis_healthy = ingest.thumbnails is not None and await ingest.thumbnails.healthy()
            status = streaming_pb2.IngestStatus(
                instance_id=snapshot.instance_id,
                start_time=_timestamp(snapshot.start_time),
                frame_streams=snapshot.frame_streams,
                frames_accepted_total=snapshot.accepted,
                frames_rejected_total=snapshot.rejected,
                frames_duplicate_total=snapshot.duplicate,
                frames_per_second=snapshot.frames_per_second,
                kafka_in_flight=snapshot.in_flight,
                backpressure=snapshot.backpressure,
                kafka_healthy=snapshot.kafka_started,
                redis_healthy=redis_healthy,
            )
            if self.telemetry is not None:
                self.telemetry.fill_status(status)
            return status
        raise AssertionError("unreachable")

    # --- frame ingest ---------------------------------------------------------------------------------

    async def StreamFrames(  # type: ignore[override]  # reader/writer style: responses go via context
        self, request_iterator: AsyncIterator[streaming_pb2.StreamFramesRequest], context: Context
    ) -> None:
        ingest = self.ingest
        if ingest is None:
            await abort_with(context, grpc.StatusCode.UNAVAILABLE, "ingest is starting", retry_delay_s=1.0)
        try:
            await ingest.serve(request_iterator, context)
        except StatusError as error:
            await abort_with_error(context, error)
        except DATABASE_DOWN:
            await abort_with(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the database is unavailable",
                retry_delay_s=RETRY_DELAY_S,
            )

    # --- telemetry ingest -----------------------------------------------------------------------------

    def _telemetry(self) -> TelemetryIngest:
        if self.telemetry is None:
            raise status_error(grpc.StatusCode.UNAVAILABLE, "telemetry ingest is starting", retry_delay_s=1.0)
        return self.telemetry

    async def StreamTelemetry(  # type: ignore[override]  # reader/writer style: responses go via context
        self, request_iterator: AsyncIterator[streaming_pb2.StreamTelemetryRequest], context: Context
    ) -> None:
        try:
            await self._telemetry().serve(request_iterator, context)
        except StatusError as error:
            await abort_with_error(context, error)

    async def SubmitTelemetry(
        self, request: streaming_pb2.SubmitTelemetryRequest, context: Context
    ) -> streaming_pb2.SubmitTelemetryResponse:
        async with _errors(context):
            return await self._telemetry().submit(request, context)
        raise AssertionError("unreachable")


def _errors(context: Context) -> errors_as_status:
    """Maps domain and driver errors raised inside an RPC body to statuses with details."""
    return errors_as_status(context, _status_of)


def _status_of(exc: BaseException) -> StatusError | None:
    if isinstance(exc, CameraNotFound):
        return status_error(
            grpc.StatusCode.NOT_FOUND, f"camera {exc} is not registered", reason="CAMERA_NOT_FOUND"
        )
    if isinstance(exc, CameraExists):
        return status_error(
            grpc.StatusCode.ALREADY_EXISTS, f"camera {exc} is already registered", reason="CAMERA_EXISTS"
        )
    if isinstance(exc, StaleEtag):
        return status_error(
            grpc.StatusCode.ABORTED,
            f"camera {exc} changed since it was read; read it again",
            reason="STALE_ETAG",
        )
    if isinstance(exc, PublishError):
        return status_error(
            grpc.StatusCode.UNAVAILABLE, f"Kafka is unavailable: {exc}", retry_delay_s=RETRY_DELAY_S
        )
    if isinstance(exc, DATABASE_DOWN):
        return status_error(
            grpc.StatusCode.UNAVAILABLE, "the database is unavailable", retry_delay_s=RETRY_DELAY_S
        )
    if isinstance(exc, RedisError):
        return status_error(grpc.StatusCode.UNAVAILABLE, "Redis is unavailable", retry_delay_s=RETRY_DELAY_S)
    return None


def _check_page_size(page_size: int) -> None:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise_for_violations([("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")])


def _stream_key(stream: streaming_pb2.StreamInfo) -> str:
    """Sorts streams by open time (fixed-width, so text order is time order), then id."""
    return f"{stream.open_time.seconds:012d}.{stream.open_time.nanos:09d}/{stream.stream_id}"


def _require_id(value: str, field: str) -> None:
    if not value:
        raise_for_violations([(field, "required")])


def _input_camera(camera: common_pb2.Camera) -> common_pb2.Camera:
    """The camera as the client sent it, without output-only fields."""
    copy = common_pb2.Camera()
    copy.CopyFrom(camera)
    for name in ("create_time", "update_time", "config_version", "etag"):
        copy.ClearField(name)
    return copy


def _subject() -> str:
    principal = current_principal()
    return principal.subject if principal is not None else "anonymous"


def _filter_digest(labels: Mapping[str, str], include_disabled: bool) -> str:
    raw = json.dumps([sorted(labels.items()), include_disabled]).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _encode_token(after: str, filters: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"a": after, "f": filters}).encode()).decode()


def _decode_token(token: str, filters: str) -> str:
    if not token:
        return ""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        after, token_filters = data["a"], data["f"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise_for_violations([("page_token", "not a token this server issued")])
        raise AssertionError("unreachable") from None
    if token_filters != filters or not isinstance(after, str):
        raise_for_violations([("page_token", "only valid with the same filters")])
    return str(after)
