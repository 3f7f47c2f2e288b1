"""Analytics storage: COPY ingest against multi-row INSERT, and GetTrafficMetrics latency over months of
10 s windows against the same SQL sent raw.

Ingest: the same vehicle-passage rows are written once through ``writer.write_batch`` (COPY into a staging
table, then INSERT … ON CONFLICT DO NOTHING, in one transaction per batch) and once as multi-row INSERT
statements (``VALUES (…), (…) …`` of 500 rows, ON CONFLICT DO NOTHING) — both idempotent, both committed.

Queries: 10 s windows for every camera over the whole period are loaded through ``write_batch`` (so the
1-minute and 1-hour rollups fill as in production); then GetTrafficMetrics over gRPC for 24 h of one camera
in 10 s buckets (raw table) and for 30 days of one camera in 1 h buckets (hourly rollup). Baselines: for the
day, asyncpg fetching the same 8,640 rows with every column (the floor for any client of the table); for
the month, asyncpg running a plain aggregate over the raw table for the same range.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
from google.protobuf import duration_pb2

from infrastructure.embedded import InfraUrls
from itsmesh.v1 import analytics_pb2, analytics_pb2_grpc, common_pb2
from mesh.host import ServiceHost, settle_heap
from mesh.migrations import apply_migrations
from services.analytics.config import AnalyticsSettings
from services.analytics.model import MetricWindow, Passage, deterministic_id
from services.analytics.service import build
from services.analytics.writer import (
    PASSAGE_COLUMNS,
    WriteBatch,
    passage_record,
    prepare_connection,
    write_batch,
)
from tests.perf.results import BenchResult

BATCH_ROWS = 5000
ROUNDS = 3
INSERT_ROWS = 500
WINDOWS_PER_DAY = 8640


def _passages(count: int, tag: str) -> list[Passage]:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    out = []
    for i in range(count):
        moment = start + timedelta(milliseconds=137 * i)
        out.append(
            Passage(
                time=moment,
                camera_id=f"bench-{tag}-{i % 50}",
                event_id=deterministic_id("bench", tag, i),
                track_id=f"t{i}",
                line_id="line-1",
                lane=f"l{i % 3 + 1}",
                direction="forward",
                object_class="car",
                speed_kmh=60.0 + i % 40,
                entry_time=moment - timedelta(seconds=3),
                exit_time=moment + timedelta(seconds=2),
                speed_uncertainty_kmh=0.4,
                sample_count=20,
                crossing_x_m=1.5,
                crossing_y_m=50.0,
                confidence=0.9,
            )
        )
    return out


async def _copy_ingest(pool: asyncpg.Pool, rows: list[Passage]) -> float:
    started = time.perf_counter()
    async with pool.acquire() as connection:
        for i in range(0, len(rows), BATCH_ROWS):
            await write_batch(connection, WriteBatch(passages=rows[i : i + BATCH_ROWS]))
    return len(rows) / (time.perf_counter() - started)


async def _insert_ingest(pool: asyncpg.Pool, rows: list[Passage]) -> float:
    width = len(PASSAGE_COLUMNS)
    placeholders = ", ".join(
        "(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(INSERT_ROWS)
    )
    sql = (
        f"INSERT INTO analytics.vehicle_passages ({', '.join(PASSAGE_COLUMNS)}) VALUES {placeholders} "  # noqa: S608  # fixed names
        "ON CONFLICT DO NOTHING"
    )
    started = time.perf_counter()
    async with pool.acquire() as connection:
        statement = await connection.prepare(sql)
        for i in range(0, len(rows), BATCH_ROWS):
            async with connection.transaction():
                batch = rows[i : i + BATCH_ROWS]
                for j in range(0, len(batch), INSERT_ROWS):
                    chunk = batch[j : j + INSERT_ROWS]
                    if len(chunk) < INSERT_ROWS:
                        chunk = chunk + [chunk[-1]] * (INSERT_ROWS - len(chunk))  # repeats are no-ops
                    await statement.fetch(*[v for p in chunk for v in passage_record(p)])
    return len(rows) / (time.perf_counter() - started)


def _day_of_windows(camera_id: str, day: datetime, seed: int) -> list[MetricWindow]:
    out = []
    for i in range(WINDOWS_PER_DAY):
        n = (i * 7 + seed) % 6
        speed = 50.0 + (i + seed) % 30 if n else None
        out.append(
            MetricWindow(
                time=day + timedelta(seconds=10 * i),
                camera_id=camera_id,
                lane="",
                zone="",
                window_s=10,
                vehicle_count=n,
                counts_by_class={"car": n},
                mean_speed_kmh=speed,
                p85_speed_kmh=speed + 6.0 if speed is not None else None,
                occupancy=(i % 10) / 25.0,
                headway_s=2.5 if n > 1 else None,
                congestion_level=1,
            )
        )
    return out


async def _load_windows(pool: asyncpg.Pool, cameras: list[str], first_day: datetime, days: int) -> float:
    started = time.perf_counter()
    rows = 0

    async def load(camera_ids: list[str]) -> None:
        nonlocal rows
        async with pool.acquire() as connection:
            for day in range(days):
                for k, camera_id in enumerate(camera_ids):
                    windows = _day_of_windows(camera_id, first_day + timedelta(days=day), k)
                    await write_batch(connection, WriteBatch(metrics=windows))
                    rows += len(windows)

    await asyncio.gather(*(load(cameras[i::2]) for i in range(2)))
    return rows / (time.perf_counter() - started)


async def _p95(call: Any, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.quantiles(samples, n=20)[18]


_RAW_SQL = """
SELECT date_bin(make_interval(secs => $4), time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b,
       sum(vehicle_count), sum(mean_speed_kmh * vehicle_count), max(p85_speed_kmh), avg(occupancy), count(*)
FROM analytics.traffic_metrics
WHERE camera_id = $1 AND time >= $2 AND time < $3 AND lane = '' AND zone = ''
GROUP BY 1 ORDER BY 1
"""
_RAW_FETCH_SQL = """
SELECT * FROM analytics.traffic_metrics
WHERE camera_id = $1 AND lane = '' AND zone = '' AND time >= $2 AND time < $3
ORDER BY time
"""


async def run(quick: bool, urls: InfraUrls) -> list[BenchResult]:
    """COPY vs INSERT ingest, then query latency over loaded windows."""
    await apply_migrations(urls.database_url)
    tag = uuid.uuid4().hex[:8]
    passages = 60_000 if quick else 300_000
    days, cameras = (30, 2) if quick else (30, 100)
    scale = f"{days} d x {cameras} cameras of 10 s windows"
    pool = await asyncpg.create_pool(urls.database_url, min_size=2, max_size=4, init=prepare_connection)
    try:
        # alternating rounds on fresh rows, medians: the two paths see the same table growth and load
        rows = _passages(passages, tag)
        share = passages // (2 * ROUNDS)
        copy_runs, insert_runs = [], []
        for k in range(ROUNDS):
            copy_runs.append(await _copy_ingest(pool, rows[2 * k * share : (2 * k + 1) * share]))
            insert_runs.append(await _insert_ingest(pool, rows[(2 * k + 1) * share : (2 * k + 2) * share]))
        copy_rps, insert_rps = statistics.median(copy_runs), statistics.median(insert_runs)
        camera_ids = [f"bench-{tag}-cam{i:03d}" for i in range(cameras)]
        first_day = datetime(2026, 2, 1, tzinfo=UTC)
        load_rps = await _load_windows(pool, camera_ids, first_day, days)
        del rows  # the ingest rows would otherwise sit in the heap the collector walks during the queries

        settings = AnalyticsSettings(
            database_url=urls.database_url,
            redis_url=urls.redis_url,
            kafka_bootstrap_servers=urls.kafka_bootstrap_servers,
            bind_host="127.0.0.1",
            grpc_port=0,
            register_in_discovery=False,
            metrics_port=None,
            require_auth=False,
            consume=False,
            relay_alerts=False,
            migrate_on_start=False,
        )
        host = ServiceHost(build(settings, client_interceptors=[]))
        await host.start()
        settle_heap()  # as ServiceHost.run does once a service process is up
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
                stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
                camera = camera_ids[len(camera_ids) // 2]
                day_start = first_day + timedelta(days=days // 2)
                day_end = day_start + timedelta(days=1)
                month_end = first_day + timedelta(days=days)

                def request(start: datetime, end: datetime, bucket_s: int) -> Any:
                    time_range = common_pb2.TimeRange()
                    time_range.start_time.FromDatetime(start)
                    time_range.end_time.FromDatetime(end)
                    return analytics_pb2.GetTrafficMetricsRequest(
                        camera_ids=[camera],
                        time_range=time_range,
                        bucket=duration_pb2.Duration(seconds=bucket_s),
                        page_size=10_000,
                    )

                day_request = request(day_start, day_end, 10)
                month_request = request(first_day, month_end, 3600)
                check = await stub.GetTrafficMetrics(day_request)
                assert len(check.buckets) == WINDOWS_PER_DAY
                assert check.source == analytics_pb2.METRICS_SOURCE_RAW
                check = await stub.GetTrafficMetrics(month_request)
                assert len(check.buckets) == days * 24
                assert check.source == analytics_pb2.METRICS_SOURCE_ROLLUP_1H
                repeat = 30 if quick else 100

                async def api_day() -> None:
                    await stub.GetTrafficMetrics(day_request)

                async def api_month() -> None:
                    await stub.GetTrafficMetrics(month_request)

                async def raw_day() -> None:
                    assert (
                        len(await pool.fetch(_RAW_FETCH_SQL, camera, day_start, day_end)) == WINDOWS_PER_DAY
                    )

                async def raw_month() -> None:
                    await pool.fetch(_RAW_SQL, camera, first_day, month_end, 3600)

                api_day_p95 = await _p95(api_day, repeat)
                raw_day_p95 = await _p95(raw_day, repeat)
                api_month_p95 = await _p95(api_month, repeat)
                raw_month_p95 = await _p95(raw_month, max(5, repeat // 5))
        finally:
            await host.stop()
    finally:
        await pool.close()
    return [
        BenchResult(
            name="analytics_copy_ingest_rows_per_s",
            value=copy_rps,
            unit="rows/s",
            baseline=insert_rps,
            baseline_name=f"multi-row INSERT of {INSERT_ROWS} rows … ON CONFLICT",
            target=f"≥ 50,000 rows/s (median of {ROUNDS} alternating rounds of {share:,} passages, "
            f"{BATCH_ROWS}-row transactions)",
        ),
        BenchResult(
            name="analytics_window_load_rows_per_s",
            value=load_rps,
            unit="rows/s",
            baseline=copy_rps,
            baseline_name="passage COPY ingest above",
            target=f"informational (metric windows incl. 1 min + 1 h rollups; {scale})",
        ),
        BenchResult(
            name="analytics_metrics_24h_10s_p95_ms",
            value=api_day_p95,
            unit="ms",
            baseline=raw_day_p95,
            baseline_name="raw asyncpg fetch of the same 8,640 rows",
            target=f"≤ 100 ms (24 h of one camera, 8,640 buckets over gRPC; {scale})",
        ),
        BenchResult(
            name="analytics_metrics_30d_1h_p95_ms",
            value=api_month_p95,
            unit="ms",
            baseline=raw_month_p95,
            baseline_name="raw asyncpg aggregate over traffic_metrics",
            target=f"≤ 500 ms (30 days of one camera from the 1 h rollup; {scale})",
        ),
    ]
