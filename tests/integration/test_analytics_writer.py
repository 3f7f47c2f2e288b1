"""The analytics writer against real PostgreSQL: COPY straight into the tables when every row is new, the
staging way when some exist already — either way each row once, and the counts say what was added."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from mesh.migrations import apply_migrations
from services.analytics.model import Passage, deterministic_id
from services.analytics.writer import ReadingRow, WriteBatch, prepare_connection, write_batch

T0 = datetime(2026, 4, 6, 7, 0, tzinfo=UTC)


@pytest.fixture
async def connection(infra: Any) -> AsyncIterator[asyncpg.Connection]:
    await apply_migrations(infra.database_url)
    conn = await asyncpg.connect(infra.database_url)
    await prepare_connection(conn)
    try:
        yield conn
    finally:
        await conn.close()


def _passages(camera_id: str, first: int, count: int) -> list[Passage]:
    return [
        Passage(
            time=T0 + timedelta(seconds=i),
            camera_id=camera_id,
            event_id=deterministic_id("writer-test", camera_id, i),
            track_id=f"t{i}",
            line_id="line-1",
            lane="l1",
            direction="forward",
            object_class="car",
            speed_kmh=50.0 + i,
            entry_time=T0 + timedelta(seconds=i - 2),
            exit_time=T0 + timedelta(seconds=i + 1),
        )
        for i in range(first, first + count)
    ]


def _readings(device_id: str, first: int, count: int) -> list[ReadingRow]:
    return [
        ReadingRow(
            time=T0 + timedelta(seconds=i),
            device_id=device_id,
            seq=i,
            lat=52.5,
            lon=13.4,
            speed_kmh=30.0,
            heading_deg=90.0,
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{device_id}/{i}")),
        )
        for i in range(first, first + count)
    ]


async def _counts(
    connection: asyncpg.Connection, camera: str, device: str, events: list[str]
) -> tuple[int, ...]:
    return (
        await connection.fetchval(
            "SELECT count(*) FROM analytics.vehicle_passages WHERE camera_id = $1", camera
        ),
        await connection.fetchval(
            "SELECT count(*) FROM analytics.telemetry_readings WHERE device_id = $1", device
        ),
        await connection.fetchval(
            "SELECT count(*) FROM analytics.processed_events WHERE event_id = ANY($1::text[])", events
        ),
    )


async def test_new_rows_are_written_once_and_a_replay_or_an_overlap_adds_only_what_is_missing(
    connection: asyncpg.Connection,
) -> None:
    camera, device = f"cam-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"
    events = [f"ev-{uuid.uuid4().hex}" for _ in range(30)]

    first = await write_batch(
        connection,
        WriteBatch(
            event_ids=events[:20], passages=_passages(camera, 0, 20), readings=_readings(device, 0, 20)
        ),
    )
    assert (first.events, first.passages, first.readings) == (20, 20, 20)

    replay = await write_batch(
        connection,
        WriteBatch(
            event_ids=events[:20], passages=_passages(camera, 0, 20), readings=_readings(device, 0, 20)
        ),
    )
    assert (replay.events, replay.passages, replay.readings) == (0, 0, 0)

    # half old, half new: the conflict sends the batch the staging way, which keeps the new half
    overlap = await write_batch(
        connection,
        WriteBatch(
            event_ids=events[10:], passages=_passages(camera, 10, 20), readings=_readings(device, 10, 20)
        ),
    )
    assert (overlap.events, overlap.passages, overlap.readings) == (10, 10, 10)
    assert await _counts(connection, camera, device, events) == (30, 30, 30)

    # a row repeated within one batch is a conflict too, and lands once
    again = _passages(camera, 30, 1)
    repeated = await write_batch(connection, WriteBatch(passages=again + again))
    assert repeated.passages == 1
    assert await _counts(connection, camera, device, events) == (31, 30, 30)


async def test_a_conflict_leaves_the_rest_of_the_batch_and_the_transaction_intact(
    connection: asyncpg.Connection,
) -> None:
    camera, device = f"cam-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"
    await write_batch(connection, WriteBatch(passages=_passages(camera, 0, 5)))
    # inside an outer transaction the savepoint undoes only the failed COPY
    async with connection.transaction():
        result = await write_batch(
            connection, WriteBatch(passages=_passages(camera, 0, 10), readings=_readings(device, 0, 3))
        )
    assert (result.passages, result.readings) == (5, 3)
    assert await _counts(connection, camera, device, []) == (10, 3, 0)
