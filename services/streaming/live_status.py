"""The cluster view of camera streams in Redis: each instance writes the status of the streams it holds.

One hash per camera (``owner`` stream id, ``instance``, serialized ``status`` CameraStatus and ``stream``
StreamInfo) and a sorted set of live cameras scored by lease expiry; the owning instance renews the
lease every REFRESH_S seconds, so any instance answers the status RPCs for the whole cluster. A stream
that ends leaves an OFFLINE status behind (longer TTL, no owner). A crashed instance's streams drop out
of the view when their leases lapse, and one surviving instance (whichever removes the lapsed entry from
the sorted set) turns them OFFLINE and announces it.

The hash is also the cluster-wide claim of "one live stream per camera": a stream opening on another
instance sees the owner and gets ALREADY_EXISTS, or takes the camera over; the old owner learns it at its
next renewal. Every write is a short Lua script, so check-and-set is atomic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Final

from redis.asyncio import Redis

from itsmesh.v1 import streaming_pb2

log = logging.getLogger(__name__)

KEY_PREFIX: Final = "itsmesh:streaming:camera-status:"
INDEX_KEY: Final = "itsmesh:streaming:live-cameras"
LEASE_S: Final = 5.0
"""A live status disappears this long after its instance last renewed it."""
REFRESH_S: Final = 1.0
"""How often the owning instance renews (and refreshes) a live status."""
KEEP_LAPSED_S: Final = 60.0
"""A lapsed live status is kept this long past its lease, for the instance that reports it offline."""
OFFLINE_TTL_S: Final = 7 * 24 * 3600
"""How long the OFFLINE status of a camera whose stream ended is kept."""

# KEYS: status hash, live index. ARGV: stream id, instance, take over (1/0), status, stream, key ttl ms,
# camera id, lease expiry (unix s), now (unix s). Returns "" when claimed, else the instance holding the
# camera (an owner whose lease lapsed holds nothing).
_CLAIM: Final = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local lease = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[7]) or '0')
if owner and owner ~= '' and owner ~= ARGV[1] and ARGV[3] ~= '1' and lease >= tonumber(ARGV[9]) then
  return redis.call('HGET', KEYS[1], 'instance') or '?'
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'instance', ARGV[2], 'status', ARGV[4], 'stream', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[8], ARGV[7])
return ''
"""

# Same KEYS/ARGV without take over. Returns 1 renewed, 0 owned by another stream, -1 gone.
_RENEW: Final = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner or owner == '' then return -1 end
if owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'stream', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[8], ARGV[7])
return 1
"""

# KEYS: live index. ARGV: now (unix s), most to take. Removes and returns lapsed cameras: each goes to
# exactly one caller.
_TAKE_LAPSED: Final = """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, camera in ipairs(lapsed) do redis.call('ZREM', KEYS[1], camera) end
return lapsed
"""

# KEYS: status hash, live index. ARGV: stream id, offline status, ttl ms, camera id.
_RELEASE: Final = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'status', ARGV[2])
redis.call('HDEL', KEYS[1], 'stream')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
"""


_LIVE_ONLY: Final = (
    "stream_id",
    "instance_id",
    "frames_per_second",
    "frames_accepted",
    "frames_rejected",
    "frames_duplicate",
    "ack_latency_p50_ms",
    "ack_latency_p99_ms",
)


def offline_status(live: streaming_pb2.CameraStatus) -> streaming_pb2.CameraStatus:
    """The status a camera keeps once its stream ended: no stream, counters or rates; progress and quality."""
    status = streaming_pb2.CameraStatus()
    status.CopyFrom(live)
    status.state = streaming_pb2.CAMERA_CONNECTION_STATE_OFFLINE
    for name in _LIVE_ONLY:
        status.ClearField(name)
    return status


class Renewal(Enum):
    """What renewing a live status found."""

    RENEWED = 1
    TAKEN_OVER = 0
    """Another stream (on any instance) holds the camera now."""
    GONE = -1
    """The status vanished: the camera was deleted, or Redis lost it (lease lapsed, restart)."""


