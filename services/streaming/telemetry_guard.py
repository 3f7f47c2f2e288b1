"""Redis state of telemetry ingest: replayed nonces, idempotency keys and rate limits, one script per batch.

For every reading of a batch the script decides, atomically and in one round trip:

- ``dup``      its idempotency key was accepted within the key TTL (900 s) → duplicate result;
- ``pending``  another transmission of the same key is being published right now → wait for it;
- ``replay``   its nonce was seen from this device within the nonce TTL (300 s) → rejected;
- ``limited``  the device's or the credential's fixed one-minute window is full → rejected;
- ``ok``       the nonce is now used, both windows counted and the key claimed (``pending``) until the
               reading is durably in Kafka, when ``mark_accepted`` turns the claim into "accepted".

Keys: ``tm:idem:<device>:<key>``, ``tm:nonce:<device>:<nonce>``, ``tm:rate:dev:<device>:<minute>``,
``tm:rate:key:<credential>:<minute>``; all expire by themselves.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis

PREFIX: Final = "tm"
ACCEPTED: Final = b"a"

_DECIDE: Final = """
local limit = tonumber(ARGV[1])
local window_ttl = tonumber(ARGV[2])
local nonce_ttl = tonumber(ARGV[3])
local pending_ttl = tonumber(ARGV[4])
local claim = ARGV[5]
local dev = tonumber(redis.call('GET', KEYS[1]) or '0')
local cred = tonumber(redis.call('GET', KEYS[2]) or '0')
local counted = 0
local out = {}
for i = 1, (#KEYS - 2) / 2 do
  local idem = KEYS[1 + 2 * i]
  local state = redis.call('GET', idem)
  if state == 'a' then
    out[i] = 'dup'
  elseif state then
    out[i] = 'pending'
  elseif not redis.call('SET', KEYS[2 + 2 * i], '1', 'NX', 'EX', nonce_ttl) then
    out[i] = 'replay'
  elseif dev + counted >= limit or cred + counted >= limit then
    out[i] = 'limited'
  else
    counted = counted + 1
    redis.call('SET', idem, claim, 'EX', pending_ttl)
    out[i] = 'ok'
  end
end
if counted > 0 then
  for _, key in ipairs({KEYS[1], KEYS[2]}) do
    if redis.call('INCRBY', key, counted) == counted then
      redis.call('EXPIRE', key, window_ttl)
    end
  end
end
return out
"""

_ACCEPT: Final = """
for i = 1, #KEYS do redis.call('SET', KEYS[i], 'a', 'EX', ARGV[1]) end
return 0
"""

_RELEASE: Final = """
for i = 1, #KEYS, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i], KEYS[i + 1]) end
end
return 0
"""


class Decision(enum.Enum):
    """What the script decided for one reading."""

    OK = "ok"
    DUPLICATE = "dup"
    PENDING = "pending"
    REPLAY = "replay"
    LIMITED = "limited"


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """TTLs and limits of the Redis guard."""

    nonce_ttl_s: int = 300
    idempotency_ttl_s: int = 900
    pending_ttl_s: int = 30
    """How long a claim lives if its instance dies before Kafka answers."""
    rate_limit_per_minute: int = 600


@dataclass(frozen=True, slots=True)
class Candidate:
    """A reading that passed the stateless checks."""

    device_id: str
    nonce: str
    idempotency_key: str


class TelemetryGuard:
    """Nonce, idempotency and rate-limit state of telemetry ingest in Redis."""

    def __init__(self, redis: Redis, settings: GuardSettings | None = None) -> None:
        self._redis = redis
        self.settings = settings or GuardSettings()
        self._decide: Any = redis.register_script(_DECIDE)
        self._release: Any = redis.register_script(_RELEASE)
        self._accept: Any = redis.register_script(_ACCEPT)

    @staticmethod
    def _window(now_s: float) -> int:
        return int(now_s // 60)

    def _rate_keys(self, device_id: str, credential: str, now_s: float) -> list[str]:
        window = self._window(now_s)
        return [f"{PREFIX}:rate:dev:{device_id}:{window}", f"{PREFIX}:rate:key:{credential}:{window}"]

    @staticmethod
    def idempotency_key(device_id: str, key: str) -> str:
        """The Redis key of a reading's idempotency key."""
        return f"{PREFIX}:idem:{device_id}:{key}"

    @staticmethod
    def nonce_key(candidate: Candidate) -> str:
        """The Redis key of a reading's nonce."""
        return f"{PREFIX}:nonce:{candidate.device_id}:{candidate.nonce}"

    def retry_after_s(self, now_s: float) -> float:
        """Seconds until the current one-minute window ends."""
        return max(0.001, 60.0 * (self._window(now_s) + 1) - now_s)

    async def decide(
        self, device_id: str, credential: str, candidates: Sequence[Candidate], claim: str, now_s: float
    ) -> list[Decision]:
        """One decision per candidate, in order (see the module docstring)."""
        if not candidates:
            return []
        keys = self._rate_keys(device_id, credential, now_s)
        for candidate in candidates:
            keys.append(self.idempotency_key(candidate.device_id, candidate.idempotency_key))
            keys.append(self.nonce_key(candidate))
        settings = self.settings
        raw = await self._decide(
            keys=keys,
            args=[
                settings.rate_limit_per_minute,
                61,
                settings.nonce_ttl_s,
                settings.pending_ttl_s,
                claim,
            ],
        )
        return [Decision(item.decode() if isinstance(item, bytes) else str(item)) for item in raw]

    async def limited(self, device_id: str, credential: str, now_s: float) -> bool:
        """Whether the device's or the credential's window is already full."""
        counts = await self._redis.mget(self._rate_keys(device_id, credential, now_s))
        limit = self.settings.rate_limit_per_minute
        return any(int(count or 0) >= limit for count in counts)

    async def mark_accepted(self, keys: Sequence[str]) -> None:
        """Turn claims into "accepted" for the idempotency TTL (the readings are durably in Kafka)."""
        if keys:  # one script call: far cheaper to send than a pipeline of SETs
            await self._accept(keys=list(keys), args=[self.settings.idempotency_ttl_s])

    async def release(self, candidates: Sequence[Candidate], claim: str) -> None:
        """Undo this claim's readings that are still pending (Kafka refused): their keys and nonces are
        freed, so resending the very same signed readings can succeed."""
        keys: list[str] = []
        for candidate in candidates:
            keys.append(self.idempotency_key(candidate.device_id, candidate.idempotency_key))
            keys.append(self.nonce_key(candidate))
        if keys:
            await self._release(keys=keys, args=[claim])

    async def state(self, key: str) -> bytes | None:
        """The current value of an idempotency key: ``a``, a claim, or None."""
        value = await self._redis.get(key)
        return value.encode() if isinstance(value, str) else value
