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
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import asyncpg
import grpc
from google.protobuf import empty_pb2, field_mask_pb2, timestamp_pb2
from redis.exceptions import RedisError

from itsmesh.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.events import PublishError
from mesh.interceptors import current_principal
from mesh.status import (
    StatusError,
    abort_with,
    abort_with_error,
    errors_as_status,
    raise_for_violations,
    status_error,
)
from services.streaming.ingest import FrameIngest, StreamSnapshot
from services.streaming.registry import CameraRegistry
from services.streaming.stats import connection_state
from services.streaming.store import CameraExists, CameraNotFound, StaleEtag
from services.streaming.validation import IMMUTABLE_FIELDS, validate_camera

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
                if self.ingest.thumbnails is not None:
                    await self.ingest.thumbnails.delete(request.camera_id)
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

    async def _camera_status(self, camera_id: str) -> streaming_pb2.CameraStatus:
        ingest = self._ingest()
        live = ingest.stream_of(camera_id)
        status = streaming_pb2.CameraStatus(camera_id=camera_id)
        opened = ingest.last_open_time(camera_id)
        if opened is not None:
            status.connect_time.CopyFrom(_timestamp(opened))
        if live is not None:
            status.stream_id = live.stream_id
            status.instance_id = ingest.instance_id
            status.acked_through_sequence = live.acked_through
            status.frames_per_second = live.frames_per_second
            status.frames_accepted = live.accepted
            status.frames_rejected = live.rejected
            status.frames_duplicate = live.duplicate
            last_frame = live.last_frame_time
        else:
            durable, last_frame = await self._registry().store.acked_through(camera_id)
            status.acked_through_sequence = durable
        if last_frame is not None:
            status.last_frame_time.CopyFrom(_timestamp(last_frame))
        status.state = connection_state(
            live=live is not None,
            acked_through=status.acked_through_sequence,
            ever_streamed=opened is not None or last_frame is not None,
        )
        return status

    async def GetCameraStatus(
        self, request: streaming_pb2.GetCameraStatusRequest, context: Context
    ) -> streaming_pb2.CameraStatus:
        async with _errors(context):
            _require_id(request.camera_id, "camera_id")
            await self._registry().get(request.camera_id)  # NOT_FOUND for unknown cameras
            return await self._camera_status(request.camera_id)
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
            after = _decode_token(request.page_token, filters)
            registry, ingest = self._registry(), self._ingest()
            page = await registry.list(
                after=after,
                limit=request.page_size or DEFAULT_PAGE_SIZE,
                labels=labels,
                include_disabled=True,
            )
            statuses = [await self._camera_status(camera.camera_id) for camera in page.cameras]
            if request.state != streaming_pb2.CAMERA_CONNECTION_STATE_UNSPECIFIED:
                statuses = [status for status in statuses if status.state == request.state]
            return streaming_pb2.ListCameraStatusesResponse(
                statuses=statuses,
                next_page_token=_encode_token(page.next_after, filters) if page.next_after else "",
                online_count=len(ingest.streams()),
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
            streams: list[StreamSnapshot] = []
            if request.kind in (streaming_pb2.STREAM_KIND_UNSPECIFIED, streaming_pb2.STREAM_KIND_FRAMES):
                streams = sorted(ingest.streams(), key=_stream_key)
            if after:
                streams = [stream for stream in streams if _stream_key(stream) > after]
            limit = request.page_size or DEFAULT_PAGE_SIZE
            page = streams[:limit]
            next_after = _stream_key(page[-1]) if len(streams) > limit else ""
            return streaming_pb2.ListStreamsResponse(
                streams=[_stream_info(stream) for stream in page],
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
            return streaming_pb2.IngestStatus(
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
        except (asyncpg.PostgresConnectionError, OSError):
            await abort_with(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the database is unavailable",
                retry_delay_s=RETRY_DELAY_S,
            )


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
    if isinstance(exc, (asyncpg.PostgresConnectionError, OSError)):
        return status_error(
            grpc.StatusCode.UNAVAILABLE, "the database is unavailable", retry_delay_s=RETRY_DELAY_S
        )
    if isinstance(exc, RedisError):
        return status_error(grpc.StatusCode.UNAVAILABLE, "Redis is unavailable", retry_delay_s=RETRY_DELAY_S)
    return None


def _check_page_size(page_size: int) -> None:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise_for_violations([("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")])


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _stream_key(stream: StreamSnapshot) -> str:
    """Sorts streams by open time (fixed-width, so text order is time order), then id."""
    return f"{stream.open_time.timestamp():020.6f}/{stream.stream_id}"


def _stream_info(stream: StreamSnapshot) -> streaming_pb2.StreamInfo:
    info = streaming_pb2.StreamInfo(
        stream_id=stream.stream_id,
        kind=streaming_pb2.STREAM_KIND_FRAMES,
        source_id=stream.camera_id,
        peer=stream.peer,
        open_time=_timestamp(stream.open_time),
        items_received=stream.received,
        items_accepted=stream.accepted,
        items_rejected=stream.rejected,
        items_duplicate=stream.duplicate,
        items_in_flight=stream.in_flight,
        credit_available=stream.credit,
        acked_through_sequence=stream.acked_through,
        client_version=stream.client_version,
    )
    if stream.last_message_time is not None:
        info.last_message_time.CopyFrom(_timestamp(stream.last_message_time))
    return info


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
