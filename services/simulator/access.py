"""How the simulator gets in: its user's token, and registration of its cameras and devices.

The simulator is an operator (it registers cameras and devices) and then streams as each device with
that device's own credentials, as real cameras and GPS units do. See ``SimulatorSettings`` for where the
user's password comes from; the first run on a machine creates the user once with the first admin's
password and keeps its own password in a 0600 file, so the admin's password is not needed again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Final

import grpc
from google.protobuf import field_mask_pb2

from itsmesh.v1 import (
    analytics_pb2,
    analytics_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    streaming_pb2,
    streaming_pb2_grpc,
)
from mesh.credentials import read_credentials, write_credentials
from mesh.edge import DeviceCredentials
from services.simulator.config import SimulatorSettings
from services.simulator.gps import GEOFENCE_ID, Fleet

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]
CALL_TIMEOUT_S: Final = 10.0
REFRESH_AT: Final = 0.7
"""Log in again once this share of the token's lifetime has passed."""
CAMERA_FIELDS: Final = (
    "name",
    "description",
    "location",
    "resolution",
    "fps",
    "speed_limit_kmh",
    "time_zone",
    "edge_detection",
    "zones",
    "lanes",
    "counting_lines",
    "calibration",
    "rules",
    "labels",
    "disabled",
)


class SimulatorAuthError(Exception):
    """The simulator cannot authenticate; the message says what to set."""


def _code(exc: grpc.aio.AioRpcError) -> grpc.StatusCode:
    return exc.code()