class LiveStatusStore:
    """Reads and writes the cluster view; Redis errors reach the caller, who decides how to degrade."""

    def __init__(self, redis: Redis, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._wall_clock = wall_clock
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._take_lapsed = redis.register_script(_TAKE_LAPSED)

    def _live_args(
        self, instance_id: str, status: streaming_pb2.CameraStatus, stream: streaming_pb2.StreamInfo
    ) -> list[bytes | str | int | float]:
        now = self._wall_clock()
        return [
            stream.stream_id,
            instance_id,
            0,
            status.SerializeToString(),
            stream.SerializeToString(),
            int((LEASE_S + KEEP_LAPSED_S) * 1000),  # the lease itself is the score in the index
            status.camera_id,
            now + LEASE_S,
            now,
        ]

    async def claim(
        self,
        instance_id: str,
        status: streaming_pb2.CameraStatus,
        stream: streaming_pb2.StreamInfo,
        *,
        take_over: bool,
    ) -> str | None:
        """Make ``stream`` the camera's live stream; None, or the instance holding it (take_over unset)."""
        args = self._live_args(instance_id, status, stream)
        args[2] = 1 if take_over else 0
        holder = await self._claim(keys=[KEY_PREFIX + status.camera_id, INDEX_KEY], args=args)
        holder = holder.decode() if isinstance(holder, bytes) else str(holder)
        return holder or None

    async def renew(
        self, instance_id: str, status: streaming_pb2.CameraStatus, stream: streaming_pb2.StreamInfo
    ) -> Renewal:
        """Refresh the live status of a stream this instance holds."""
        args = self._live_args(instance_id, status, stream)
        result = await self._renew(keys=[KEY_PREFIX + status.camera_id, INDEX_KEY], args=args)
        return Renewal(int(result))

    async def release(self, stream_id: str, offline: streaming_pb2.CameraStatus) -> bool:
        """Leave ``offline`` as the camera's status, unless another stream holds the camera by now."""
        released = await self._release(
            keys=[KEY_PREFIX + offline.camera_id, INDEX_KEY],
            args=[stream_id, offline.SerializeToString(), OFFLINE_TTL_S * 1000, offline.camera_id],
        )
        return bool(released)

    async def take_lapsed(self, limit: int = 100) -> list[streaming_pb2.CameraStatus]:
        """Live statuses whose lease lapsed (their instance died), each handed to one caller only."""
        lapsed = await self._take_lapsed(keys=[INDEX_KEY], args=[self._wall_clock(), limit])
        cameras = [m.decode() if isinstance(m, bytes) else str(m) for m in lapsed]
        if not cameras:
            return []
        found = await self._hashes(cameras, "status")
        return [streaming_pb2.CameraStatus.FromString(raw) for raw in found if isinstance(raw, bytes)]

    async def _hashes(self, camera_ids: Sequence[str], field: str) -> list[object]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for camera_id in camera_ids:
                pipe.hget(KEY_PREFIX + camera_id, field)
            return list(await pipe.execute())

    async def forget(self, camera_id: str) -> None:
        """Drop a deleted camera from the view (its owner then ends the stream at its next renewal)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(KEY_PREFIX + camera_id)
            pipe.zrem(INDEX_KEY, camera_id)
            await pipe.execute()

    async def statuses(self, camera_ids: Sequence[str]) -> dict[str, streaming_pb2.CameraStatus]:
        """The statuses Redis holds for ``camera_ids`` (live with an unexpired lease, or offline)."""
        if not camera_ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for camera_id in camera_ids:
                pipe.hget(KEY_PREFIX + camera_id, "status")
                pipe.zscore(INDEX_KEY, camera_id)
            raw = await pipe.execute()
        now, found = self._wall_clock(), {}
        for camera_id, value, lease in zip(camera_ids, raw[::2], raw[1::2], strict=True):
            if not isinstance(value, bytes):
                continue
            status = streaming_pb2.CameraStatus.FromString(value)
            if status.state == streaming_pb2.CAMERA_CONNECTION_STATE_ONLINE and (
                lease is None or lease < now
            ):
                continue  # its instance stopped renewing: not online, whatever the last status said
            found[camera_id] = status
        return found

    async def live_cameras(self) -> list[str]:
        """Cameras with a live stream anywhere in the cluster (unexpired leases), sorted by id."""
        members = await self._redis.zrangebyscore(INDEX_KEY, self._wall_clock(), "+inf")
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def live_streams(self) -> list[streaming_pb2.StreamInfo]:
        """The live frame streams of the whole cluster."""
        cameras = await self.live_cameras()
        if not cameras:
            return []
        raw = await self._hashes(cameras, "stream")
        return [streaming_pb2.StreamInfo.FromString(value) for value in raw if isinstance(value, bytes)]
