"""The analyst API's SQL: traffic metrics in buckets (from raw windows or the rollups), passages,
violations, anomalies and telemetry readings. Parameterised queries only; validated inputs in."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple
from zoneinfo import ZoneInfo

import asyncpg

from services.analytics.model import MetricWindow

Breakdown = Literal["camera", "lane", "zone"]
Source = Literal["raw", "1m", "1h"]

RAW_WINDOW_S: Final = 10
_SOURCE_STEP_S: Final[dict[Source, int]] = {"raw": RAW_WINDOW_S, "1m": 60, "1h": 3600}

# Sums every source can give, so a bucket of any size combines windows exactly.
# Column lists in MetricsRow's field order; class counts are added by a second query.
_RAW_SUMS: Final = """
    sum(vehicle_count)::bigint, NULL::text,
    coalesce(sum(mean_speed_kmh * vehicle_count), 0),
    coalesce(sum(vehicle_count) FILTER (WHERE mean_speed_kmh IS NOT NULL), 0)::bigint,
    coalesce(sum(p85_speed_kmh * vehicle_count), 0),
    coalesce(sum(vehicle_count) FILTER (WHERE p85_speed_kmh IS NOT NULL), 0)::bigint,
    max(p85_speed_kmh),
    coalesce(sum(occupancy), 0), count(occupancy)::bigint,
    coalesce(sum(headway_s * vehicle_count), 0),
    coalesce(sum(vehicle_count) FILTER (WHERE headway_s IS NOT NULL), 0)::bigint,
    max(congestion_level)::int, count(*)::bigint"""
_ROLLUP_SUMS: Final = """
    sum(vehicle_count)::bigint, NULL::text,
    sum(speed_sum), sum(speed_weight)::bigint, sum(p85_sum), sum(p85_weight)::bigint,
    NULL::double precision,
    sum(occupancy_sum), sum(occupancy_n)::bigint, sum(headway_sum), sum(headway_weight)::bigint,
    max(congestion_max)::int, sum(window_count)::bigint"""
_TABLES: Final[dict[Source, tuple[str, str, str]]] = {
    "raw": ("analytics.traffic_metrics", "time", _RAW_SUMS),
    "1m": ("analytics.traffic_rollup_1m", "bucket", _ROLLUP_SUMS),
    "1h": ("analytics.traffic_rollup_1h", "bucket", _ROLLUP_SUMS),
}
# "> ''" rather than "<> ''" (the same rows: '' sorts first): a range the primary key (camera_id, lane, zone,
# time) can scan — skipping through the lanes, time-bounded per lane — where "<>" left the planner a scan
# of every camera's rows in the time range.
_BREAKDOWN_FILTER: Final[dict[Breakdown, str]] = {
    "camera": "lane = '' AND zone = ''",
    "lane": "lane > '' AND zone = ''",
    "zone": "zone > ''",
}


@dataclass(frozen=True, slots=True)
class MetricsQuery:
    """A validated GetTrafficMetrics / ExportMetrics selection."""

    camera_ids: tuple[str, ...]
    start: datetime
    end: datetime
    bucket_s: int = RAW_WINDOW_S
    breakdown: Breakdown = "camera"
    lane_ids: tuple[str, ...] = ()
    time_zone: str = ""


class MetricsRow(NamedTuple):
    """One series' sums in one bucket; the API derives means and flows from them. A tuple: a day of 10 s
    buckets is 8,640 of them, and a tuple is built in a third of a frozen dataclass's time."""

    camera_id: str
    lane: str
    zone: str
    bucket_start: datetime
    vehicle_count: int
    counts_by_class: dict[str, int]
    speed_sum: float
    speed_weight: int
    p85_sum: float
    p85_weight: int
    p85_single: float | None
    occupancy_sum: float
    occupancy_n: int
    headway_sum: float
    headway_weight: int
    congestion_max: int
    window_count: int


