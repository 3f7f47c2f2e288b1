"""The latest frame of each camera in Redis (about one per second, short TTL), for console thumbnails."""

from __future__ import annotations

import logging
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from itsmesh.v1 import streaming_pb2

log = logging.getLogger(__name__)

KEY_PREFIX: Final = "itsmesh:streaming:latest-frame:"
TTL_S: Final = 30
INTERVAL_S: Final = 1.0
"""Keep at most one frame per camera per this many seconds."""


class ThumbnailStore:
    """Reads and writes LatestFrame records; writing never fails the caller (thumbnails are best effort)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def healthy(self) -> bool:
        """Whether Redis answers a PING within the client's socket timeout."""
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def put(self, frame: streaming_pb2.LatestFrame) -> None:
        """Keep ``frame`` as its camera's latest for TTL_S seconds."""
        try:
            await self._redis.set(KEY_PREFIX + frame.camera_id, frame.SerializeToString(), ex=TTL_S)
        except (RedisError, OSError) as exc:
            log.warning("thumbnail not stored", extra={"camera_id": frame.camera_id, "error": str(exc)})

    async def get(self, camera_id: str) -> streaming_pb2.LatestFrame | None:
        """The camera's latest frame, or None when none was kept recently; raises RedisError if down."""
        raw = await self._redis.get(KEY_PREFIX + camera_id)
        return streaming_pb2.LatestFrame.FromString(raw) if isinstance(raw, bytes) else None

    async def delete(self, camera_id: str) -> None:
        """Forget a deleted camera's frame."""
        await self._redis.delete(KEY_PREFIX + camera_id)
