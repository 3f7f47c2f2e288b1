"""The simulator's shell: authenticate, register, write the ground truth, stream in real time.

``run_simulation`` builds nothing itself: the ``Plan`` says what happens at every scene time. Scene time
0 is ``start_time`` (wall clock, a moment after registration), each frame is rendered and sent when its
capture time comes and each reading when its time comes, through ``mesh.edge`` sessions (device tokens,
buffering, resume) or, for runs with duplicate or out-of-order frames, a raw StreamFrames stream. The
ground truth is written before the first frame, since it is known in advance.

Frame and reading sequences are ``sequence_base`` (start time in milliseconds) plus the plan's
sequence, so a later run never reuses a sequence the streaming service already settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc

from itsmesh.v1 import (
    analytics_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    streaming_pb2_grpc,
)
from mesh.client import MeshClient
from mesh.edge import DeviceCredentials, EdgeCounters, EdgeSession, Reading, TelemetryStream
from mesh.tasks import stop_task
from mesh.tokens import ServiceTokenSource
from services.simulator.access import (
    Metadata,
    UserToken,
    ensure_geofence,
    register_camera,
    register_device,
    user_credentials,
)
from services.simulator.config import SimulatorSettings
from services.simulator.gps import Reading as GpsReading
from services.simulator.messages import frame_message
from services.simulator.plan import CameraPlan, Plan, truth_records
from services.simulator.sinks import EdgeFrameSink, FrameSink, RawFrameSink
from services.simulator.truth import write_truth

log = logging.getLogger(__name__)

_T = TypeVar("_T")

START_DELAY_S: Final = 1.0
FLUSH_TIMEOUT_S: Final = 10.0
STARTUP_TIMEOUT_S: Final = 60.0
PROGRESS_INTERVAL_S: Final = 0.5


@dataclass(slots=True)
class SourceProgress:
    """What one camera or device has done so far."""

    source_id: str
    kind: str
    planned: int
    generated: int = 0
    counters: EdgeCounters = field(default_factory=EdgeCounters)
    error: str = ""
    done: bool = False


@dataclass(slots=True)
class RunProgress:
    """The whole run, for the live display and the final summary."""

    run_id: str
    duration_s: float
    start_time: float = 0.0
    now: float = 0.0
    sources: list[SourceProgress] = field(default_factory=list)
    truth_path: Path | None = None
    transport: str = ""
    geofence: bool = False
    """Whether analytics took the fleet's geofence."""

    @property
    def elapsed_s(self) -> float:
        return max(0.0, self.now - self.start_time) if self.start_time else 0.0


@dataclass(frozen=True, slots=True)
class RunTarget:
    """How to reach the services and whether to authenticate."""

    settings: SimulatorSettings
    authenticate: bool = True
    use_edge: bool = True


