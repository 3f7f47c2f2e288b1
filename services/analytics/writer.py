"""Writes a consumed batch in one transaction with COPY; natural keys make every write idempotent.

Passages, readings and processed event ids are copied straight into their tables inside a savepoint — new
rows are the rule, since records already applied are skipped before the pipeline. Only when a row exists
already (a unique violation rolls the savepoint back) do they take the slower way: COPY into a staging
table, then INSERT … ON CONFLICT DO NOTHING. So a replayed Kafka batch writes nothing twice. Metric windows
always take the staging way, as the rollups need the rows the insert really added. The rollups are
fed from the raw metric rows an insert actually added (RETURNING), so they never count a window twice.
Violations and anomalies go to their tables and to the alert outbox in the same transaction; each outbox
row keeps the W3C traceparent of the record that produced it, so the alert joins that record's trace.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.analytics.encode import anomaly_alert, anomaly_proto, violation_alert, violation_proto
from services.analytics.model import Anomaly, MetricWindow, Passage, Violation

METRIC_COLUMNS: Final = (
    "time",
    "camera_id",
    "lane",
    "zone",
    "window_s",
    "vehicle_count",
    "counts_by_class",
    "mean_speed_kmh",
    "p85_speed_kmh",
    "occupancy",
    "headway_s",
    "congestion_level",
)
PASSAGE_COLUMNS: Final = (
    "time",
    "camera_id",
    "event_id",
    "track_id",
    "line_id",
    "lane",
    "direction",
    "object_class",
    "speed_kmh",
    "entry_time",
    "exit_time",
    "wrong_way",
    "speed_uncertainty_kmh",
    "sample_count",
    "crossing_x_m",
    "crossing_y_m",
    "confidence",
)
READING_COLUMNS: Final = (
    "time",
    "device_id",
    "seq",
    "lat",
    "lon",
    "speed_kmh",
    "heading_deg",
    "event_id",
    "horizontal_accuracy_m",
    "measurements",
)
Conn = asyncpg.Connection | PoolConnectionProxy
LIVE_CHANNEL: Final = "analytics_windows"
"""PostgreSQL channel announcing newly written metric windows (JSON list of [camera, lane, zone, epoch s])."""
NOTIFY_KEYS: Final = 100  # keeps a payload far below PostgreSQL's 8000-byte limit
_STAGES: Final = {
    "traffic_metrics": METRIC_COLUMNS,
    "vehicle_passages": PASSAGE_COLUMNS,
    "telemetry_readings": READING_COLUMNS,
}


@dataclass(frozen=True, slots=True)
class ReadingRow:
    """One telemetry reading as stored in analytics.telemetry_readings."""

    time: datetime
    device_id: str
    seq: int
    lat: float
    lon: float
    speed_kmh: float | None
    heading_deg: float | None
    event_id: str
    horizontal_accuracy_m: float | None = None
    measurements: dict[str, float] | None = None

    def record(self) -> tuple[Any, ...]:
        measurements = json.dumps(self.measurements) if self.measurements else None
        return (
            self.time,
            self.device_id,
            self.seq,
            self.lat,
            self.lon,
            self.speed_kmh,
            self.heading_deg,
            self.event_id,
            self.horizontal_accuracy_m,
            measurements,
        )


@dataclass(slots=True)
class WriteBatch:
    """Everything a consumed batch produced, plus the event ids it consumed."""

    event_ids: list[str] = field(default_factory=list)
    passages: list[Passage] = field(default_factory=list)
    metrics: list[MetricWindow] = field(default_factory=list)
    readings: list[ReadingRow] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    violation_traceparents: list[str | None] = field(default_factory=list)
    """Per violation (same index), the traceparent of the record that produced it; may be shorter."""
    anomaly_traceparents: list[str | None] = field(default_factory=list)
    """Per anomaly (same index), the traceparent of the record that produced it; may be shorter."""

    @property
    def untraced(self) -> bool:
        """True when violations or anomalies were added since the last ``trace_new_outputs``."""
        return len(self.violation_traceparents) < len(self.violations) or len(
            self.anomaly_traceparents
        ) < len(self.anomalies)

    def trace_new_outputs(self, traceparent: str | None) -> None:
        """Attribute the violations and anomalies added since the last call to ``traceparent``."""
        self.violation_traceparents += [traceparent] * (
            len(self.violations) - len(self.violation_traceparents)
        )
        self.anomaly_traceparents += [traceparent] * (len(self.anomalies) - len(self.anomaly_traceparents))

    def __len__(self) -> int:
        return (
            len(self.event_ids)
            + len(self.passages)
            + len(self.metrics)
            + len(self.readings)
            + len(self.violations)
            + len(self.anomalies)
        )


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write added (rows that already existed are not counted)."""

    events: int = 0
    passages: int = 0
    metrics: tuple[MetricWindow, ...] = ()
    readings: int = 0
    violations: int = 0
    anomalies: int = 0