def _fits(moment: datetime, step_s: int, time_zone: str) -> bool:
    """Whether rows of ``step_s`` (aligned in UTC) start and end at ``moment`` and, for local buckets, at
    every bucket boundary: the zone's offset must be whole steps too (India's +05:30 is not whole hours)."""
    if moment.timestamp() % step_s:
        return False
    if not time_zone:
        return True
    utc_offset = moment.astimezone(ZoneInfo(time_zone)).utcoffset()
    return utc_offset is None or utc_offset.total_seconds() % step_s == 0


def choose_source(query: MetricsQuery) -> Source:
    """The coarsest table whose rows fit the buckets exactly: 1 h, 1 min, else the raw 10 s windows."""
    # buckets from 1 h are aligned to local wall-clock time (see _bucket_expression), shorter ones to UTC
    zone = query.time_zone if query.bucket_s >= 3600 else ""
    for source in ("1h", "1m"):
        step = _SOURCE_STEP_S[source]
        if query.bucket_s % step == 0 and _fits(query.start, step, zone) and _fits(query.end, step, zone):
            return source
    return "raw"


def _bucket_expression(column: str, bucket_s: int, time_zone: str) -> str:
    if time_zone and bucket_s >= 3600:
        # local wall-clock buckets, so a day is midnight to midnight where the cameras are
        return (
            f"date_bin(make_interval(secs => {bucket_s}), {column} AT TIME ZONE $5, "
            f"TIMESTAMP '2000-01-01') AT TIME ZONE $5"
        )
    return f"date_bin(make_interval(secs => {bucket_s}), {column}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"


def single_windows(query: MetricsQuery, source: Source) -> bool:
    """Whether each bucket is one stored 10 s window (read by ``metric_windows``, not summed)."""
    return source == "raw" and query.bucket_s == RAW_WINDOW_S


async def metric_windows(
    pool: asyncpg.Pool, query: MetricsQuery, offset: int, limit: int
) -> list[asyncpg.Record]:
    """10 s buckets: the stored windows as they are, ordered like ``traffic_metrics``, in WINDOW_COLUMNS.

    No grouping and no sums, and the start as epoch microseconds (an integer decodes faster than a
    timestamp): a day of one camera is 8,640 rows, and reading them lean halves the time of the request.
    """
    sql = f"""
        SELECT {WINDOW_COLUMNS}
        FROM analytics.traffic_metrics
        WHERE {_FILTER.format(column="time", breakdown=_BREAKDOWN_FILTER[query.breakdown])}
        ORDER BY camera_id, lane, zone, time
        LIMIT {int(limit)} OFFSET {int(offset)}
    """  # noqa: S608  # fixed fragments and integers; values are $n parameters
    rows: list[asyncpg.Record] = await pool.fetch(
        sql, *_metrics_args(query, query.camera_ids, query.start, query.end)
    )
    return rows


WINDOW_COLUMNS: Final = """camera_id, lane, zone, (extract(epoch FROM time) * 1000000)::bigint, vehicle_count,
    counts_by_class::text, mean_speed_kmh, p85_speed_kmh, occupancy, headway_s, congestion_level::int"""
"""What ``metric_windows`` rows hold, in this order (MetricBucketShape.window unpacks them)."""


async def traffic_metrics(
    pool: asyncpg.Pool, query: MetricsQuery, source: Source, offset: int, limit: int, *, classes: bool = True
) -> list[MetricsRow]:
    """Buckets of several windows (see ``single_windows`` for 10 s ones), ordered by camera, lane, zone,
    start; ``limit`` rows from ``offset`` (``classes``: with per-class counts)."""
    table, column, sums = _TABLES[source]
    sql = f"""
        SELECT camera_id, lane, zone, {_bucket_expression(column, int(query.bucket_s), query.time_zone)}
            AS bucket_start, {sums}
        FROM {table}
        WHERE {_FILTER.format(column=column, breakdown=_BREAKDOWN_FILTER[query.breakdown])}
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
        LIMIT {int(limit)} OFFSET {int(offset)}
    """  # noqa: S608  # fixed fragments and integers; values are $n parameters
    args = _metrics_args(query, query.camera_ids, query.start, query.end)
    rows = [_metrics_row(r) for r in await pool.fetch(sql, *args)]
    if classes and rows:
        await _add_class_counts(pool, query, source, rows)
    return rows


