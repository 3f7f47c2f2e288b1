"""Device HMAC secrets for signature checks, fetched from auth (GetDeviceSecret) and cached briefly.

``SecretCache`` is the pure part (clock passed in): an entry lives ``ttl_s`` (30 s), never past the
secret's own expiry (a rotated-out secret keeps verifying only for its grace period), and "no such
secret" is remembered ``negative_ttl_s`` (5 s) so a flood of readings from an unknown device costs auth
one call, not one per reading. ``DeviceSecrets`` is the shell: one GetDeviceSecret through the mesh per
miss, shared by concurrent misses of the same key. Readings name their secret with ``signing_key_id``;
an empty one means the device's current secret, looked up again once when a signature does not verify
(the secret may have rotated since it was cached).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import grpc

from itsmesh.v1 import auth_pb2, auth_pb2_grpc
from mesh.status import StatusError, status_error

Clock = Callable[[], float]

FETCH_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """One HMAC secret of a device."""

    device_id: str
    key_id: str
    secret: bytes
    expires_at: float | None
    """When a rotated-out secret stops verifying (None for the current one)."""
    disabled: bool


@dataclass(frozen=True, slots=True)
class NoSecret:
    """Auth knows no such device or secret (or it has expired)."""

    device_id: str
    key_id: str


Lookup = DeviceKey | NoSecret


@dataclass(slots=True)
class _Entry:
    value: Lookup
    until: float


class SecretCache:
    """Recently fetched secrets by (device_id, key_id); key_id "" is the device's current secret."""

    def __init__(self, ttl_s: float = 30.0, negative_ttl_s: float = 5.0, max_entries: int = 100_000) -> None:
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, device_id: str, key_id: str, now: float) -> Lookup | None:
        """The cached answer, or None when it must be fetched."""
        entry = self._entries.get((device_id, key_id))
        if entry is None:
            return None
        if now >= entry.until:
            del self._entries[(device_id, key_id)]
            return None
        self._entries.move_to_end((device_id, key_id))
        return entry.value

    def put(self, device_id: str, key_id: str, value: Lookup, now: float) -> None:
        """Remember an answer; a secret also under its own key id."""
        if isinstance(value, NoSecret):
            until = now + self._negative_ttl_s
        else:
            until = now + self._ttl_s
            if value.expires_at is not None:
                until = min(until, value.expires_at)
        self._entries[(device_id, key_id)] = _Entry(value, until)
        self._entries.move_to_end((device_id, key_id))
        if isinstance(value, DeviceKey) and key_id != value.key_id:
            self._entries[(device_id, value.key_id)] = _Entry(value, until)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget(self, device_id: str, key_id: str) -> None:
        """Drop one entry (a signature did not verify with a cached current secret)."""
        self._entries.pop((device_id, key_id), None)


class DeviceSecrets:
    """Device secrets from auth through the mesh, cached (see the module docstring)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        cache: SecretCache | None = None,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self.cache = cache or SecretCache()
        self._clock = clock
        self._wall_clock = wall_clock
        self._inflight: dict[tuple[str, str], asyncio.Future[Lookup]] = {}

    async def lookup(self, device_id: str, key_id: str, *, fresh: bool = False) -> Lookup:
        """The secret ``key_id`` ("" = current) of ``device_id``; raises StatusError(UNAVAILABLE)."""
        if not fresh:
            cached = self.cache.get(device_id, key_id, self._clock())
            if cached is not None:
                return cached
        pending = self._inflight.get((device_id, key_id))
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Lookup] = asyncio.get_running_loop().create_future()
        self._inflight[(device_id, key_id)] = future
        try:
            value = await self._fetch(device_id, key_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a future nobody shared never logs it
            raise
        else:
            future.set_result(value)
            self.cache.put(device_id, key_id, value, self._clock())
            return value
        finally:
            del self._inflight[(device_id, key_id)]

    async def _fetch(self, device_id: str, key_id: str) -> Lookup:
        try:
            reply = await self._stub.GetDeviceSecret(
                auth_pb2.GetDeviceSecretRequest(device_id=device_id, key_id=key_id),
                timeout=FETCH_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return NoSecret(device_id, key_id)
            raise status_error(
                grpc.StatusCode.UNAVAILABLE,
                f"device secrets cannot be read from auth ({exc.code().name})",
                reason="AUTH_UNAVAILABLE",
                retry_delay_s=1.0,
            ) from exc
        except StatusError as exc:  # no service token (auth unreachable or refused the credentials)
            raise status_error(
                grpc.StatusCode.UNAVAILABLE,
                f"device secrets cannot be read from auth: {exc.message}",
                reason="AUTH_UNAVAILABLE",
                retry_delay_s=1.0,
            ) from exc
        expires_at = None
        if reply.HasField("expire_time"):
            # Convert the wall-clock expiry to the cache's monotonic clock.
            wall = reply.expire_time.seconds + reply.expire_time.nanos / 1e9
            expires_at = self._clock() + (wall - self._wall_clock())
        return DeviceKey(
            device_id=reply.device_id,
            key_id=reply.key_id,
            secret=reply.hmac_secret,
            expires_at=expires_at,
            disabled=reply.device_disabled,
        )