def metric_record(window: MetricWindow) -> tuple[Any, ...]:
    """A metric window as a traffic_metrics row."""
    return (
        window.time,
        window.camera_id,
        window.lane,
        window.zone,
        window.window_s,
        window.vehicle_count,
        json.dumps(dict(window.counts_by_class)),
        window.mean_speed_kmh,
        window.p85_speed_kmh,
        window.occupancy,
        window.headway_s,
        window.congestion_level,
    )


def passage_record(passage: Passage) -> tuple[Any, ...]:
    """A passage as a vehicle_passages row."""
    return (
        passage.time,
        passage.camera_id,
        passage.event_id,
        passage.track_id,
        passage.line_id,
        passage.lane,
        passage.direction,
        passage.object_class,
        passage.speed_kmh,
        passage.entry_time,
        passage.exit_time,
        passage.wrong_way,
        passage.speed_uncertainty_kmh,
        passage.sample_count,
        passage.crossing_x_m,
        passage.crossing_y_m,
        passage.confidence,
    )


async def prepare_connection(connection: Conn) -> None:
    """Create this session's staging tables (emptied at every commit); the pool's ``init`` hook."""
    for table in _STAGES:
        await connection.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} "
            f"(LIKE analytics.{table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
    await connection.execute(
        "CREATE TEMP TABLE IF NOT EXISTS stage_processed_events (event_id text) ON COMMIT DELETE ROWS"
    )


def _rollup_sql(name: str, step: str) -> str:
    # Class counts are summed with built-in jsonb functions per row and one GROUP BY; merging objects with
    # a SQL-language aggregate per row cost more than everything else in the write.
    bucket = f"date_bin(INTERVAL '{step}', time, TIMESTAMPTZ '2000-01-01')"
    return f"""
    {name}_classes AS (
        SELECT bucket, camera_id, lane, zone, jsonb_object_agg(key, n) AS counts
        FROM (SELECT {bucket} AS bucket, camera_id, lane, zone, c.key, sum(c.value::bigint) AS n
              FROM added, jsonb_each_text(added.counts_by_class) AS c GROUP BY 1, 2, 3, 4, 5) AS per_class
        GROUP BY 1, 2, 3, 4
    ),
    {name}_sums AS (
        SELECT {bucket} AS bucket, camera_id, lane, zone,
               sum(vehicle_count) AS vehicle_count,
               coalesce(sum(mean_speed_kmh * vehicle_count), 0) AS speed_sum,
               coalesce(sum(vehicle_count) FILTER (WHERE mean_speed_kmh IS NOT NULL), 0) AS speed_weight,
               coalesce(sum(p85_speed_kmh * vehicle_count), 0) AS p85_sum,
               coalesce(sum(vehicle_count) FILTER (WHERE p85_speed_kmh IS NOT NULL), 0) AS p85_weight,
               coalesce(sum(occupancy), 0) AS occupancy_sum, count(occupancy) AS occupancy_n,
               coalesce(sum(headway_s * vehicle_count), 0) AS headway_sum,
               coalesce(sum(vehicle_count) FILTER (WHERE headway_s IS NOT NULL), 0) AS headway_weight,
               max(congestion_level) AS congestion_max, count(*) AS window_count
        FROM added GROUP BY 1, 2, 3, 4
    ),
    {name} AS (
        INSERT INTO analytics.traffic_rollup_{name[-2:]} AS r
        SELECT s.bucket, s.camera_id, s.lane, s.zone, s.vehicle_count, coalesce(c.counts, '{{}}'::jsonb),
               s.speed_sum, s.speed_weight, s.p85_sum, s.p85_weight, s.occupancy_sum, s.occupancy_n,
               s.headway_sum, s.headway_weight, s.congestion_max, s.window_count
        FROM {name}_sums AS s LEFT JOIN {name}_classes AS c USING (bucket, camera_id, lane, zone)
        ON CONFLICT (camera_id, lane, zone, bucket) DO UPDATE SET
            vehicle_count = r.vehicle_count + EXCLUDED.vehicle_count,
            counts_by_class = analytics.add_counts(r.counts_by_class, EXCLUDED.counts_by_class),
            speed_sum = r.speed_sum + EXCLUDED.speed_sum,
            speed_weight = r.speed_weight + EXCLUDED.speed_weight,
            p85_sum = r.p85_sum + EXCLUDED.p85_sum,
            p85_weight = r.p85_weight + EXCLUDED.p85_weight,
            occupancy_sum = r.occupancy_sum + EXCLUDED.occupancy_sum,
            occupancy_n = r.occupancy_n + EXCLUDED.occupancy_n,
            headway_sum = r.headway_sum + EXCLUDED.headway_sum,
            headway_weight = r.headway_weight + EXCLUDED.headway_weight,
            congestion_max = greatest(r.congestion_max, EXCLUDED.congestion_max),
            window_count = r.window_count + EXCLUDED.window_count
        RETURNING 1
    )"""  # noqa: S608