_FILTER: Final = """camera_id = ANY($1::text[]) AND {column} >= $2 AND {column} < $3 AND {breakdown}
          AND (cardinality($4::text[]) = 0 OR lane = ANY($4::text[]))"""


def _metrics_args(query: MetricsQuery, cameras: Sequence[str], start: datetime, end: datetime) -> list[Any]:
    lanes = list(query.lane_ids) if query.breakdown == "lane" else []
    args: list[Any] = [list(cameras), start, end, lanes]
    if query.time_zone and query.bucket_s >= 3600:
        args.append(query.time_zone)
    return args


async def _add_class_counts(
    pool: asyncpg.Pool, query: MetricsQuery, source: Source, rows: list[MetricsRow]
) -> None:
    """Per-class counts of the buckets in ``rows``, summed from the stored objects (built-in jsonb functions
    per row, one GROUP BY: far cheaper than a jsonb-merging aggregate)."""
    table, column, _ = _TABLES[source]
    bucket = _bucket_expression(column, int(query.bucket_s), query.time_zone)
    sql = f"""
        SELECT camera_id, lane, zone, {bucket} AS bucket_start, c.key, sum(c.value::bigint)::bigint AS n
        FROM {table}, jsonb_each_text(counts_by_class) AS c
        WHERE {_FILTER.format(column=column, breakdown=_BREAKDOWN_FILTER[query.breakdown])}
        GROUP BY 1, 2, 3, 4, 5
    """  # noqa: S608  # fixed fragments; values are $n parameters
    first = min(r.bucket_start for r in rows)
    last = max(r.bucket_start for r in rows) + timedelta(seconds=query.bucket_s)
    cameras = sorted({r.camera_id for r in rows})
    args = _metrics_args(query, cameras, max(first, query.start), min(last, query.end))
    by_key = {(r.camera_id, r.lane, r.zone, r.bucket_start): r for r in rows}
    for found in await pool.fetch(sql, *args):
        row = by_key.get((found["camera_id"], found["lane"], found["zone"], found["bucket_start"]))
        if row is not None:
            row.counts_by_class[found["key"]] = found["n"]


@functools.lru_cache(maxsize=4096)
def class_counts(text: str) -> Mapping[str, int]:
    """A stored ``counts_by_class`` JSON text, parsed once per distinct text: windows repeat the same few
    class mixes ({"car": 3}). Shared between callers, so read-only."""
    counts: dict[str, int] = json.loads(text)
    return MappingProxyType(counts)


def _metrics_row(r: asyncpg.Record) -> MetricsRow:
    # class counts of grouped buckets are filled in by _add_class_counts, so each row gets its own dict
    return MetricsRow(r[0], r[1], r[2], r[3], r[4], {}, *r[6:])


async def fresh_through(pool: asyncpg.Pool, camera_ids: Sequence[str]) -> datetime | None:
    """End of the newest camera-wide window stored for any of ``camera_ids``."""
    value = await pool.fetchval(
        """
        SELECT max(w.ends) FROM unnest($1::text[]) AS c(camera_id),
        LATERAL (SELECT m.time + make_interval(secs => m.window_s) AS ends FROM analytics.traffic_metrics m
                 WHERE m.camera_id = c.camera_id AND m.lane = '' AND m.zone = ''
                 ORDER BY m.time DESC LIMIT 1) AS w
        """,
        list(camera_ids),
    )
    return value if isinstance(value, datetime) else None


async def latest_windows(
    pool: asyncpg.Pool, camera_ids: Sequence[str], breakdown: Breakdown
) -> list[asyncpg.Record]:
    """The newest stored window of every series of ``camera_ids`` (all cameras when empty)."""
    return await pool.fetch(
        f"""
        SELECT DISTINCT ON (camera_id, lane, zone) *
        FROM analytics.traffic_metrics
        WHERE (cardinality($1::text[]) = 0 OR camera_id = ANY($1::text[]))
          AND {_BREAKDOWN_FILTER[breakdown]} AND time > now() - interval '1 day'
        ORDER BY camera_id, lane, zone, time DESC
        """,  # noqa: S608  # fixed fragment
        list(camera_ids),
    )


