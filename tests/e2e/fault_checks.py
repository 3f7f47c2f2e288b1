"""What a fault run checks besides delivery: an operator's session at auth, the console's status, the
alerts that analytics' outbox raised, and the passages against the simulator's ground truth.

Clients reach the services of a `FaultSystem` through a static `MeshClient` (so retries and breakers
behave as for any caller) and the console over HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import grpc
import httpx

from itsmesh.v1 import analytics_pb2, analytics_pb2_grpc, auth_pb2, auth_pb2_grpc
from mesh.client import MeshClient
from services.simulator.plan import Plan, truth_records
from services.simulator.truth import COUNTED_MARGIN_S
from tests.e2e.accuracy_scoring import MATCH_WINDOW_S, by_lane, counted_crossings, match, measured
from tests.e2e.fault_system import ADMIN_PASSWORD, FaultSystem

ADMIN = "admin"
CALL_TIMEOUT_S = 5.0
_T = TypeVar("_T")


def mesh_client(system: FaultSystem) -> MeshClient:
    """A client of the system's gRPC services at their fixed addresses."""
    grpc_services = {n: [s.address] for n, s in system.services.items() if n != "console"}
    return MeshClient.static(grpc_services)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def until_ok(attempt: Callable[[], Awaitable[_T]], timeout_s: float = 30.0) -> tuple[_T, float]:
    """`attempt()` again every 0.2 s while it fails with UNAVAILABLE; its result and the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            return await attempt(), time.monotonic() - started
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() - started > timeout_s:
                raise
        await asyncio.sleep(0.2)


class Operator:
    """The first admin's session: log in, refresh, and use a token the way analysts and operators do."""

    def __init__(self, mesh: MeshClient) -> None:
        self._auth = mesh.stub("auth", auth_pb2_grpc.AuthServiceStub)
        self._analytics = mesh.stub("analytics", analytics_pb2_grpc.AnalyticsServiceStub)

    async def login(self) -> auth_pb2.TokenResponse:
        request = auth_pb2.LoginRequest(username=ADMIN, password=ADMIN_PASSWORD)
        return await self._auth.Login(request, timeout=CALL_TIMEOUT_S)

    async def refresh(self, refresh_token: str) -> auth_pb2.TokenResponse:
        request = auth_pb2.RefreshTokenRequest(refresh_token=refresh_token)
        return await self._auth.RefreshToken(request, timeout=CALL_TIMEOUT_S)

    async def introspect(self, token: str, as_token: str) -> auth_pb2.TokenInfo:
        request = auth_pb2.IntrospectTokenRequest(token=token)
        return await self._auth.IntrospectToken(request, metadata=bearer(as_token), timeout=CALL_TIMEOUT_S)

    async def pipeline_status(self, token: str) -> analytics_pb2.PipelineStatus:
        """An analyst call at analytics, which verifies `token` itself (cached JWKS, no call to auth)."""
        request = analytics_pb2.GetPipelineStatusRequest()
        return await self._analytics.GetPipelineStatus(
            request, metadata=bearer(token), timeout=CALL_TIMEOUT_S
        )


async def console_status(system: FaultSystem, token: str, timeout_s: float = 5.0) -> tuple[int, Any, float]:
    """GET /api/status of the console: HTTP status, JSON body (None when not JSON) and seconds taken."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        response = await client.get(
            f"{system.services['console'].url}/api/status", headers={"authorization": f"Bearer {token}"}
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    return response.status_code, body, time.monotonic() - started


# --- alerts raised through analytics' outbox ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertLedger:
    """Violations and anomalies analytics stored, and what became of them at the alert service."""

    sources: int
    """Violations plus anomalies stored by analytics."""
    delivered: int
    """Outbox entries marked sent."""
    without_entry: list[str]
    """Stored violations/anomalies with no outbox entry."""
    unsent: list[str]
    """Outbox entries not (yet) delivered."""
    without_raise: list[str]
    """Violations/anomalies whose id the alert service never recorded as a client_alert_id."""
    miscounted: list[str]
    """Alerts whose occurrence count differs from the raises recorded for them."""

    @property
    def consistent(self) -> bool:
        return not (self.without_entry or self.unsent or self.without_raise or self.miscounted)


_SOURCES = """
SELECT 'violation' AS kind, violation_id AS id FROM analytics.violations
UNION ALL SELECT 'anomaly', anomaly_id FROM analytics.anomalies
"""
_LEDGER = f"""
WITH sources AS ({_SOURCES})
SELECT s.kind, s.id, o.outbox_id IS NOT NULL AS has_entry, o.sent_at IS NOT NULL AS sent,
       r.alert_id
