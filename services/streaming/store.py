"""The streaming service's SQL (schema `streaming`): camera registry, its outbox, durable frame progress."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from itsmesh.v1 import common_pb2


class CameraExists(Exception):
    """A camera with this id is already registered."""


class CameraNotFound(Exception):
    """No camera with this id."""


class StaleEtag(Exception):
    """The etag sent is not the camera's current one."""


@dataclass(frozen=True, slots=True)
class CameraPage:
    """One page of cameras, ordered by camera_id."""

    cameras: list[common_pb2.Camera]
    next_after: str | None
    total: int


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event written in the transaction of the change it announces, published later by the relay."""

    topic: str
    key: str
    event_id: str
    payload: bytes


Announce = Callable[[common_pb2.Camera], OutboxEvent]
"""Builds the event announcing a change from the camera as stored (version, etag, times)."""


async def _enqueue(conn: asyncpg.Connection | PoolConnectionProxy, event: OutboxEvent) -> int:
    """Write ``event`` to the outbox; returns its row id."""
    return await conn.fetchval(  # type: ignore[no-any-return]  # bigserial: always an int
        "INSERT INTO streaming.outbox (topic, key, event_id, payload) VALUES ($1, $2, $3, $4) RETURNING id",
        event.topic,
        event.key,
        event.event_id,
        event.payload,
    )


def _camera(row: asyncpg.Record) -> common_pb2.Camera:
    camera = common_pb2.Camera.FromString(row["config"])
    camera.config_version = row["config_version"]
    camera.etag = row["etag"]
    camera.create_time.FromDatetime(row["created_at"])
    camera.update_time.FromDatetime(row["updated_at"])
    return camera


def _config(camera: common_pb2.Camera) -> bytes:
    stored = common_pb2.Camera()
    stored.CopyFrom(camera)
    for output_only in ("create_time", "update_time", "config_version", "etag"):
        stored.ClearField(output_only)
    return stored.SerializeToString(deterministic=True)


class CameraStore:
    """Cameras and frame progress in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, camera: common_pb2.Camera, announce: Announce) -> tuple[common_pb2.Camera, int]:
        """Insert a new camera and its announcement in one transaction; raises CameraExists.

        Returns the camera as stored and the announcement's outbox row id.
        """
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    """
                INSERT INTO streaming.cameras (camera_id, config, labels, disabled, etag)
                VALUES ($1, $2, $3::jsonb, $4, $5)
                RETURNING *
                """,
                    camera.camera_id,
                    _config(camera),
                    json.dumps(dict(camera.labels)),
                    camera.disabled,
                    uuid.uuid4().hex,
                )
                assert row is not None  # INSERT … RETURNING always returns the row
                stored = _camera(row)
                row_id = await _enqueue(conn, announce(stored))
        except asyncpg.UniqueViolationError as exc:
            raise CameraExists(camera.camera_id) from exc
        return stored, row_id

    async def get(self, camera_id: str) -> common_pb2.Camera:
        """One camera; raises CameraNotFound."""
        row = await self._pool.fetchrow("SELECT * FROM streaming.cameras WHERE camera_id = $1", camera_id)
        if row is None:
            raise CameraNotFound(camera_id)
        return _camera(row)

    async def replace(
        self, camera: common_pb2.Camera, etag: str, announce: Announce
    ) -> tuple[common_pb2.Camera, int]:
        """Store a new configuration if `etag` (when non-empty) is current, with its announcement.

        Bumps the config version; returns the camera as stored and the announcement's outbox row id;
        raises CameraNotFound or StaleEtag.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
            UPDATE streaming.cameras
               SET config = $2, labels = $3::jsonb, disabled = $4, etag = $5,
                   config_version = config_version + 1, updated_at = now()
             WHERE camera_id = $1 AND ($6 = '' OR etag = $6)
            RETURNING *
            """,
                camera.camera_id,
                _config(camera),
                json.dumps(dict(camera.labels)),
                camera.disabled,
                uuid.uuid4().hex,
                etag,
            )
            if row is not None:
                stored = _camera(row)
                return stored, await _enqueue(conn, announce(stored))
        await self.get(camera.camera_id)  # raises CameraNotFound when it is gone
        raise StaleEtag(camera.camera_id)

    async def delete(self, camera_id: str, etag: str, announce: Announce) -> tuple[common_pb2.Camera, int]:
        """Delete a camera and its frame progress, with its announcement.

        Returns its last configuration and the announcement's outbox row id.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "DELETE FROM streaming.cameras WHERE camera_id = $1 AND ($2 = '' OR etag = $2) RETURNING *",
                camera_id,
                etag,
            )
            if row is None:
                exists = await conn.fetchval(
                    "SELECT 1 FROM streaming.cameras WHERE camera_id = $1", camera_id
                )
                raise StaleEtag(camera_id) if exists else CameraNotFound(camera_id)
            await conn.execute("DELETE FROM streaming.frame_progress WHERE camera_id = $1", camera_id)
            last = _camera(row)
            row_id = await _enqueue(conn, announce(last))
        return last, row_id

    async def list(
        self, *, after: str, limit: int, labels: Mapping[str, str], include_disabled: bool
    ) -> CameraPage:
        """Cameras with id > `after` matching the filters, at most `limit` of them."""
        args = (json.dumps(dict(labels)), include_disabled)
        rows = await self._pool.fetch(
            """
            SELECT * FROM streaming.cameras
             WHERE labels @> $1::jsonb AND ($2 OR NOT disabled) AND camera_id > $3
             ORDER BY camera_id LIMIT $4
            """,
            *args,
            after,
            limit + 1,
        )
        total = await self._pool.fetchval(
            "SELECT count(*) FROM streaming.cameras WHERE labels @> $1::jsonb AND ($2 OR NOT disabled)", *args
        )
        cameras = [_camera(row) for row in rows[:limit]]
        next_after = cameras[-1].camera_id if len(rows) > limit else None
        return CameraPage(cameras, next_after, int(total))

    async def count(self) -> int:
        """Registered cameras, disabled ones included."""
        return int(await self._pool.fetchval("SELECT count(*) FROM streaming.cameras"))

    async def acked_through(self, camera_id: str) -> tuple[int, datetime | None]:
        """The camera's durable high-water mark and the capture time of the frame that set it."""
        row = await self._pool.fetchrow(
            """
            SELECT acked_through_sequence, last_capture_time
              FROM streaming.frame_progress WHERE camera_id = $1
            """,
            camera_id,
        )
        if row is None:
            return 0, None
        return int(row["acked_through_sequence"]), row["last_capture_time"]

    async def acked_through_many(self, camera_ids: Sequence[str]) -> dict[str, tuple[int, datetime | None]]:
        """``acked_through`` of several cameras in one query; cameras that never streamed are absent."""
        rows = await self._pool.fetch(
            """
            SELECT camera_id, acked_through_sequence, last_capture_time
              FROM streaming.frame_progress WHERE camera_id = ANY($1::text[])
            """,
            list(camera_ids),
        )
        return {
            row["camera_id"]: (int(row["acked_through_sequence"]), row["last_capture_time"]) for row in rows
        }

    async def advance(self, camera_id: str, sequence: int, capture_time: datetime | None) -> None:
        """Raise the durable high-water mark (never lowers it; nothing for a camera deleted meanwhile)."""
        await self._pool.execute(
            """
            INSERT INTO streaming.frame_progress AS p (camera_id, acked_through_sequence, last_capture_time)
            SELECT $1::text, $2::bigint, $3::timestamptz
             WHERE EXISTS (SELECT 1 FROM streaming.cameras WHERE camera_id = $1)  -- none for deleted cameras
            ON CONFLICT (camera_id) DO UPDATE
               SET acked_through_sequence =
                       GREATEST(p.acked_through_sequence, EXCLUDED.acked_through_sequence),
                   last_capture_time = CASE
                       WHEN EXCLUDED.acked_through_sequence > p.acked_through_sequence
                       THEN coalesce(EXCLUDED.last_capture_time, p.last_capture_time)
                       ELSE p.last_capture_time END,
                   updated_at = now()
            """,
            camera_id,
            sequence,
            capture_time,
        )


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An unpublished outbox row."""

    id: int
    event: OutboxEvent


# Any constant works; it only has to be the same in every streaming instance using this database.
_RELAY_LOCK_KEY = 0x5_7EA_0B0


class Outbox:
    """The registry's outbox table: what the relay reads, publishes and marks."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def relay(self, limit: int, publish: Callable[[list[OutboxRow]], Awaitable[None]]) -> list[int]:
        """Hand the oldest unpublished rows to ``publish``; mark them published once it returns.

        One instance relays at a time (a transaction-scoped advisory lock), so rows leave in id order; if
        ``publish`` raises, nothing is marked and the rows are offered again. Returns the ids published
        (none also when another instance holds the lock).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RELAY_LOCK_KEY):
                return []
            rows = await conn.fetch(
                """
                SELECT id, topic, key, event_id, payload FROM streaming.outbox
                 WHERE published_at IS NULL ORDER BY id LIMIT $1
                """,
                limit,
            )
            if not rows:
                return []
            await publish(
                [
                    OutboxRow(r["id"], OutboxEvent(r["topic"], r["key"], r["event_id"], bytes(r["payload"])))
                    for r in rows
                ]
            )
            ids = [int(r["id"]) for r in rows]
            await conn.execute(
                "UPDATE streaming.outbox SET published_at = now() WHERE id = ANY($1::bigint[])", ids
            )
        return ids

    async def prune(self, older_than_s: float) -> int:
        """Delete rows published more than ``older_than_s`` seconds ago; returns how many."""
        result = await self._pool.execute(
            "DELETE FROM streaming.outbox WHERE published_at < now() - make_interval(secs => $1)",
            older_than_s,
        )
        return int(result.split()[-1])