async def windows_by_keys(pool: asyncpg.Pool, keys: Sequence[Sequence[Any]]) -> list[MetricWindow]:
    """The stored windows named by ``[camera, lane, zone, epoch s]`` keys, oldest first."""
    rows = await pool.fetch(
        """
        SELECT m.* FROM analytics.traffic_metrics m
        JOIN unnest($1::text[], $2::text[], $3::text[], $4::double precision[]) AS k(camera_id, lane, zone, t)
          ON m.camera_id = k.camera_id AND m.lane = k.lane AND m.zone = k.zone AND m.time = to_timestamp(k.t)
        ORDER BY m.time, m.camera_id, m.lane, m.zone
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [float(k[3]) for k in keys],
    )
    return [window_of(r) for r in rows]


def window_of(row: asyncpg.Record) -> MetricWindow:
    """A traffic_metrics row as a MetricWindow."""
    return MetricWindow(
        time=row["time"],
        camera_id=row["camera_id"],
        lane=row["lane"],
        zone=row["zone"],
        window_s=row["window_s"],
        vehicle_count=row["vehicle_count"],
        counts_by_class=dict(class_counts(row["counts_by_class"])) if row["counts_by_class"] else {},
        mean_speed_kmh=row["mean_speed_kmh"],
        p85_speed_kmh=row["p85_speed_kmh"],
        occupancy=row["occupancy"],
        headway_s=row["headway_s"],
        congestion_level=row["congestion_level"],
    )


# --- lists ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PassageQuery:
    """A validated ListPassages selection."""

    start: datetime
    end: datetime
    camera_ids: tuple[str, ...] = ()
    lane_ids: tuple[str, ...] = ()
    line_ids: tuple[str, ...] = ()
    object_classes: tuple[str, ...] = ()
    direction: str = ""
    min_speed_kmh: float | None = None
    max_speed_kmh: float | None = None
    wrong_way_only: bool = False
    newest_first: bool = True


async def passages(pool: asyncpg.Pool, q: PassageQuery, offset: int, limit: int) -> list[asyncpg.Record]:
    """Passages matching ``q``, ordered by crossing time."""
    order = "DESC" if q.newest_first else "ASC"
    return await pool.fetch(
        f"""
        SELECT * FROM analytics.vehicle_passages
        WHERE time >= $1 AND time < $2
          AND (cardinality($3::text[]) = 0 OR camera_id = ANY($3::text[]))
          AND (cardinality($4::text[]) = 0 OR lane = ANY($4::text[]))
          AND (cardinality($5::text[]) = 0 OR line_id = ANY($5::text[]))
          AND (cardinality($6::text[]) = 0 OR object_class = ANY($6::text[]))
          AND ($7 = '' OR direction = $7)
          AND ($8::double precision IS NULL OR speed_kmh >= $8)
          AND ($9::double precision IS NULL OR speed_kmh < $9)
          AND (NOT $10 OR wrong_way)
        ORDER BY time {order}, camera_id, event_id
        LIMIT $11 OFFSET $12
        """,  # noqa: S608  # fixed fragment
        q.start,
        q.end,
        list(q.camera_ids),
        list(q.lane_ids),
        list(q.line_ids),
        list(q.object_classes),
        q.direction,
        q.min_speed_kmh,
        q.max_speed_kmh,
        q.wrong_way_only,
        limit,
        offset,
    )


@dataclass(frozen=True, slots=True)
class ViolationQuery:
    """A validated ListViolations selection."""

    start: datetime
    end: datetime
    camera_ids: tuple[str, ...] = ()
    device_ids: tuple[str, ...] = ()
    kinds: tuple[int, ...] = ()
    min_severity: int = 0
    track_id: str = ""
    newest_first: bool = True


async def violations(pool: asyncpg.Pool, q: ViolationQuery, offset: int, limit: int) -> list[bytes]:
    """Serialized Violation protos matching ``q``, ordered by start time."""
    order = "DESC" if q.newest_first else "ASC"
    rows = await pool.fetch(
        f"""
        SELECT payload FROM analytics.violations
        WHERE start_time >= $1 AND start_time < $2
          AND ((cardinality($3::text[]) = 0 AND cardinality($4::text[]) = 0)
               OR camera_id = ANY($3::text[]) OR device_id = ANY($4::text[]))
          AND (cardinality($5::smallint[]) = 0 OR kind = ANY($5::smallint[]))
          AND severity >= $6 AND ($7 = '' OR track_id = $7)
        ORDER BY start_time {order}, violation_id
        LIMIT $8 OFFSET $9
        """,  # noqa: S608  # fixed fragment
        q.start,
        q.end,
        list(q.camera_ids),
        list(q.device_ids),
        list(q.kinds),
        q.min_severity,
        q.track_id,
        limit,
        offset,
    )
    return [bytes(r["payload"]) for r in rows]


async def violation(pool: asyncpg.Pool, violation_id: str) -> bytes | None:
    """One serialized Violation, or None."""
    value = await pool.fetchval(
        "SELECT payload FROM analytics.violations WHERE violation_id = $1", violation_id
    )
    return bytes(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class AnomalyQuery:
    """A validated ListAnomalies selection."""

    start: datetime
    end: datetime
    camera_ids: tuple[str, ...] = ()
    kinds: tuple[int, ...] = ()
    lane_ids: tuple[str, ...] = ()
    min_severity: int = 0
    newest_first: bool = True


async def anomalies(pool: asyncpg.Pool, q: AnomalyQuery, offset: int, limit: int) -> list[bytes]:
    """Serialized Anomaly protos matching ``q``, ordered by window start."""
    order = "DESC" if q.newest_first else "ASC"
    rows = await pool.fetch(
        f"""
        SELECT payload FROM analytics.anomalies
        WHERE window_start_time >= $1 AND window_start_time < $2
          AND (cardinality($3::text[]) = 0 OR camera_id = ANY($3::text[]))
          AND (cardinality($4::smallint[]) = 0 OR kind = ANY($4::smallint[]))
          AND (cardinality($5::text[]) = 0 OR lane = ANY($5::text[]))
          AND severity >= $6
        ORDER BY window_start_time {order}, anomaly_id
        LIMIT $7 OFFSET $8
        """,  # noqa: S608  # fixed fragment
        q.start,
        q.end,
        list(q.camera_ids),
        list(q.kinds),
        list(q.lane_ids),
        q.min_severity,
        limit,
        offset,
    )
    return [bytes(r["payload"]) for r in rows]


@dataclass(frozen=True, slots=True)
class ReadingQuery:
    """A validated ListTelemetryReadings selection; ``bbox`` (lon/lat min, then max) pre-filters."""

    device_ids: tuple[str, ...]
    start: datetime
    end: datetime
    bbox: tuple[float, float, float, float] | None = None
    min_speed_kmh: float | None = None
    newest_first: bool = True


async def readings(pool: asyncpg.Pool, q: ReadingQuery, offset: int, limit: int) -> list[asyncpg.Record]:
    """Telemetry rows matching ``q``, ordered by reading time."""
    order = "DESC" if q.newest_first else "ASC"
    box = q.bbox or (-180.0, -90.0, 180.0, 90.0)
    return await pool.fetch(
        f"""
        SELECT * FROM analytics.telemetry_readings
        WHERE device_id = ANY($1::text[]) AND time >= $2 AND time < $3
          AND lon BETWEEN $4 AND $6 AND lat BETWEEN $5 AND $7
          AND ($8::double precision IS NULL OR speed_kmh >= $8)
        ORDER BY time {order}, device_id, seq
        LIMIT $9 OFFSET $10
        """,  # noqa: S608  # fixed fragment
        list(q.device_ids),
        q.start,
        q.end,
        *box,
        q.min_speed_kmh,
        limit,
        offset,
    )