_METRIC_COLUMN_LIST: Final = ", ".join(METRIC_COLUMNS)
_INSERT_METRICS: Final = f"""
WITH added AS (
    INSERT INTO analytics.traffic_metrics ({_METRIC_COLUMN_LIST})
    SELECT {_METRIC_COLUMN_LIST} FROM stage_traffic_metrics
    ON CONFLICT DO NOTHING
    RETURNING *
),{_rollup_sql("r1m", "1 minute")},{_rollup_sql("r1h", "1 hour")}
SELECT camera_id, lane, zone, time FROM added
"""  # noqa: S608  # fixed column names


def _insert_from_stage(table: str, columns: Sequence[str]) -> str:
    names = ", ".join(columns)
    sql = f"INSERT INTO analytics.{table} ({names}) SELECT {names} FROM stage_{table}"  # noqa: S608  # fixed names
    return sql + " ON CONFLICT DO NOTHING"


_INSERT_VIOLATIONS: Final = """
INSERT INTO analytics.violations
    (violation_id, kind, severity, camera_id, device_id, track_id, start_time, payload)
SELECT * FROM unnest($1::text[], $2::smallint[], $3::smallint[], $4::text[], $5::text[], $6::text[],
                     $7::timestamptz[], $8::bytea[])
ON CONFLICT DO NOTHING
"""
_INSERT_ANOMALIES: Final = """
INSERT INTO analytics.anomalies (anomaly_id, kind, severity, camera_id, lane, window_start_time, payload)
SELECT * FROM unnest($1::text[], $2::smallint[], $3::smallint[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::bytea[])
ON CONFLICT DO NOTHING
"""
_INSERT_OUTBOX: Final = """
INSERT INTO analytics.alert_outbox (source_kind, source_id, request, traceparent)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])
ON CONFLICT DO NOTHING
"""


def _count(status: str) -> int:
    """Rows affected, from a command tag such as "INSERT 0 12"."""
    return int(status.rsplit(" ", 1)[-1])


async def write_batch(connection: Conn, batch: WriteBatch) -> WriteResult:
    """Write ``batch`` atomically; the connection must have been prepared with ``prepare_connection``."""
    async with connection.transaction():
        events = await _write_events(connection, batch.event_ids)
        passages = await _copy_insert(
            connection, "vehicle_passages", PASSAGE_COLUMNS, [passage_record(p) for p in batch.passages]
        )
        readings = await _copy_insert(
            connection, "telemetry_readings", READING_COLUMNS, [r.record() for r in batch.readings]
        )
        added: tuple[MetricWindow, ...] = ()
        if batch.metrics:
            await connection.copy_records_to_table(
                "stage_traffic_metrics",
                records=[metric_record(m) for m in batch.metrics],
                columns=METRIC_COLUMNS,
            )
            keys = {tuple(r) for r in await connection.fetch(_INSERT_METRICS)}
            added = tuple(m for m in batch.metrics if (m.camera_id, m.lane, m.zone, m.time) in keys)
            await _announce(connection, added)
        violations = await _write_violations(connection, batch.violations, batch.violation_traceparents)
        anomalies = await _write_anomalies(connection, batch.anomalies, batch.anomaly_traceparents)
    return WriteResult(events, passages, added, readings, violations, anomalies)


