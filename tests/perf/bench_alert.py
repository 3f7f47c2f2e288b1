"""Alert service benchmarks, each against a raw baseline measured in the same run.

- RaiseAlert on the dedup path (gRPC → validation → one statement) versus a raw asyncpg upsert.
- RaiseAlert → webhook received, end to end, at a steady 200 alerts/s with no group wait (each alert its
  own group): p50/p99 latency and the delivered rate, versus a bare HTTP POST (the service's own HTTP
  client, kept-alive connections) to the same receiver at the same pace: what the last hop alone costs.
  Both paths are warmed up for a second first (connections opened, statements prepared).
- The grouping decision (an alert joining an existing group: one transaction) versus a raw asyncpg upsert.
- Escalation timers: how late a tier's notification arrives after it is due (target ±1 s).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import grpc

from infrastructure.embedded import InfraUrls
from itsmesh.v1 import alert_pb2, alert_pb2_grpc, common_pb2
from mesh.host import ServiceHost
from services.alert.config import AlertSettings
from services.alert.dispatch import GroupJoin
from services.alert.fingerprint import fingerprint
from services.alert.group_store import GroupStore
from services.alert.grouping import on_alert
from services.alert.http_post import http_poster
from services.alert.routing import Timing
from services.alert.service import build
from tests.integration.alert_receiver import WebhookReceiver, webhook_receiver
from tests.perf.results import BenchResult

CONCURRENCY = 16
E2E_RATE = 200.0  # alerts/s, the target load
ESCALATION_AFTER_S = 1.0
FINGERPRINTS = 50  # distinct open alerts the raises repeat, so nearly every raise is a dedup

_BASELINE_TABLE = """
CREATE TABLE IF NOT EXISTS public.bench_alert_upsert (
    fingerprint text PRIMARY KEY,
    labels jsonb NOT NULL,
    occurrence_count bigint NOT NULL DEFAULT 1,
    last_seen_time timestamptz NOT NULL
)"""
_BASELINE_UPSERT = (
    "INSERT INTO public.bench_alert_upsert (fingerprint, labels, last_seen_time) VALUES ($1, $2, now())"
    " ON CONFLICT (fingerprint) DO UPDATE SET occurrence_count = bench_alert_upsert.occurrence_count + 1,"
    " last_seen_time = EXCLUDED.last_seen_time"
)


async def _measure(
    call: Callable[[int], Awaitable[object]], seconds: float, concurrency: int = CONCURRENCY
) -> tuple[float, float]:
    """Calls per second and p99 latency (ms) from ``concurrency`` concurrent callers."""
    for i in range(FINGERPRINTS):  # open every alert first, so the timed part is the dedup path
        await call(i)
    stop_at = time.perf_counter() + seconds
    latencies: list[float] = []

    async def caller(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await call(i % FINGERPRINTS)
            latencies.append(time.perf_counter() - started)
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return len(latencies) / elapsed, latencies[int(len(latencies) * 0.99)] * 1000


async def run(quick: bool, urls: InfraUrls) -> list[BenchResult]:
    """Alternate raw and service rounds so machine noise hits both alike."""
    seconds = 1.5 if quick else 4.0
    rounds = 2 if quick else 4
    run_id = uuid.uuid4().hex[:8]
    settings = AlertSettings(
        database_url=urls.database_url,
        redis_url=urls.redis_url,
        kafka_bootstrap_servers=urls.kafka_bootstrap_servers,
        bind_host="127.0.0.1",
        grpc_port=0,
        register_in_discovery=False,
        metrics_port=None,
        require_auth=False,
        consume_camera_events=False,
    )
    host = ServiceHost(build(settings))
    await host.start()
    pool = await asyncpg.create_pool(urls.database_url, min_size=1, max_size=10)
    assert pool is not None
    await pool.execute(_BASELINE_TABLE)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
    stub = alert_pb2_grpc.AlertServiceStub(channel)

    def labels(i: int, round_no: int) -> dict[str, str]:
        return {"kind": "bench", "camera_id": f"bench-{run_id}-{round_no}-{i}"}

    raw: list[tuple[float, float]] = []
    service: list[tuple[float, float]] = []
    raw_single: list[tuple[float, float]] = []
    service_single: list[tuple[float, float]] = []
    try:
        for round_no in range(rounds):

            async def upsert(i: int, round_no: int = round_no) -> object:
                values = labels(i, round_no)
                return await pool.execute(_BASELINE_UPSERT, fingerprint(values), json.dumps(values))

            async def raise_alert(i: int, round_no: int = round_no) -> object:
                request = alert_pb2.RaiseAlertRequest(
                    client_alert_id=uuid.uuid4().hex,
                    labels=labels(i, round_no),
                    severity=common_pb2.SEVERITY_MEDIUM,
                    source="bench",
                )
                return await stub.RaiseAlert(request)

            raw.append(await _measure(upsert, seconds))
            service.append(await _measure(raise_alert, seconds))
            raw_single.append(await _measure(upsert, seconds / 2, concurrency=1))
            service_single.append(await _measure(raise_alert, seconds / 2, concurrency=1))
    finally:
        await channel.close()
        await pool.execute("DROP TABLE IF EXISTS public.bench_alert_upsert")
        await pool.close()
        await host.stop()

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    e2e = await _end_to_end(urls, 3.0 if quick else 8.0, run_id)
    pool = await asyncpg.create_pool(urls.database_url, min_size=1, max_size=4)
    assert pool is not None
    try:
        await pool.execute(_BASELINE_TABLE)
        group_p99, group_raw_p99 = await _grouping_decision(urls, pool, seconds / 2, run_id)
        await pool.execute("DROP TABLE IF EXISTS public.bench_alert_upsert")
    finally:
        await pool.close()
    worst_late, median_late = await _escalation_lateness(urls, 10 if quick else 30, run_id)
    bare_post = "bare POST, same HTTP client, same receiver and pace"
    extra = [
        BenchResult(
            name="alert_e2e_webhook_p50_ms_at_200rps",
            value=e2e["p50"],
            unit="ms",
            baseline=e2e["raw_p50"],
            baseline_name=bare_post,
            target="informational (RaiseAlert → webhook received, no group wait)",
        ),
        BenchResult(
            name="alert_e2e_webhook_p99_ms_at_200rps",
            value=e2e["p99"],
            unit="ms",
            baseline=e2e["raw_p99"],
            baseline_name=bare_post,
            target="p99 ≤ 50 ms at 200 alerts/s (seed reference < 200 ms)",
        ),
        BenchResult(
            name="alert_e2e_delivered_per_s",
            value=e2e["rate"],
            unit="alerts/s",
            baseline=e2e["raw_rate"],
            baseline_name=bare_post,
            target=f"sustains the offered {E2E_RATE:.0f} alerts/s",
        ),
        BenchResult(
            name="alert_group_join_p99_ms",
            value=group_p99,
            unit="ms",
            baseline=group_raw_p99,
            baseline_name="raw asyncpg INSERT … ON CONFLICT",
            target="p99 ≤ 5 ms (the grouping decision: an alert joins its group)",
        ),
        BenchResult(
            name="alert_escalation_lateness_max_ms",
            value=worst_late,
            unit="ms",
            baseline=1000.0,
            baseline_name="target",
            target=f"within ±1 s (median {median_late:.0f} ms; poll every 0.5 s)",
        ),
    ]

    return [
        *extra,
        BenchResult(
            name="alert_raise_dedup_rps",
            value=median([r for r, _ in service]),
            unit="raises/s",
            baseline=median([r for r, _ in raw]),
            baseline_name="raw asyncpg INSERT … ON CONFLICT",
            target="informational (a raise is one statement: upsert + record of the client_alert_id)",
        ),
        BenchResult(
            name="alert_raise_dedup_p99_ms_saturated",
            value=median([p for _, p in service]),
            unit="ms",
            baseline=median([p for _, p in raw]),
            baseline_name="raw asyncpg INSERT … ON CONFLICT",
            target=f"informational ({CONCURRENCY} callers at full speed: queueing, not the decision)",
        ),
        BenchResult(
            name="alert_raise_dedup_p99_ms",
            value=median([p for _, p in service_single]),
            unit="ms",
            baseline=median([p for _, p in raw_single]),
            baseline_name="raw asyncpg INSERT … ON CONFLICT",
            target="p99 ≤ 5 ms (one caller: the dedup decision round trip)",
        ),
    ]


def _settings(urls: InfraUrls, **overrides: object) -> AlertSettings:
    values: dict[str, object] = {
        "database_url": urls.database_url,
        "redis_url": urls.redis_url,
        "kafka_bootstrap_servers": urls.kafka_bootstrap_servers,
        "bind_host": "127.0.0.1",
        "grpc_port": 0,
        "register_in_discovery": False,
        "metrics_port": None,
        "require_auth": False,
        "consume_camera_events": False,
        **overrides,
    }
    return AlertSettings(**values)  # type: ignore[arg-type]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


async def _paced(count: int, rate: float, send: Callable[[int], Awaitable[object]]) -> list[float]:
    """Start ``send(i)`` at a steady ``rate`` (open loop: a slow answer does not delay the next send);
    the start time of each."""
    started: list[float] = []
    tasks: list[asyncio.Task[object]] = []
    t0 = time.perf_counter()
    for i in range(count):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        started.append(time.perf_counter())
        tasks.append(asyncio.ensure_future(send(i)))
    await asyncio.gather(*tasks)
    return started


async def _arrivals(
    hook: WebhookReceiver, key: Callable[[dict[str, object]], int], count: int
) -> dict[int, float]:
    """Arrival time per index once ``count`` requests came (or 10 s passed)."""
    deadline = time.perf_counter() + 10.0
    while len(hook.received) < count and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    return {key(r.json()): r.arrival_time for r in hook.received}


async def _end_to_end(urls: InfraUrls, seconds: float, run_id: str) -> dict[str, float]:
    """RaiseAlert → webhook received at E2E_RATE, and the bare POST baseline, alternated twice."""
    count = int(E2E_RATE * seconds)
    figures: dict[str, list[float]] = {
        "p50": [],
        "p99": [],
        "rate": [],
        "raw_p50": [],
        "raw_p99": [],
        "raw_rate": [],
    }
    async with webhook_receiver() as hook, http_poster() as http:
        host = ServiceHost(build(_settings(urls)))
        await host.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
        stub = alert_pb2_grpc.AlertServiceStub(channel)
        receiver = f"bench-{run_id}"
        config = {
            "receivers": [{"name": receiver, "webhook": {"url": hook.url()}}],
            "route": {"receiver": receiver, "group_wait": 0, "group_by": ["camera_id"]},
        }
        await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=json.dumps(config)))
        try:
            # Warm-up, not measured: one second at the same pace through both paths, so that neither
            # round pays for opening its connections (PostgreSQL pool, HTTP) and preparing statements.
            warm = int(E2E_RATE)
            await _paced(warm, E2E_RATE, lambda i: http.post(hook.url("/raw"), b"{}", {}, 10.0))
            await _paced(
                warm,
                E2E_RATE,
                lambda i: stub.RaiseAlert(
                    alert_pb2.RaiseAlertRequest(
                        client_alert_id=uuid.uuid4().hex,
                        labels={"kind": "bench_warm", "camera_id": f"warm-{run_id}-{i}"},
                        severity=common_pb2.SEVERITY_HIGH,
                    )
                ),
            )
            await _arrivals(hook, lambda body: 0, 2 * warm)
            for round_no in range(2):
                hook.received.clear()

                async def post(i: int, round_no: int = round_no) -> object:
                    body = json.dumps({"i": i, "round": round_no, "alerts": [{"labels": {"kind": "bench"}}]})
                    return await http.post(
                        hook.url("/raw"), body.encode(), {"Content-Type": "application/json"}, 10.0
                    )

                raw_started = await _paced(count, E2E_RATE, post)
                raw = await _arrivals(hook, lambda body: int(str(body["i"])), count)
                raw_latency = [(raw[i] - raw_started[i]) * 1000 for i in range(count) if i in raw]
                figures["raw_p50"].append(_percentile(raw_latency, 0.5))
                figures["raw_p99"].append(_percentile(raw_latency, 0.99))
                figures["raw_rate"].append(len(raw) / (max(raw.values()) - raw_started[0]))

                hook.received.clear()
                prefix = f"e2e-{run_id}-{round_no}-"

                async def raise_alert(i: int, prefix: str = prefix) -> object:
                    request = alert_pb2.RaiseAlertRequest(
                        client_alert_id=uuid.uuid4().hex,
                        labels={"kind": "bench_e2e", "camera_id": f"{prefix}{i}"},
                        severity=common_pb2.SEVERITY_HIGH,
                        source="bench",
                    )
                    return await stub.RaiseAlert(request)

                def index(body: dict[str, object], prefix: str = prefix) -> int:
                    alerts = body["alerts"]
                    assert isinstance(alerts, list)
                    return int(alerts[0]["labels"]["camera_id"].removeprefix(prefix))

                started = await _paced(count, E2E_RATE, raise_alert)
                arrived = await _arrivals(hook, index, count)
                latency = [(arrived[i] - started[i]) * 1000 for i in range(count) if i in arrived]
                figures["p50"].append(_percentile(latency, 0.5))
                figures["p99"].append(_percentile(latency, 0.99) if len(arrived) == count else float("inf"))
                figures["rate"].append(
                    len(arrived) / (max(arrived.values()) - started[0]) if arrived else 0.0
                )
        finally:
            await channel.close()
            await host.stop()
    return {name: sorted(values)[len(values) // 2] for name, values in figures.items()}


async def _grouping_decision(
    urls: InfraUrls, pool: asyncpg.Pool, seconds: float, run_id: str
) -> tuple[float, float]:
    """p99 of an alert joining its group (GroupStore.join) and of the raw upsert, one caller each."""
    groups = GroupStore(pool)
    timing = Timing(group_wait_s=30.0)
    alert_ids: list[uuid.UUID] = []
    for i in range(FINGERPRINTS):  # alerts to join, in FINGERPRINTS // 5 groups
        alert_id = uuid.uuid4()
        values = {"kind": "bench_group", "camera_id": f"group-{run_id}-{i}"}
        await pool.execute(
            "INSERT INTO alert.alerts (alert_id, fingerprint, labels, severity, status, last_client_alert_id,"
            " first_seen_time, last_seen_time) VALUES ($1, $2, $3, 3, 1, $4, now(), now())",
            alert_id,
            fingerprint(values),
            json.dumps(values),
            f"bench-{run_id}-{i}",
        )
        alert_ids.append(alert_id)

    async def join(i: int) -> object:
        key = f"bench:{run_id}:{i % (FINGERPRINTS // 5)}"
        now = datetime.now(UTC)
        joined = GroupJoin("bench", 1, key, {"camera_id": key}, timing)
        alert = alert_pb2.Alert(alert_id=str(alert_ids[i]))
        decide = lambda state, t: on_alert(state, t, now)  # noqa: E731
        # as the service joins a group its raise found existing (the timed joins all are)
        return await groups.join([joined], alert, now, decide, key, likely_new=False)

    async def upsert(i: int) -> object:
        values = {"kind": "bench_group", "camera_id": f"raw-{run_id}-{i}"}
        return await pool.execute(_BASELINE_UPSERT, fingerprint(values), json.dumps(values))

    service = [(await _measure(join, seconds, concurrency=1))[1] for _ in range(2)]
    raw = [(await _measure(upsert, seconds, concurrency=1))[1] for _ in range(2)]
    await pool.execute("DELETE FROM alert.groups WHERE group_key LIKE $1", f"bench:{run_id}:%")
    await pool.execute("DELETE FROM alert.alerts WHERE alert_id = ANY($1::uuid[])", alert_ids)
    return min(service), min(raw)


async def _escalation_lateness(urls: InfraUrls, alerts: int, run_id: str) -> tuple[float, float]:
    """Worst and median lateness (ms) of a tier due ESCALATION_AFTER_S after the alert fired."""
    async with webhook_receiver() as first, webhook_receiver() as second:
        host = ServiceHost(build(_settings(urls)))
        await host.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
        stub = alert_pb2_grpc.AlertServiceStub(channel)
        config = {
            "receivers": [
                {"name": f"tier0-{run_id}", "webhook": {"url": first.url()}},
                {"name": f"tier1-{run_id}", "webhook": {"url": second.url()}},
            ],
            "escalation_policies": [
                {
                    "name": "bench",
                    "tiers": [
                        {"after": 0, "receivers": [f"tier0-{run_id}"]},
                        {"after": ESCALATION_AFTER_S, "receivers": [f"tier1-{run_id}"]},
                    ],
                }
            ],
            "route": {
                "receiver": f"tier0-{run_id}",
                "group_wait": 0,
                "group_by": ["camera_id"],
                "escalation_policy": "bench",
            },
        }
        await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=json.dumps(config)))
        fired: dict[str, float] = {}
        try:
            for i in range(alerts):
                camera = f"esc-{run_id}-{i}"
                fired[camera] = time.perf_counter()
                await stub.RaiseAlert(
                    alert_pb2.RaiseAlertRequest(
                        client_alert_id=uuid.uuid4().hex,
                        labels={"kind": "bench_escalation", "camera_id": camera},
                        severity=common_pb2.SEVERITY_HIGH,
                    )
                )
                await asyncio.sleep(0.1)  # spread over the escalation poll
            deadline = time.perf_counter() + ESCALATION_AFTER_S + 10
            while len(second.received) < alerts and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
        finally:
            await channel.close()
            await host.stop()
    lateness = [
        (r.arrival_time - fired[r.json()["alerts"][0]["labels"]["camera_id"]] - ESCALATION_AFTER_S) * 1000
        for r in second.received
    ]
    if len(lateness) < alerts:
        return float("inf"), float("inf")
    return max(abs(x) for x in lateness), _percentile(lateness, 0.5)
