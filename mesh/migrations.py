"""Versioned SQL migrations applied idempotently, with a TimescaleDB flavour when the extension exists.

Files live in ``infrastructure/sql`` and are named ``NNNN_name.sql`` (always applied),
``NNNN_name.timescale.sql`` (only with TimescaleDB) or ``NNNN_name.plain.sql`` (only without).
A file whose first line is ``-- itsmesh:no-transaction`` runs outside a transaction, which
TimescaleDB needs for continuous aggregates. Applied versions and checksums are recorded in
``public.itsmesh_migrations``; an edited, already-applied file is refused rather than skipped.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Literal

import asyncpg

log = logging.getLogger(__name__)

Flavour = Literal["timescale", "plain"]
_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<flavour>timescale|plain))?\.sql$")
_NO_TRANSACTION = "-- itsmesh:no-transaction"
# Any constant works; it only has to be the same in every process that migrates this database.
_LOCK_KEY = 0x17_5_3E5


class MigrationError(Exception):
    """A migration could not be applied, or an applied one was changed afterwards."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file chosen for this database's flavour."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def transactional(self) -> bool:
        return not self.sql.startswith(_NO_TRANSACTION)


def default_sql_dir() -> Traversable:
    """The migrations shipped with the package."""
    return resources.files("infrastructure") / "sql"


def plan(sql_dir: Traversable, flavour: Flavour) -> list[Migration]:
    """The migrations for `flavour`, ordered by version; a version may not be defined twice."""
    chosen: dict[int, Migration] = {}
    for entry in sql_dir.iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        file_flavour = match["flavour"]
        if file_flavour is not None and file_flavour != flavour:
            continue
        version = int(match["version"])
        if version in chosen:
            raise MigrationError(f"migration {version:04d} is defined twice for the {flavour} flavour")
        chosen[version] = Migration(version, match["name"], entry.read_text(encoding="utf-8"))
    return [chosen[v] for v in sorted(chosen)]


async def detect_flavour(conn: asyncpg.Connection) -> Flavour:
    """'timescale' if the timescaledb extension is installed or can be created here, else 'plain'."""
    available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    if not available:
        return "plain"
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
        # Present on disk but not preloaded (shared_preload_libraries): fall back rather than fail.
        log.warning("timescaledb is available but cannot be created: %s; using plain PostgreSQL", exc)
        return "plain"
    return "timescale"


async def apply_migrations(dsn: str, sql_dir: Traversable | None = None) -> list[Migration]:
    """Apply every pending migration under an advisory lock; returns the ones applied now."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            return await _apply_locked(conn, sql_dir or default_sql_dir())
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


async def _apply_locked(conn: asyncpg.Connection, sql_dir: Traversable) -> list[Migration]:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS public.itsmesh_migrations (
               version integer PRIMARY KEY,
               name text NOT NULL,
               checksum text NOT NULL,
               flavour text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    flavour = await detect_flavour(conn)
    done = {
        r["version"]: r
        for r in await conn.fetch("SELECT version, name, checksum FROM public.itsmesh_migrations")
    }
    applied: list[Migration] = []
    for migration in plan(sql_dir, flavour):
        previous = done.get(migration.version)
        if previous is not None:
            if previous["checksum"] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} changed after it was applied; "
                    "add a new migration instead of editing an applied one"
                )
            continue
        try:
            if migration.transactional:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await _record(conn, migration, flavour)
            else:
                await conn.execute(migration.sql)
                await _record(conn, migration, flavour)
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"migration {migration.version:04d}_{migration.name} failed: {exc}") from exc
        log.info("applied migration", extra={"version": migration.version, "migration": migration.name})
        applied.append(migration)
    return applied


async def _record(conn: asyncpg.Connection, migration: Migration, flavour: Flavour) -> None:
    await conn.execute(
        "INSERT INTO public.itsmesh_migrations (version, name, checksum, flavour) VALUES ($1, $2, $3, $4)",
        migration.version,
        migration.name,
        migration.checksum,
        flavour,
    )