FROM sources s
LEFT JOIN analytics.alert_outbox o ON o.source_kind = s.kind AND o.source_id = s.id
LEFT JOIN alert.raises r ON r.client_alert_id = s.id
"""  # noqa: S608 - fixed SQL
_COUNTS = """
SELECT a.alert_id, a.occurrence_count, count(r.client_alert_id) AS raises
FROM alert.alerts a LEFT JOIN alert.raises r ON r.alert_id = a.alert_id
WHERE a.alert_id = ANY($1::uuid[])
GROUP BY a.alert_id, a.occurrence_count
"""


async def alert_ledger(database_url: str) -> AlertLedger:
    """Every violation and anomaly of the database against its outbox entry and its raise at alert."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(_LEDGER)
        alerts = list({r["alert_id"] for r in rows if r["alert_id"] is not None})
        counts = await conn.fetch(_COUNTS, alerts)
    finally:
        await conn.close()
    return AlertLedger(
        sources=len(rows),
        delivered=sum(1 for r in rows if r["sent"]),
        without_entry=sorted(r["id"] for r in rows if not r["has_entry"]),
        unsent=sorted(r["id"] for r in rows if r["has_entry"] and not r["sent"]),
        without_raise=sorted(r["id"] for r in rows if r["alert_id"] is None),
        miscounted=[
            f"{c['alert_id']}: {c['occurrence_count']} occurrences, {c['raises']} raises"
            for c in counts
            if c["occurrence_count"] != c["raises"]
        ],
    )


async def settled_alert_ledger(database_url: str, timeout_s: float = 30.0) -> tuple[AlertLedger, float]:
    """The ledger once it is consistent (or as it is after `timeout_s`), and the seconds that took."""
    started = time.monotonic()
    while True:
        ledger = await alert_ledger(database_url)
        waited = time.monotonic() - started
        if ledger.consistent or waited > timeout_s:
            return ledger, waited
        await asyncio.sleep(0.25)


async def wait_unsent(database_url: str, timeout_s: float) -> AlertLedger:
    """The ledger once at least one outbox entry waits undelivered (or after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ledger = await alert_ledger(database_url)
        if ledger.unsent or time.monotonic() > deadline:
            return ledger
        await asyncio.sleep(0.2)


# --- passages against the simulator's ground truth ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TruthComparison:
    """Counted crossings per (camera, lane, direction): the truth's and the passages analytics stored."""

    truth: Counter[tuple[str, str, str]]
    stored: Counter[tuple[str, str, str]]
    missing: list[str]
    """Counted vehicles without a passage (same lane and direction, within MATCH_WINDOW_S)."""
    extra: list[str]
    """Passages without a counted vehicle."""

    @property
    def exact(self) -> bool:
        return self.truth == self.stored and not self.missing and not self.extra


async def compare_with_truth(database_url: str, plan: Plan, start_time: float) -> TruthComparison:
    """Passages of the plan's cameras against the vehicles the truth counts.

    The truth does not count a crossing in the last COUNTED_MARGIN_S of the run; a passage there without
    a counted vehicle is left out rather than called extra.
    """
    truth = list(truth_records(plan, start_time, run_id="faults"))
    uncounted_after = start_time + plan.options.duration_s - COUNTED_MARGIN_S - MATCH_WINDOW_S
    expected: Counter[tuple[str, str, str]] = Counter()
    stored: Counter[tuple[str, str, str]] = Counter()
    missing: list[str] = []
    extra: list[str] = []
    conn = await asyncpg.connect(database_url)
    try:
        for camera in plan.cameras:
            crossings = counted_crossings(truth, camera.camera_id)
            rows = await conn.fetch(
                "SELECT track_id, lane, direction, time, speed_kmh FROM analytics.vehicle_passages "
                "WHERE camera_id = $1",
                camera.camera_id,
            )
            found, unmatched, free = match(crossings, measured(rows))
            free = [p for p in free if p.time <= uncounted_after]
            expected.update({(camera.camera_id, *k): n for k, n in by_lane(crossings).items()})
            stored.update({(camera.camera_id, *k): n for k, n in by_lane([*found.values(), *free]).items()})
            missing += [
                f"{c.camera_id} {c.lane}/{c.direction} +{c.time - start_time:.1f} s" for c in unmatched
            ]
            extra += [f"{camera.camera_id} {p.lane}/{p.direction} +{p.time - start_time:.1f} s" for p in free]
    finally:
        await conn.close()
    return TruthComparison(expected, stored, missing, extra)


async def settled_truth_comparison(
    database_url: str, plan: Plan, start_time: float, timeout_s: float
) -> TruthComparison:
    """`compare_with_truth` once exact, or as it is after `timeout_s`: analytics emits the passages of
    vehicles still in view at the end of a run only when the camera has been idle for `idle_flush_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        comparison = await compare_with_truth(database_url, plan, start_time)
        if comparison.exact or time.monotonic() > deadline:
            return comparison
        await asyncio.sleep(0.5)
