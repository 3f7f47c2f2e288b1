"""Short-lived auth state in Redis: revoked token ids, per-source lockouts and used TOTP steps.

Key names live under ``itsmesh:auth:``. The revocation list's format is shared with every verifier and
lives in ``mesh.tokens``. A Redis outage fails open for the source lockout (the per-account lockout in
PostgreSQL still holds) and closed for revocations and TOTP replay protection, whose guarantees cannot
be kept without it.
"""

from __future__ import annotations

import logging
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from mesh.tokens import RevocationKeys, revoke_subject, revoke_token_id
from services.auth.errors import Unavailable
from services.auth.lockout import LockoutPolicy

log = logging.getLogger(__name__)

NAMESPACE: Final = "itsmesh:auth"
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)

# Accept a TOTP step only if it is newer than the last accepted one (RFC 6238 §5.2), atomically.
_ACCEPT_STEP: Final = """
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
local step = tonumber(ARGV[1])
if step <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# Count a failure from a source and (re)start the window after which the count lapses.
_SOURCE_FAILURE: Final = """
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return count
"""


class RedisState:
    """Reads and writes the auth service's Redis keys."""

    def __init__(self, redis: Redis, *, namespace: str = NAMESPACE) -> None:
        self._redis = redis
        self._ns = namespace
        self._revocation_keys = RevocationKeys(namespace)
        self._accept_step = redis.register_script(_ACCEPT_STEP)
        self._source_failure = redis.register_script(_SOURCE_FAILURE)

    def _source_key(self, kind: str, source: str) -> str:
        return f"{self._ns}:source:{kind}:{source}"

    async def revoke(self, token_id: str, expires_at: float) -> None:
        """Put an access token id on the revocation list until it expires."""
        try:
            await revoke_token_id(self._redis, token_id, expires_at, keys=self._revocation_keys)
        except _REDIS_ERRORS as exc:
            raise Unavailable("the revocation list is unreachable; the token was not revoked") from exc

    async def revoke_subject(self, subject: str, revoked_at: float, until: float) -> None:
        """Revoke every access token of ``subject`` issued up to ``revoked_at`` (they expire by ``until``)."""
        try:
            await revoke_subject(self._redis, subject, revoked_at, until, keys=self._revocation_keys)
        except _REDIS_ERRORS as exc:
            raise Unavailable("the revocation list is unreachable; the tokens were not revoked") from exc

    async def source_lock_remaining(self, source: str) -> float:
        """Seconds the source address is still locked for (0 = not locked, or Redis unreachable)."""
        if not source:
            return 0.0
        try:
            ttl_ms = await self._redis.pttl(self._source_key("lock", source))
        except _REDIS_ERRORS:
            log.warning("cannot read source lockouts from Redis; not enforcing them")
            return 0.0
        return max(int(ttl_ms), 0) / 1000.0

    async def record_source_failure(self, source: str, policy: LockoutPolicy) -> float:
        """Count a failed login from ``source``; returns the seconds it is locked for now (0 = not)."""
        if not source:
            return 0.0
        try:
            count = int(
                await self._source_failure(
                    keys=[self._source_key("failures", source)], args=[int(policy.window_s)]
                )
            )
            seconds = policy.lock_for(count)
            if seconds:
                await self._redis.set(self._source_key("lock", source), "1", px=int(seconds * 1000))
        except _REDIS_ERRORS:
            log.warning("cannot record a failed login in Redis; source lockout not enforced")
            return 0.0
        return seconds

    async def clear_source(self, source: str) -> None:
        """Forget a source's failures and lock."""
        await self._redis.delete(self._source_key("failures", source), self._source_key("lock", source))

    async def accept_totp_step(self, user_id: str, step: int, ttl_s: int = 300) -> bool:
        """Record ``step`` as used for ``user_id``; False if it (or a later step) was used already."""
        try:
            accepted = await self._accept_step(keys=[f"{self._ns}:totp:{user_id}"], args=[step, ttl_s])
        except _REDIS_ERRORS as exc:
            raise Unavailable("cannot check TOTP code reuse right now") from exc
        return bool(int(accepted))
