"""Migrations against the real PostgreSQL: idempotent, flavour-aware, refusing edited history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from mesh.migrations import MigrationError, apply_migrations, default_sql_dir, detect_flavour, plan

pytestmark = pytest.mark.integration


@pytest.fixture
async def scratch_db(infra):
    """A database of its own, so migrations are applied from nothing and dropped afterwards."""
    name = f"mig_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(infra.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(infra.database_url)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_migrations_apply_once_and_are_idempotent(scratch_db):
    first = await apply_migrations(scratch_db)
    second = await apply_migrations(scratch_db)
    shipped = [m.version for m in plan(default_sql_dir(), "plain")]
    assert shipped[:4] == [1, 2, 3, 4]
    assert [m.version for m in first] == shipped
    assert second == []
    conn = await asyncpg.connect(scratch_db)
    try:
        schemas = {r["nspname"] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
        recorded = await conn.fetch("SELECT version, flavour FROM public.itsmesh_migrations ORDER BY version")
    finally:
        await conn.close()
    assert {"streaming", "analytics", "alert", "auth"} <= schemas
    assert [r["version"] for r in recorded] == shipped


async def test_plain_postgres_rollups_answer_the_same_query_as_continuous_aggregates(scratch_db):
    await apply_migrations(scratch_db)
    conn = await asyncpg.connect(scratch_db)
    try:
        assert await detect_flavour(conn) == "plain"
        start = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
        rows = [
            (start + timedelta(seconds=10 * i), "cam-1", "", "", 10, 2 + i % 3, 50.0 + i) for i in range(12)
        ]
        await conn.copy_records_to_table(
            "traffic_metrics",
            schema_name="analytics",
            records=rows,
            columns=["time", "camera_id", "lane", "zone", "window_s", "vehicle_count", "mean_speed_kmh"],
        )
        buckets = await conn.fetch(
            "SELECT bucket, vehicle_count FROM analytics.traffic_metrics_1m"
            " WHERE camera_id = $1 ORDER BY bucket",
            "cam-1",
        )
    finally:
        await conn.close()
    assert [b["bucket"] for b in buckets] == [start, start + timedelta(minutes=1)]
    assert [b["vehicle_count"] for b in buckets] == [sum(r[5] for r in rows[:6]), sum(r[5] for r in rows[6:])]


async def test_an_edited_applied_migration_is_refused(scratch_db, tmp_path: Path):
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE public.t1 (id int);")
    await apply_migrations(scratch_db, tmp_path)
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE public.t1 (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(scratch_db, tmp_path)


async def test_a_failing_migration_names_itself_and_leaves_nothing_half_done(scratch_db, tmp_path: Path):
    (tmp_path / "0001_broken.sql").write_text("CREATE TABLE public.half (id int); SELECT * FROM nowhere;")
    with pytest.raises(MigrationError, match="0001_broken"):
        await apply_migrations(scratch_db, tmp_path)
    conn = await asyncpg.connect(scratch_db)
    try:
        assert await conn.fetchval("SELECT to_regclass('public.half')") is None
    finally:
        await conn.close()


def test_plan_picks_one_flavour_and_refuses_a_version_defined_twice(tmp_path: Path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0002_b.timescale.sql").write_text("SELECT 2")
    (tmp_path / "0002_b.plain.sql").write_text("SELECT 3")
    assert [m.sql for m in plan(tmp_path, "plain")] == ["SELECT 1", "SELECT 3"]
    assert [m.sql for m in plan(tmp_path, "timescale")] == ["SELECT 1", "SELECT 2"]
    (tmp_path / "0002_c.sql").write_text("SELECT 4")
    with pytest.raises(MigrationError, match="defined twice"):
        plan(tmp_path, "plain")