async def _retry_startup(what: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
    """Retry ``attempt`` while the service is not reachable yet (just started, not discovered yet)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    delay = 0.25
    while True:
        try:
            return await attempt()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            log.info("waiting for a service", extra={"step": what, "error": exc.details()})
        await asyncio.sleep(delay)
        delay = min(2.0, delay * 2)


class Simulation:
    """One run of a plan against the services."""

    def __init__(
        self,
        plan: Plan,
        target: RunTarget,
        *,
        truth_path: Path | None,
        on_progress: Callable[[RunProgress], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.target = target
        self.truth_path = truth_path
        self.on_progress = on_progress
        self.clock = clock
        self.progress = RunProgress(run_id=uuid.uuid4().hex[:12], duration_s=plan.options.duration_s)
        self.progress.truth_path = truth_path
        self._wants_raw = plan.options.duplicate_rate > 0 or plan.options.out_of_order_rate > 0

    def _mesh_client(self) -> Awaitable[MeshClient]:
        settings = self.target.settings
        services = ["streaming", "auth", "analytics"] if self.target.authenticate else ["streaming"]
        if settings.streaming_address is not None:
            addresses = {"streaming": [settings.streaming_address]}
            if settings.auth_address is not None:
                addresses["auth"] = [settings.auth_address]
            if settings.analytics_address is not None:
                addresses["analytics"] = [settings.analytics_address]

            async def static() -> MeshClient:
                return MeshClient.static(addresses)

            return static()
        return MeshClient.from_registry(settings.redis_url, services)

    def _edge_session(self, credentials: DeviceCredentials | None) -> EdgeSession:
        settings = self.target.settings
        where: dict[str, Any] = (
            {"address": settings.streaming_address}
            if settings.streaming_address is not None
            else {"redis_url": settings.redis_url}
        )
        return EdgeSession(
            credentials,
            auth_url=settings.auth_url if credentials is not None else None,
            client_version="itsmesh-simulator/0.1.0",
            **where,
        )

    async def run(self, stop: asyncio.Event) -> RunProgress:
        """Register, write the truth, stream until the plan ends or ``stop`` is set; the final progress."""
        async with AsyncExitStack() as stack:
            mesh = await self._mesh_client()
            stack.push_async_callback(mesh.close)
            registering = asyncio.create_task(self._register(mesh), name="simulator-register")
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({registering, stopped}, return_when=asyncio.FIRST_COMPLETED)
            await stop_task(stopped)
            if not registering.done():  # stopped while services were still coming up
                await stop_task(registering)
                return self.progress
            metadata, credentials = registering.result()
            start_time = self.clock() + START_DELAY_S
            base = int(start_time * 1000)
            self.progress.start_time = start_time
            if self.truth_path is not None:
                write_truth(self.truth_path, truth_records(self.plan, start_time, self.progress.run_id, base))
            streams = await self._open_streams(stack, credentials, metadata, stop, base)
            reporter = asyncio.create_task(self._report(), name="simulator-progress")
            try:
                async with asyncio.TaskGroup() as group:
                    for stream in streams:
                        group.create_task(stream())
            finally:
                await stop_task(reporter)
                self._publish()
        return self.progress

    async def _register(self, mesh: MeshClient) -> tuple[Metadata | None, dict[str, DeviceCredentials]]:
        """Log in, register every device at auth and every camera at streaming, set the geofence.

        Returns the user's metadata (None without authentication) and each device's credentials.
        """
        metadata: Metadata | None = None
        credentials: dict[str, DeviceCredentials] = {}
        if self.target.authenticate:
            auth = mesh.stub("auth", auth_pb2_grpc.AuthServiceStub)
            username, password = await _retry_startup(
                "login", partial(user_credentials, self.target.settings, auth)
            )
            token = UserToken(auth, username, password)
            metadata = await _retry_startup("login", token.metadata)
            kinds = [(c.camera_id, auth_pb2.DEVICE_KIND_CAMERA) for c in self.plan.cameras]
            kinds += [(d.device_id, auth_pb2.DEVICE_KIND_TELEMETRY_UNIT) for d in self.plan.fleet.devices]
            for device_id, kind in kinds:
                credentials[device_id] = await _retry_startup(
                    "register device", partial(register_device, auth, device_id, kind, await token.metadata())
                )
            if self.plan.fleet.devices:
                analytics = mesh.stub("analytics", analytics_pb2_grpc.AnalyticsServiceStub)
                self.progress.geofence = await ensure_geofence(
                    analytics, self.plan.fleet, await token.metadata()
                )
            metadata = await token.metadata()
        streaming = mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub)
        for camera in self.plan.cameras:
            await _retry_startup(
                "register camera", partial(register_camera, streaming, camera.registration, metadata or ())
            )
        return metadata, credentials

    async def _open_streams(
        self,
        stack: AsyncExitStack,
        credentials: dict[str, DeviceCredentials],
        metadata: Metadata | None,
        stop: asyncio.Event,
        base: int,
    ) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """One frame or telemetry stream per source (closed by ``stack``); what each then runs."""
        streams: list[Callable[[], Coroutine[Any, Any, None]]] = []
        raw = self._wants_raw or not self.target.use_edge
        self.progress.transport = "raw StreamFrames" if raw else "mesh.edge"
        for camera in self.plan.cameras:
            progress = SourceProgress(camera.camera_id, "camera", _planned_frames(camera))
            self.progress.sources.append(progress)
            sink = await self._frame_sink(stack, camera, credentials.get(camera.camera_id), raw, metadata)
            streams.append(partial(self._stream_camera, camera, sink, progress, stop, base))
        for device in self.plan.fleet.devices:
            readings = self.plan.fleet.readings(device)
            progress = SourceProgress(device.device_id, "device", len(readings))
            self.progress.sources.append(progress)
            device_credentials = credentials.get(device.device_id)
            if device_credentials is None:
                progress.error = "not sent: telemetry needs device credentials (auth)"
                progress.done = True
                continue
            session = self._edge_session(device_credentials)
            await stack.enter_async_context(session)
            telemetry = session.telemetry()
            streams.append(partial(self._stream_device, readings, telemetry, progress, stop, base))
        return streams

    async def _frame_sink(
        self,
        stack: AsyncExitStack,
        camera: CameraPlan,
        credentials: DeviceCredentials | None,
        raw: bool,
        metadata: Metadata | None,
    ) -> FrameSink:
        if not raw:
            session = self._edge_session(credentials)
            await stack.enter_async_context(session)
            return EdgeFrameSink(session.camera(camera.camera_id))
        settings = self.target.settings
        if credentials is not None:
            # Stream as the camera itself: its own device token, as the edge library would.
            device_token = await ServiceTokenSource(
                settings.auth_url, credentials.device_id, credentials.api_key
            )()
            metadata = (("authorization", f"Bearer {device_token}"),)
        mesh = await self._mesh_client()
        stack.push_async_callback(mesh.close)
        sink = RawFrameSink(
            mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub), camera.camera_id, metadata
        )
        await _retry_startup("open frame stream", sink.start)
        return sink

    async def _wait_until(self, due: float, stop: asyncio.Event) -> bool:
        """Sleep until wall-clock ``due``; False when ``stop`` was set first."""
        delay = due - self.clock()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
        return not stop.is_set()

    async def _stream_camera(
        self, camera: CameraPlan, sink: FrameSink, progress: SourceProgress, stop: asyncio.Event, base: int
    ) -> None:
        frames, _ = camera.frames()
        start = self.progress.start_time
        jpegs: dict[int, bytes] = {}
        try:
            for frame in frames:
                if not await self._wait_until(start + frame.t, stop):
                    break
                jpeg = jpegs.pop(frame.sequence, None)
                if jpeg is None:
                    jpeg = await asyncio.to_thread(camera.renderer.jpeg, frame.t, frame.sequence)
                if self.plan.options.duplicate_rate > 0 and not frame.resend:
                    jpegs[frame.sequence] = jpeg  # a duplicate follows at once, or not at all
                    if len(jpegs) > 4:
                        jpegs.pop(next(iter(jpegs)))
                await sink.send(frame_message(camera, frame, jpeg, start, base))
                progress.generated += 1
                progress.counters = sink.counters
            if not await sink.close(FLUSH_TIMEOUT_S):
                progress.error = "frames still unsettled at the end"
        except (ConnectionError, grpc.aio.AioRpcError) as exc:
            progress.error = str(exc)
            log.warning("camera stream failed", extra={"camera_id": camera.camera_id, "error": str(exc)})
        finally:
            progress.counters = sink.counters
            progress.done = True

    async def _stream_device(
        self,
        readings: list[GpsReading],
        stream: TelemetryStream,
        progress: SourceProgress,
        stop: asyncio.Event,
        base: int,
    ) -> None:
        start = self.progress.start_time
        for reading in readings:
            if not await self._wait_until(start + reading.t, stop):
                break
            await stream.send(
                Reading(
                    latitude_deg=reading.latitude_deg,
                    longitude_deg=reading.longitude_deg,
                    speed_kmh=reading.speed_kmh,
                    heading_deg=reading.heading_deg,
                    reading_time=start + reading.t,
                    horizontal_accuracy_m=3.0,
                    sequence=base + reading.sequence,
                )
            )
            progress.generated += 1
            progress.counters = stream.counters
        settled = await stream.flush(FLUSH_TIMEOUT_S)
        progress.counters = stream.counters
        if not settled:  # an error the stream recovered from is not worth showing
            progress.error = stream.last_error or "readings still unsettled at the end"
        progress.done = True

    def _publish(self) -> None:
        self.progress.now = self.clock()
        if self.on_progress is not None:
            self.on_progress(self.progress)

    async def _report(self) -> None:
        while True:
            self._publish()
            await asyncio.sleep(PROGRESS_INTERVAL_S)


def _planned_frames(camera: CameraPlan) -> int:
    _, stats = camera.frames()
    return stats.captured + len(stats.duplicated)