async def _announce(connection: Conn, windows: Sequence[MetricWindow]) -> None:
    """NOTIFY the keys of new windows; delivered at commit, to every instance's live stream."""
    keys = [[w.camera_id, w.lane, w.zone, w.time.timestamp()] for w in windows]
    for start in range(0, len(keys), NOTIFY_KEYS):
        await connection.execute(
            "SELECT pg_notify($1, $2)", LIVE_CHANNEL, json.dumps(keys[start : start + NOTIFY_KEYS])
        )


async def _write_events(connection: Conn, event_ids: Sequence[str]) -> int:
    return await _copy_insert(connection, "processed_events", ("event_id",), [(e,) for e in event_ids])


async def _copy_insert(
    connection: Conn, table: str, columns: Sequence[str], records: list[tuple[Any, ...]]
) -> int:
    """Insert ``records`` into ``analytics.<table>`` skipping existing keys; the number of rows added."""
    if not records:
        return 0
    try:
        async with connection.transaction():  # a savepoint: a conflict undoes this COPY only
            await connection.copy_records_to_table(
                table, schema_name="analytics", records=records, columns=columns
            )
        return len(records)
    except asyncpg.UniqueViolationError:
        pass
    await connection.copy_records_to_table(f"stage_{table}", records=records, columns=columns)
    return _count(await connection.execute(_insert_from_stage(table, columns)))


async def _write_violations(
    connection: Conn, violations: Sequence[Violation], traceparents: Sequence[str | None] = ()
) -> int:
    if not violations:
        return 0
    protos = [violation_proto(v) for v in violations]
    status = await connection.execute(
        _INSERT_VIOLATIONS,
        [p.violation_id for p in protos],
        [p.kind for p in protos],
        [p.severity for p in protos],
        [p.camera_id for p in protos],
        [p.device_id for p in protos],
        [p.track_id for p in protos],
        [v.start_time for v in violations],
        [p.SerializeToString() for p in protos],
    )
    await connection.execute(
        _INSERT_OUTBOX,
        ["violation"] * len(protos),
        [p.violation_id for p in protos],
        [violation_alert(v, p).SerializeToString() for v, p in zip(violations, protos, strict=True)],
        _padded(traceparents, len(protos)),
    )
    return _count(status)


async def _write_anomalies(
    connection: Conn, anomalies: Sequence[Anomaly], traceparents: Sequence[str | None] = ()
) -> int:
    if not anomalies:
        return 0
    protos = [anomaly_proto(a) for a in anomalies]
    status = await connection.execute(
        _INSERT_ANOMALIES,
        [p.anomaly_id for p in protos],
        [p.kind for p in protos],
        [p.severity for p in protos],
        [p.camera_id for p in protos],
        [p.lane_id for p in protos],
        [a.window_start_time for a in anomalies],
        [p.SerializeToString() for p in protos],
    )
    await connection.execute(
        _INSERT_OUTBOX,
        ["anomaly"] * len(protos),
        [p.anomaly_id for p in protos],
        [anomaly_alert(a, p).SerializeToString() for a, p in zip(anomalies, protos, strict=True)],
        _padded(traceparents, len(protos)),
    )
    return _count(status)


def _padded(traceparents: Sequence[str | None], count: int) -> list[str | None]:
    """``count`` traceparents: outputs no record was attributed (a flush) have none."""
    return [*traceparents[:count], *[None] * (count - len(traceparents))]


async def already_processed(connection: Conn, event_ids: Sequence[str]) -> set[str]:
    """The ids among ``event_ids`` whose records were already applied."""
    if not event_ids:
        return set()
    rows = await connection.fetch(
        "SELECT event_id FROM analytics.processed_events WHERE event_id = ANY($1::text[])", list(event_ids)
    )
    return {r["event_id"] for r in rows}
