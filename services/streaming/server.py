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
from typing import Any

import asyncpg
import grpc
from google.protobuf import empty_pb2, field_mask_pb2
from redis.exceptions import RedisError

from itsmesh.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.events import PublishError
from mesh.interceptors import current_principal
from mesh.status import StatusError, abort_with, abort_with_error, errors_as_status, status_error
from services.streaming.ingest import FrameIngest
from services.streaming.registry import CameraRegistry
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
            _check(validate_camera(camera))
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
                _check([("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")])
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
                _check([("update_mask", "name at least one field to update")])
            bad = [
                ("update_mask", f"{path!r} is not an updatable Camera field")
                for path in paths
                if path.split(".", 1)[0] in IMMUTABLE_FIELDS
                or not field_mask_pb2.FieldMask(paths=[path]).IsValidForDescriptor(
                    common_pb2.Camera.DESCRIPTOR
                )
            ]
            _check(bad)
            current = await self._registry().get(request.camera.camera_id)
            updated = common_pb2.Camera()
            updated.CopyFrom(current)
            field_mask_pb2.FieldMask(paths=paths).MergeMessage(
                _input_camera(request.camera),
                updated,
                replace_message_field=True,
                replace_repeated_field=True,
            )
            _check(validate_camera(updated))
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
    if isinstance(exc, StatusError):
        return exc
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


def _check(violations: list[tuple[str, str]]) -> None:
    if violations:
        first = violations[0]
        raise status_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"invalid {first[0]}: {first[1]}"
            + (f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""),
            field_violations=violations,
        )


def _require_id(value: str, field: str) -> None:
    if not value:
        _check([(field, "required")])


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
        _check([("page_token", "not a token this server issued")])
        raise AssertionError("unreachable") from None
    if token_filters != filters or not isinstance(after, str):
        _check([("page_token", "only valid with the same filters")])
    return str(after)