class UserToken:
    """The simulator user's access token, logged in again before it expires."""

    def __init__(
        self,
        auth: auth_pb2_grpc.AuthServiceAsyncStub,
        username: str,
        password: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._auth = auth
        self._username = username
        self._password = password
        self._clock = clock
        self._token = ""
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        async with self._lock:
            if not self._token or self._clock() >= self._renew_at:
                response = await login(self._auth, self._username, self._password)
                lifetime = response.expires_in.ToNanoseconds() / 1e9 or 300.0
                self._token, self._renew_at = response.access_token, self._clock() + REFRESH_AT * lifetime
            return self._token

    async def metadata(self) -> Metadata:
        """gRPC metadata carrying the token."""
        return (("authorization", f"Bearer {await self()}"),)


async def login(
    auth: auth_pb2_grpc.AuthServiceAsyncStub, username: str, password: str
) -> auth_pb2.TokenResponse:
    """Log in over gRPC; a refusal becomes SimulatorAuthError."""
    try:
        return await auth.Login(
            auth_pb2.LoginRequest(username=username, password=password), timeout=CALL_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as exc:
        if _code(exc) in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise SimulatorAuthError(f"auth refused the login of {username!r}: {exc.details()}") from exc
        raise


def _admin_password(settings: SimulatorSettings) -> tuple[str, str] | None:
    if settings.admin_password is not None and settings.admin_password.get_secret_value():
        return settings.admin_username, settings.admin_password.get_secret_value()
    try:
        lines = settings.admin_password_file.read_text().splitlines()
    except FileNotFoundError:
        return None
    return (lines[0], lines[1]) if len(lines) >= 2 else None


async def user_credentials(
    settings: SimulatorSettings, auth: auth_pb2_grpc.AuthServiceAsyncStub
) -> tuple[str, str]:
    """(username, password) of the simulator's user, creating the user on first use (see module doc)."""
    if settings.password is not None and settings.password.get_secret_value():  # empty = unset
        return settings.username, settings.password.get_secret_value()
    stored = read_credentials(settings.credentials_file)
    if stored is not None:
        return stored
    admin = _admin_password(settings)
    if admin is None:
        raise SimulatorAuthError(
            "no credentials: set ITSMESH_SIMULATOR_PASSWORD (an operator's password), or let the "
            f"simulator create its user once with ITSMESH_ADMIN_PASSWORD or {settings.admin_password_file}"
        )
    admin_token = (await login(auth, *admin)).access_token
    password = secrets.token_urlsafe(24)
    user = auth_pb2.User(
        username=settings.username, display_name="itsmesh simulator", roles=[auth_pb2.ROLE_OPERATOR]
    )
    try:
        await auth.CreateUser(
            auth_pb2.CreateUserRequest(user=user, password=password),
            metadata=(("authorization", f"Bearer {admin_token}"),),
            timeout=CALL_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as exc:
        if _code(exc) == grpc.StatusCode.ALREADY_EXISTS:
            raise SimulatorAuthError(
                f"user {settings.username!r} exists but {settings.credentials_file} does not: set "
                "ITSMESH_SIMULATOR_PASSWORD, or delete that user so it is created again"
            ) from exc
        raise
    write_credentials(settings.credentials_file, settings.username, password)
    log.info("created the simulator's user", extra={"username": settings.username})
    return settings.username, password


async def register_camera(
    streaming: streaming_pb2_grpc.StreamingServiceAsyncStub, camera: common_pb2.Camera, metadata: Metadata
) -> common_pb2.Camera:
    """Register a camera, or bring an existing one's configuration up to date."""
    try:
        return await streaming.RegisterCamera(
            streaming_pb2.RegisterCameraRequest(camera=camera), metadata=metadata, timeout=CALL_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as exc:
        if _code(exc) != grpc.StatusCode.ALREADY_EXISTS:
            raise
    return await streaming.UpdateCamera(
        streaming_pb2.UpdateCameraRequest(
            camera=camera, update_mask=field_mask_pb2.FieldMask(paths=list(CAMERA_FIELDS))
        ),
        metadata=metadata,
        timeout=CALL_TIMEOUT_S,
    )


async def register_device(
    auth: auth_pb2_grpc.AuthServiceAsyncStub,
    device_id: str,
    kind: auth_pb2.DeviceKind.ValueType,
    metadata: Metadata,
) -> DeviceCredentials:
    """Register a device and return its credentials; an existing one gets new credentials instead."""
    device = auth_pb2.Device(
        device_id=device_id, kind=kind, name=f"simulated {device_id}", labels={"source": "simulator"}
    )
    try:
        registered = await auth.RegisterDevice(
            auth_pb2.RegisterDeviceRequest(device=device), metadata=metadata, timeout=CALL_TIMEOUT_S
        )
        issued = registered.credentials
    except grpc.aio.AioRpcError as exc:
        if _code(exc) != grpc.StatusCode.ALREADY_EXISTS:
            raise
        issued = await auth.RotateDeviceCredentials(
            auth_pb2.RotateDeviceCredentialsRequest(
                device_id=device_id, rotate_api_key=True, rotate_hmac_secret=True
            ),
            metadata=metadata,
            timeout=CALL_TIMEOUT_S,
        )
    return DeviceCredentials(device_id, issued.api_key, issued.hmac_key_id, issued.hmac_secret)


async def ensure_geofence(
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub, fleet: Fleet, metadata: Metadata
) -> bool:
    """Create (or update) the fleet's keep-inside geofence with its speed limit at analytics.

    False, with a log line, when analytics cannot take it (not running): the run goes on without it.
    """
    geofence = analytics_pb2.Geofence(
        geofence_id=GEOFENCE_ID,
        name="simulated fleet area",
        kind=analytics_pb2.GEOFENCE_KIND_KEEP_INSIDE,
        boundary=common_pb2.GeoPolygon(
            vertices=[
                common_pb2.GeoPoint(latitude_deg=lat, longitude_deg=lon) for lat, lon in fleet.geofence()
            ]
        ),
        device_ids=[d.device_id for d in fleet.devices],
        speed_limit_kmh=fleet.config.speed_limit_kmh,
        severity=common_pb2.SEVERITY_MEDIUM,
        labels={"source": "simulator"},
    )
    try:
        try:
            await analytics.CreateGeofence(
                analytics_pb2.CreateGeofenceRequest(geofence=geofence),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            if _code(exc) != grpc.StatusCode.ALREADY_EXISTS:
                raise
            mask = field_mask_pb2.FieldMask(
                paths=["name", "kind", "boundary", "device_ids", "speed_limit_kmh", "severity", "labels"]
            )
            await analytics.UpdateGeofence(
                analytics_pb2.UpdateGeofenceRequest(geofence=geofence, update_mask=mask),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )
    except grpc.aio.AioRpcError as exc:
        log.warning(
            "the fleet geofence could not be set at analytics",
            extra={"code": _code(exc).name, "detail": exc.details()},
        )
        return False
    return True
