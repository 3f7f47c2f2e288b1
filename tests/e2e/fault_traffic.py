"""The rest of a soak's mixed load: analysts querying, alerts raised, an operator watching the console.

Each kind of call runs in its own loop at a fixed pace (a slow answer delays only its own loop) through a
static `MeshClient` as the admin, and every answer's latency is kept by minute of the run, so a soak can
check that the p99 of each kind stays level and that the console's status answers in time throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import grpc
import httpx
from google.protobuf import duration_pb2, timestamp_pb2

from itsmesh.v1 import alert_pb2, alert_pb2_grpc, analytics_pb2, analytics_pb2_grpc, auth_pb2_grpc, common_pb2
from services.simulator.access import UserToken
from tests.e2e.fault_checks import ADMIN, mesh_client
from tests.e2e.fault_system import ADMIN_PASSWORD, FaultSystem

STATUS = "console status"
KINDS: Final = ("GetTrafficMetrics", "ListPassages", "RaiseAlert", STATUS)
PACE_S: Final = {"GetTrafficMetrics": 0.5, "ListPassages": 0.5, "RaiseAlert": 0.25, STATUS: 1.0}
"""Seconds between the starts of two calls of a kind (a call taking longer delays the next)."""
CALL_TIMEOUT_S: Final = 5.0
QUERY_WINDOW_S: Final = 600.0
ALERT_FINGERPRINTS: Final = 20
"""RaiseAlert cycles through this many label sets: most raises deduplicate into an open alert."""
# Codes a call may end with while the broker is frozen or Redis restarts; any other failure is a fault.
TRANSIENT: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


def p99(values: Sequence[float]) -> float:
    """99th percentile, nearest rank."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(0.99 * len(ranked)) - 1)]


@dataclass
class Latencies:
    """Seconds each call of each kind took, by minute of the run, and how calls failed."""

    started: float = field(default_factory=time.monotonic)
    by_minute: dict[str, dict[int, list[float]]] = field(default_factory=lambda: defaultdict(dict))
    failures: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def record(self, kind: str, seconds: float, at: float) -> None:
        self.by_minute[kind].setdefault(int((at - self.started) // 60), []).append(seconds)

    def fail(self, kind: str, code: str) -> None:
        self.failures[kind][code] += 1

    def minutes(self, kind: str, full_until: float) -> list[tuple[int, float, int]]:
        """(minute, p99, calls) of every minute that ended by `full_until` (monotonic)."""
        complete = int((full_until - self.started) // 60)
        return [(m, p99(v), len(v)) for m, v in sorted(self.by_minute[kind].items()) if m < complete]

    def everything(self, kind: str) -> list[float]:
        return [s for values in self.by_minute[kind].values() for s in values]


def unstable(latencies: Latencies, full_until: float, factor: float, floor_s: float) -> list[str]:
    """Kinds whose last full minute's p99 exceeds `factor` times the first's (or `floor_s`, if larger)."""
    found = []
    for kind in KINDS:
        minutes = latencies.minutes(kind, full_until)
        if len(minutes) < 2:
            continue
        first, last = minutes[0][1], minutes[-1][1]
        if last > factor * max(first, floor_s):
            found.append(f"{kind}: p99 {first * 1000:.0f} ms in minute 0, {last * 1000:.0f} ms in the last")
    return found


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class MixedTraffic:
    """Analyst queries over `cameras()`, RaiseAlert and console status polls, until stopped."""

    def __init__(self, system: FaultSystem, cameras: Callable[[], list[str]], latencies: Latencies) -> None:
        self._system = system
        self._cameras = cameras
        self.latencies = latencies
        self._raised = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with mesh_client(self._system) as mesh, httpx.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
            token = UserToken(mesh.stub("auth", auth_pb2_grpc.AuthServiceStub), ADMIN, ADMIN_PASSWORD)
            analytics = mesh.stub("analytics", analytics_pb2_grpc.AnalyticsServiceStub)
            alerts = mesh.stub("alert", alert_pb2_grpc.AlertServiceStub)

            async def metrics() -> None:
                cameras = self._cameras()
                if cameras:
                    request = analytics_pb2.GetTrafficMetricsRequest(
                        camera_ids=cameras,
                        time_range=self._window(),
                        bucket=duration_pb2.Duration(seconds=60),
                        page_size=1000,
                    )
                    await analytics.GetTrafficMetrics(
                        request, metadata=await token.metadata(), timeout=CALL_TIMEOUT_S
                    )

            async def passages() -> None:
                cameras = self._cameras()
                if cameras:
                    request = analytics_pb2.ListPassagesRequest(
                        camera_ids=cameras, time_range=self._window(), page_size=100
                    )
                    await analytics.ListPassages(
                        request, metadata=await token.metadata(), timeout=CALL_TIMEOUT_S
                    )

            async def raise_alert() -> None:
                self._raised += 1
                request = alert_pb2.RaiseAlertRequest(
                    client_alert_id=uuid.uuid4().hex,
                    labels={"kind": "soak", "unit": f"soak-{self._raised % ALERT_FINGERPRINTS}"},
                    severity=common_pb2.SEVERITY_LOW,
                    source="soak",
                )
                await alerts.RaiseAlert(request, metadata=await token.metadata(), timeout=CALL_TIMEOUT_S)

            async def status() -> None:
                response = await http.get(
                    f"{self._system.services['console'].url}/api/status",
                    headers={"authorization": f"Bearer {await token()}"},
                )
                if response.status_code != 200:
                    raise _HttpFailure(f"HTTP {response.status_code}")

            calls = {"GetTrafficMetrics": metrics, "ListPassages": passages, "RaiseAlert": raise_alert}
            calls[STATUS] = status
            async with asyncio.TaskGroup() as group:
                for kind, call in calls.items():
                    group.create_task(self._loop(kind, call, stop))

    def _window(self) -> common_pb2.TimeRange:
        now = time.time()
        return common_pb2.TimeRange(start_time=_timestamp(now - QUERY_WINDOW_S), end_time=_timestamp(now))

    async def _loop(self, kind: str, call: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        pace = PACE_S[kind]
        while not stop.is_set():
            began = time.monotonic()
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                self.latencies.fail(kind, exc.code().name)
            except (httpx.HTTPError, _HttpFailure) as exc:
                self.latencies.fail(kind, str(exc) or type(exc).__name__)
            else:
                self.latencies.record(kind, time.monotonic() - began, began)
            rest = pace - (time.monotonic() - began)
            if rest > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rest)


class _HttpFailure(Exception):
    """The console answered, but not 200."""
