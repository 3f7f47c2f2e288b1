"""Access-token verification for every service: RS256 JWTs checked locally against a cached JWKS.

DESIGN §5/§6: the auth service signs short-lived RS256 access tokens; every other service verifies them
itself, so no request costs a call to auth. The pieces, from pure to I/O:

- ``TokenVerifier`` (pure): the signature against a key set, then ``iss``, ``aud``, ``exp``, ``nbf``/``iat``
  with a leeway, against a ``now`` it is given. Only ``RS256`` is accepted (``alg=none``, ``HS256`` signed
  with the public key and every other algorithm are refused before any key is touched), and only RSA keys
  of at least 2048 bits are loaded from the JWKS.
- ``RevokedTokens`` (pure): the revoked ``jti``s with their expiry, mirrored from Redis.
- ``VerifiedTokenCache`` (pure): a bounded LRU of verified tokens keyed by a hash of the token, each entry
  kept until ``min(exp, now + ttl)``, so a token seen again costs a dictionary lookup.
- ``JwtAuthenticator`` (the shell, an ``Authenticator``): reads ``authorization: Bearer``, answers from the
  cache or verifies, checks the revocation mirror, builds the ``Principal`` and enforces the method's
  permission from ``mesh.permissions`` with ``authorize``. The JWKS is fetched from the auth service's
  HTTP URL only when a token names an unknown ``kid`` (``RefetchBudget``: a burst of a few fetches, then
  one per ``min_refetch_interval_s``, so a flood of made-up kids cannot hammer auth; concurrent misses
  share one fetch) and in the background every ``jwks_refresh_interval_s``. Revocations
  arrive over Redis pub/sub with a periodic full re-read that repairs missed messages; a Redis outage
  keeps the last known list (static stability), so the hot path never touches the network.

``revoke_token_id`` is the writer side the auth service uses; the key names live here so both agree.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Protocol

import grpc
import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import AliasChoices, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mesh.interceptors.auth import (
    InvocationMetadata,
    PermissionMap,
    Principal,
    Unauthenticated,
    authorize,
    bearer_token,
)
from mesh.permissions import METHOD_PERMISSIONS, is_anonymous, permissions_for
from mesh.redis_connect import connect_redis
from mesh.settings import ServiceSettings
from mesh.status import StatusError

__all__ = [
    "ALLOWED_ALGORITHM",
    "ANONYMOUS",
    "SUBJECT_PREFIX",
    "AuthClientSettings",
    "HttpJwksSource",
    "JwksSource",
    "JwtAuthenticator",
    "RefetchBudget",
    "RevocationKeys",
    "RevokedTokens",
    "ServiceTokenSource",
    "TokenRejected",
    "TokenVerifier",
    "VerifiedToken",
    "VerifiedTokenCache",
    "load_jwks",
    "principal_of",
    "read_header",
    "revoke_subject",
    "revoke_token_id",
    "subject_member",
    "token_auth",
]

log = logging.getLogger(__name__)

ALLOWED_ALGORITHM: Final = "RS256"
"""The one signing algorithm accepted (DESIGN §6)."""

MIN_RSA_BITS: Final = 2048
MAX_TOKEN_CHARS: Final = 8192
"""Longer bearer values are refused unparsed: no legitimate access token comes close."""

ANONYMOUS: Final = Principal("anonymous", kind="anonymous")
"""The principal of calls to methods every caller may make (login, JWKS, ...)."""

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]+")
_PKCS1V15: Final = padding.PKCS1v15()
_SHA256: Final = hashes.SHA256()


class AuthClientSettings(ServiceSettings):
    """Settings of a service that verifies access tokens; each service's settings class extends it.

    ``ITSMESH_AUTH_URL``, ``ITSMESH_TOKEN_ISSUER`` and ``ITSMESH_TOKEN_AUDIENCE`` are shared by every
    service (the auth service issues with the same values); ``require_auth`` is per service.
    """

    require_auth: bool = Field(
        True, description="Require a valid access token on every RPC except health and reflection."
    )
    auth_url: str = Field(
        "http://127.0.0.1:8000",
        validation_alias=AliasChoices("ITSMESH_AUTH_URL"),
        description="Base URL of the auth service's HTTP API; the JWKS is read from /.well-known/jwks.json.",
    )
    token_issuer: str = Field(
        "itsmesh-auth",
        validation_alias=AliasChoices("ITSMESH_TOKEN_ISSUER"),
        description="iss claim of access tokens.",
    )
    token_audience: str = Field(
        "itsmesh",
        validation_alias=AliasChoices("ITSMESH_TOKEN_AUDIENCE"),
        description="aud claim every service requires.",
    )


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


class TokenRejected(Unauthenticated):
    """A bearer token that does not verify; ``why`` is one of the proto's TokenInactiveReason names.

    ``why``: MALFORMED, BAD_SIGNATURE, ALGORITHM_NOT_ALLOWED, UNKNOWN_KEY, EXPIRED, NOT_YET_VALID,
    WRONG_AUDIENCE, WRONG_ISSUER, REVOKED. The ErrorInfo reason is ``TOKEN_<why>``.
    """

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message, reason=f"TOKEN_{why}")
        self.why = why


# ---------------------------------------------------------------------------------------------------------
# Pure core: keys, verification, revocations, cache
# ---------------------------------------------------------------------------------------------------------


def _b64url_int(value: object) -> int:
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise ValueError("not a base64url integer")
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def load_jwks(document: Mapping[str, Any]) -> dict[str, rsa.RSAPublicKey]:
    """The usable keys of a JWKS document by ``kid``: RSA signature keys for RS256, ≥ 2048 bits.

    Anything else (other key types or algorithms, encryption keys, short or malformed keys) is skipped with
    a warning, never raised: one bad entry must not take the good ones down.
    """
    keys: dict[str, rsa.RSAPublicKey] = {}
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("a JWKS document has a 'keys' list")
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        kid = entry.get("kid")
        usable = (
            isinstance(kid, str)
            and kid
            and entry.get("kty") == "RSA"
            and entry.get("alg", ALLOWED_ALGORITHM) == ALLOWED_ALGORITHM
            and entry.get("use", "sig") == "sig"
        )
        if not usable:
            log.warning("skipping a JWKS entry that is not an RS256 signing key", extra={"kid": kid})
            continue
        try:
            key = rsa.RSAPublicNumbers(_b64url_int(entry.get("e")), _b64url_int(entry.get("n"))).public_key()
        except (ValueError, TypeError, binascii.Error):
            log.warning("skipping a malformed JWKS entry", extra={"kid": kid})
            continue
        if key.key_size < MIN_RSA_BITS:
            log.warning("skipping a JWKS key shorter than 2048 bits", extra={"kid": kid})
            continue
        keys[str(kid)] = key
    return keys


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature and claims checked out."""

    kid: str
    claims: Mapping[str, Any]
    subject: str
    token_id: str
    expires_at: float
    roles: frozenset[str]
    scope: str | None


def _segment(value: str) -> bytes:
    if not _SEGMENT.fullmatch(value):
        raise TokenRejected("MALFORMED", "token is not three base64url segments")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenRejected("MALFORMED", "token segment is not base64url") from exc


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise TokenRejected("MALFORMED", f"token {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenRejected("MALFORMED", f"token {what} is not a JSON object")
    return value


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def read_header(token: str) -> dict[str, Any]:
    """The JOSE header of ``token``, unverified; raises ``TokenRejected('MALFORMED')``."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise TokenRejected("MALFORMED", "not a compact JWS")
    return _json_object(_segment(token.partition(".")[0]), "header")


class TokenVerifier:
    """Checks RS256 access tokens against a key set and the expected issuer and audience (no I/O).

    ``verify`` raises ``TokenRejected`` with the reason, signature first (so nothing about the claims of
    a forged token is reported), then the claims against ``now`` with ``leeway_s`` of clock skew.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: Mapping[str, rsa.RSAPublicKey] | None = None,
        leeway_s: float = 10.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self.keys: dict[str, rsa.RSAPublicKey] = dict(keys or {})

    def kid_of(self, token: str) -> str:
        """The ``kid`` the token names, after checking its algorithm is RS256."""
        header = read_header(token)
        alg = header.get("alg")
        if alg != ALLOWED_ALGORITHM:
            raise TokenRejected("ALGORITHM_NOT_ALLOWED", f"algorithm {str(alg)[:20]!r} is not accepted")
        if "crit" in header:
            raise TokenRejected("MALFORMED", "critical header parameters are not supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("MALFORMED", "token header has no kid")
        return kid

    def verify(
        self, token: str, now: float, *, audience: str | None = None, kid: str | None = None
    ) -> VerifiedToken:
        """The verified token, or raise ``TokenRejected``. ``audience`` overrides the default one;
        ``kid`` is ``kid_of(token)`` when the caller has already read it."""
        kid = self.kid_of(token) if kid is None else kid
        key = self.keys.get(kid)
        if key is None:
            raise TokenRejected("UNKNOWN_KEY", f"signing key {kid[:64]!r} is not in the JWKS")
        signing_input, _, signature = token.rpartition(".")
        try:
            key.verify(_segment(signature), signing_input.encode("ascii"), _PKCS1V15, _SHA256)
        except InvalidSignature as exc:
            raise TokenRejected("BAD_SIGNATURE", "token signature does not verify") from exc
        claims = _json_object(_segment(signing_input.partition(".")[2]), "payload")
        return self.check_claims(kid, claims, now, audience=audience)

    def check_claims(
        self, kid: str, claims: dict[str, Any], now: float, *, audience: str | None = None
    ) -> VerifiedToken:
        """The claims checks of ``verify``, for a payload whose signature already verified."""
        if claims.get("iss") != self.issuer:
            raise TokenRejected("WRONG_ISSUER", "token was not issued by this deployment's auth service")
        expected = audience or self.audience
        aud = claims.get("aud")
        if not (aud == expected or (isinstance(aud, list) and expected in aud)):
            raise TokenRejected("WRONG_AUDIENCE", f"token is not meant for audience {expected!r}")
        exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
        nbf = _number(claims.get("nbf", claims.get("iat")))
        if exp is None or iat is None or nbf is None:
            raise TokenRejected("MALFORMED", "token lacks numeric exp/iat claims")
        if now >= exp + self.leeway_s:
            raise TokenRejected("EXPIRED", "token has expired")
        if nbf > now + self.leeway_s or iat > now + self.leeway_s:
            raise TokenRejected("NOT_YET_VALID", "token is not valid yet")
        subject, token_id, roles = claims.get("sub"), claims.get("jti"), claims.get("roles")
        scope = claims.get("scope")
        if not (isinstance(subject, str) and subject and isinstance(token_id, str) and token_id):
            raise TokenRejected("MALFORMED", "token lacks sub or jti")
        if not (isinstance(roles, list) and all(isinstance(r, str) for r in roles)):
            raise TokenRejected("MALFORMED", "token roles claim is not a list of strings")
        if scope is not None and not isinstance(scope, str):
            raise TokenRejected("MALFORMED", "token scope claim is not a string")
        return VerifiedToken(
            kid=kid,
            claims=MappingProxyType(claims),
            subject=subject,
            token_id=token_id,
            expires_at=exp,
            roles=frozenset(roles),
            scope=scope,
        )


def principal_of(token: VerifiedToken) -> Principal:
    """The ``Principal`` a verified token stands for, with the permissions its roles and scope allow."""
    kind = token.claims.get("sub_type")
    return Principal(
        subject=token.subject,
        kind=kind if isinstance(kind, str) and kind else "user",
        roles=token.roles,
        permissions=permissions_for(token.roles, token.scope),
        claims=token.claims,
    )


class RevokedTokens:
    """Revoked token ids, and revoked subjects (devices, accounts), with the time their entries expire.

    A revoked subject's tokens issued at or before the revocation are rejected; tokens issued later (a
    device registered again under the same id) are not. Entries past their expiry are forgotten.
    """

    __slots__ = ("_expiry", "_subjects")

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._subjects: dict[str, tuple[float, float]] = {}  # subject → (revoked at, entry expires at)

    def __len__(self) -> int:
        return len(self._expiry) + len(self._subjects)

    def add(self, member: str, expires_at: float) -> None:
        """Remember one revocation: a jti, or a ``subject_member`` string."""
        if member.startswith(SUBJECT_PREFIX):
            subject, _, revoked_at = member[len(SUBJECT_PREFIX) :].rpartition("@")
            with contextlib.suppress(ValueError):
                at = float(revoked_at)
                previous = self._subjects.get(subject, (at, expires_at))
                self._subjects[subject] = (max(at, previous[0]), max(expires_at, previous[1]))
            return
        self._expiry[member] = max(expires_at, self._expiry.get(member, expires_at))

    def replace(self, items: Iterable[tuple[str, float]]) -> None:
        """Replace the whole list with a fresh read of it."""
        self._expiry, self._subjects = {}, {}
        for member, expires_at in items:
            self.add(member, expires_at)

    def is_revoked(self, token_id: str, subject: str | None = None, issued_at: object = None) -> bool:
        """Whether the token ``token_id`` of ``subject`` issued at ``issued_at`` (unix s) is revoked."""
        if token_id in self._expiry:
            return True
        if subject is None or subject not in self._subjects:
            return False
        # A token without a usable iat cannot prove it came after the revocation.
        return not isinstance(issued_at, int | float) or issued_at <= self._subjects[subject][0]

    def prune(self, now: float) -> None:
        """Forget revocations of tokens that have expired."""
        self._expiry = {jti: exp for jti, exp in self._expiry.items() if exp > now}
        self._subjects = {sub: entry for sub, entry in self._subjects.items() if entry[1] > now}


class RefetchBudget:
    """A token bucket limiting JWKS fetches triggered by unknown kids: ``burst`` at once, then one per
    ``interval_s``. Start-up and a key rotation shortly after it both fetch; a flood of forged kids does not.
    """

    __slots__ = ("_burst", "_interval_s", "_tokens", "_updated")

    def __init__(self, burst: int = 3, interval_s: float = 5.0) -> None:
        if burst < 1 or interval_s <= 0:
            raise ValueError("burst must be ≥ 1 and interval_s positive")
        self._burst = burst
        self._interval_s = interval_s
        self._tokens = float(burst)
        self._updated: float | None = None

    def try_take(self, now: float) -> bool:
        """Spend one fetch at ``now`` if the budget allows it."""
        if self._updated is not None:
            elapsed = max(now - self._updated, 0.0)
            self._tokens = min(float(self._burst), self._tokens + elapsed / self._interval_s)
        self._updated = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def wait_s(self) -> float:
        """Seconds until the next fetch is allowed (0 if one is)."""
        return max(1.0 - self._tokens, 0.0) * self._interval_s


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    principal: Principal
    token_id: str
    valid_until: float


class VerifiedTokenCache:
    """A bounded LRU of verified tokens, keyed by a 128-bit BLAKE2b digest (raw tokens are never kept)."""

    __slots__ = ("_entries", "_max_entries", "_ttl_s")

    def __init__(self, max_entries: int = 4096, ttl_s: float = 60.0) -> None:
        if max_entries < 0 or ttl_s < 0:
            raise ValueError("cache size and ttl must not be negative")
        self._entries: OrderedDict[bytes, _CacheEntry] = OrderedDict()
        self._max_entries = max_entries
        self._ttl_s = ttl_s

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(token: str) -> bytes:
        """The cache key of a token."""
        return hashlib.blake2b(token.encode(), digest_size=16).digest()

    def get(self, key: bytes, now: float) -> _CacheEntry | None:
        """The entry for ``key`` if present and still valid at ``now``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.valid_until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, principal: Principal, token_id: str, expires_at: float, now: float) -> None:
        """Remember a verified token until ``min(expires_at, now + ttl)``; evicts the least recent."""
        if self._max_entries == 0:
            return
        self._entries[key] = _CacheEntry(principal, token_id, min(expires_at, now + self._ttl_s))
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()


# ---------------------------------------------------------------------------------------------------------
# Redis revocation list (shared key names; the auth service writes, every verifier mirrors)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevocationKeys:
    """Redis names of the revocation list under one namespace."""

    namespace: str = "itsmesh:auth"

    @property
    def revoked(self) -> str:
        """Sorted set: member = jti, score = the token's exp (unix seconds)."""
        return f"{self.namespace}:revoked"

    @property
    def channel(self) -> str:
        """Pub/sub channel announcing ``"<jti> <exp>"`` for each new revocation."""
        return f"{self.namespace}:revocations"


SUBJECT_PREFIX: Final = "subject:"
"""Revocation-list members of the form ``subject:<sub>@<revoked at>`` revoke every earlier token of <sub>."""


def subject_member(subject: str, revoked_at: float) -> str:
    """The revocation-list member that revokes ``subject``'s tokens issued up to ``revoked_at``."""
    return f"{SUBJECT_PREFIX}{subject}@{revoked_at:.3f}"


async def revoke_subject(
    redis: Redis, subject: str, revoked_at: float, until: float, *, keys: RevocationKeys | None = None
) -> None:
    """Revoke every token of ``subject`` issued up to ``revoked_at``; remembered until ``until`` (the
    latest such token's expiry)."""
    await revoke_token_id(redis, subject_member(subject, revoked_at), until, keys=keys)


async def revoke_token_id(
    redis: Redis, token_id: str, expires_at: float, *, keys: RevocationKeys | None = None
) -> None:
    """Put ``token_id`` on the revocation list until ``expires_at`` and tell every verifier at once."""
    keys = keys or RevocationKeys()
    pipe = redis.pipeline(transaction=True)
    pipe.zadd(keys.revoked, {token_id: expires_at})
    pipe.zremrangebyscore(keys.revoked, "-inf", time.time())
    pipe.publish(keys.channel, f"{token_id} {expires_at}")
    await pipe.execute()


# ---------------------------------------------------------------------------------------------------------
# JWKS sources
# ---------------------------------------------------------------------------------------------------------


class JwksSource(Protocol):
    """Where a verifier reads the JWKS document from."""

    async def fetch(self) -> Mapping[str, Any]:
        """The current JWKS document; raise on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class HttpJwksSource:
    """Reads ``{auth_url}/.well-known/jwks.json`` with a short timeout."""

    def __init__(self, auth_url: str, *, timeout_s: float = 2.0) -> None:
        self.url = auth_url.rstrip("/") + "/.well-known/jwks.json"
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None  # made on first use: build() runs outside a loop

    async def fetch(self) -> Mapping[str, Any]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s)
        response = await self._client.get(self.url, headers={"accept": "application/json"})
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError("the JWKS endpoint did not answer a JSON object")
        return document

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


# ---------------------------------------------------------------------------------------------------------
# The authenticator
# ---------------------------------------------------------------------------------------------------------

_REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class JwtAuthenticator:
    """The mesh ``Authenticator`` for itsmesh access tokens (see the module docstring).

    Enter ``running()`` (the service host does, as a resource) to mirror revocations and refresh the
    JWKS in the background; without it tokens still verify, with an empty revocation list.
    """

    def __init__(
        self,
        jwks: JwksSource,
        *,
        issuer: str,
        audience: str,
        redis_url: str | None = None,
        permissions: PermissionMap = METHOD_PERMISSIONS,
        is_public: Callable[[str], bool] = is_anonymous,
        leeway_s: float = 10.0,
        cache_size: int = 4096,
        cache_ttl_s: float = 60.0,
        min_refetch_interval_s: float = 5.0,
        refetch_burst: int = 3,
        jwks_refresh_interval_s: float = 300.0,
        revocation_resync_s: float = 30.0,
        revocation_keys: RevocationKeys | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.verifier = TokenVerifier(issuer=issuer, audience=audience, leeway_s=leeway_s)
        self.revoked = RevokedTokens()
        self.cache = VerifiedTokenCache(cache_size, cache_ttl_s)
        self._jwks = jwks
        self._redis_url = redis_url
        self._permissions = permissions
        self._is_public = is_public
        self._refetches = RefetchBudget(refetch_burst, min_refetch_interval_s)
        self._jwks_refresh_s = jwks_refresh_interval_s
        self._resync_s = revocation_resync_s
        self._rkeys = revocation_keys or RevocationKeys()
        self._clock = clock
        self._fetch_lock = asyncio.Lock()
        self.revocations_synced = asyncio.Event()
        self.jwks_fetches = 0

    @classmethod
    def from_settings(cls, settings: AuthClientSettings, **options: Any) -> JwtAuthenticator:
        """The authenticator of a service, reading the JWKS from ``settings.auth_url``."""
        return cls(
            HttpJwksSource(settings.auth_url),
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            redis_url=settings.redis_url,
            **options,
        )

    # -- the Authenticator protocol --------------------------------------------------------------------------

    async def authenticate(self, method: str, metadata: InvocationMetadata) -> Principal:
        """The caller of ``method`` if it presents a valid token holding the method's permission."""
        required = self._permissions.get(method)
        if required is not None and self._is_public(required):
            return ANONYMOUS
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated(
                "an access token is required: send 'authorization: Bearer <token>'",
                reason="MISSING_CREDENTIALS",
            )
        principal = await self.principal_for(token)
        authorize(principal, method, self._permissions)
        return principal

    async def principal_for(self, token: str) -> Principal:
        """The principal of a bearer token: from the cache, or verified now (raises ``TokenRejected``)."""
        now = self._clock()
        key = VerifiedTokenCache.key(token)
        entry = self.cache.get(key, now)
        if entry is not None:
            if self.revoked.is_revoked(
                entry.token_id, entry.principal.subject, entry.principal.claims.get("iat")
            ):
                raise TokenRejected("REVOKED", "token has been revoked")
            return entry.principal
        verified = await self.verify(token, now=now)
        principal = principal_of(verified)
        self.cache.put(key, principal, verified.token_id, verified.expires_at, now)
        return principal

    async def verify(
        self, token: str, *, now: float | None = None, audience: str | None = None
    ) -> VerifiedToken:
        """Verify a token fully (no cache): signature, claims, revocation; fetches the JWKS on a new kid."""
        now = self._clock() if now is None else now
        kid = self.verifier.kid_of(token)
        if kid not in self.verifier.keys:
            await self._refetch_for(kid)
        verified = self.verifier.verify(token, now, audience=audience, kid=kid)
        if self.revoked.is_revoked(verified.token_id, verified.subject, verified.claims.get("iat")):
            raise TokenRejected("REVOKED", "token has been revoked")
        return verified

    async def authorize_route(self, route: str, authorization: str | None) -> Principal:
        """``authenticate`` for an HTTP route key (``"GET /audit"``) and its Authorization header."""
        metadata = () if authorization is None else (("authorization", authorization),)
        return await self.authenticate(route, metadata)

    # -- JWKS ------------------------------------------------------------------------------------------------

    async def _refetch_for(self, kid: str) -> None:
        async with self._fetch_lock:
            if kid in self.verifier.keys:
                return  # another caller's fetch brought it
            if not self._refetches.try_take(self._clock()):
                # Maybe a key minted a moment ago, maybe a flood of made-up kids: either way, come back later.
                raise StatusError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"signing key {kid[:64]!r} is unknown and the JWKS was re-read moments ago",
                    reason="JWKS_REFETCH_LIMITED",
                    retry_delay_s=self._refetches.wait_s(),
                )
            await self._fetch()

    async def _fetch(self) -> None:
        self.jwks_fetches += 1
        try:
            document = await self._jwks.fetch()
            keys = load_jwks(document)
        except (httpx.HTTPError, ValueError, OSError, StatusError) as exc:
            log.warning("cannot fetch the JWKS", extra={"error": str(exc)[:200]})
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE,
                "the token signing keys cannot be read right now",
                reason="JWKS_UNAVAILABLE",
                retry_delay_s=1.0,
            ) from exc
        self.verifier.keys = keys

    async def refresh_jwks(self) -> None:
        """Fetch the JWKS now (raises ``StatusError(UNAVAILABLE)`` if it cannot be read)."""
        async with self._fetch_lock:
            await self._fetch()

    # -- background work -------------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self, sync_timeout_s: float = 2.0) -> AsyncIterator[JwtAuthenticator]:
        """Mirror revocations and refresh the JWKS while inside; waits briefly for a first revocation read."""
        tasks: list[asyncio.Task[None]] = []
        redis: Redis | None = None
        if self._redis_url is not None:
            redis = connect_redis(self._redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)
            tasks.append(asyncio.create_task(self._mirror_revocations(redis), name="token-revocations"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sync_timeout_s):
                    await self.revocations_synced.wait()
        if self._jwks_refresh_s > 0:
            tasks.append(asyncio.create_task(self._refresh_jwks_periodically(), name="jwks-refresh"))
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if redis is not None:
                await redis.aclose()
            await self._jwks.aclose()

    def resource(self, host: object) -> AbstractAsyncContextManager[object]:
        """``running()`` in the shape ``ServiceSpec.resources`` wants."""
        return self.running()

    async def _refresh_jwks_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._jwks_refresh_s)
            with contextlib.suppress(StatusError):  # logged in _fetch; the keys we have stay usable
                await self.refresh_jwks()

    async def _mirror_revocations(self, redis: Redis) -> None:
        failures = 0
        while True:
            try:
                await self._revocation_session(redis)
            except _REDIS_ERRORS as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "revocation list unreachable; using the last known list", extra={"error": str(exc)}
                    )
            else:  # pragma: no cover - the session only ends by raising
                failures = 0
            await asyncio.sleep(min(0.5 * 2 ** min(failures, 5), 10.0))

    async def _revocation_session(self, redis: Redis) -> None:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            # Subscribe first, so a revocation published during the full read is not missed.
            await pubsub.subscribe(self._rkeys.channel)
            while True:
                await self._reload_revocations(redis)
                next_resync = self._clock() + self._resync_s
                while (remaining := next_resync - self._clock()) > 0:
                    async with asyncio.timeout(remaining + 2.0):
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
                    if message is not None and message.get("type") == "message":
                        self._on_revocation(message["data"])
        finally:
            with contextlib.suppress(*_REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated

    async def _reload_revocations(self, redis: Redis) -> None:
        now = self._clock()
        rows = await redis.zrangebyscore(
            self._rkeys.revoked, now - self.verifier.leeway_s, "+inf", withscores=True
        )
        # withscores=True answers (member, score) pairs; the stubs also allow the other shapes.
        self.revoked.replace((_text(row[0]), float(row[1])) for row in rows if isinstance(row, tuple | list))
        self.revocations_synced.set()

    def _on_revocation(self, data: object) -> None:
        token_id, _, expires = _text(data).rpartition(" ")
        try:
            self.revoked.add(token_id, float(expires))
        except ValueError:
            log.warning("ignoring a malformed revocation message")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ServiceTokenSource:
    """Service tokens for outgoing calls: a ``TokenProvider`` for ``BearerTokenInterceptor``.

    Obtains a token with the client-credentials grant at ``{auth_url}/auth/token`` on first use and again
    ``refresh_margin_s`` before it expires; concurrent callers share one request. Raises
    ``StatusError(UNAVAILABLE)`` when auth cannot be reached and ``Unauthenticated`` when it refuses.
    """

    def __init__(
        self,
        auth_url: str,
        client_id: str,
        client_secret: str,
        *,
        scopes: Iterable[str] = (),
        refresh_margin_s: float = 60.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = auth_url.rstrip("/") + "/auth/token"
        self._form = {"grant_type": "client_credentials", "scope": " ".join(scopes)}
        self._credentials = (client_id, client_secret)
        self._margin_s = refresh_margin_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        """A valid service token, fetched or refreshed when needed."""
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        async with self._lock:
            if self._token is not None and self._clock() < self._refresh_at:
                return self._token  # another caller refreshed it while we waited
            return await self._fetch()

    async def _fetch(self) -> str:
        try:
            async with httpx.AsyncClient(timeout=self._timeout_s) as client:
                response = await client.post(self._url, data=self._form, auth=self._credentials)
        except httpx.HTTPError as exc:
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE,
                "the auth service cannot be reached for a service token",
                reason="AUTH_UNAVAILABLE",
                retry_delay_s=1.0,
            ) from exc
        if response.status_code != 200:
            reason = (
                str(response.json().get("reason", "INVALID_CLIENT")) if response.content else "INVALID_CLIENT"
            )
            raise Unauthenticated(
                f"auth refused the service credentials ({response.status_code})", reason=reason
            )
        body = response.json()
        token = str(body["access_token"])
        lifetime = float(body.get("expires_in", 300))
        self._token, self._refresh_at = token, self._clock() + max(lifetime - self._margin_s, lifetime / 2)
        return token


Resource = Callable[[Any], AbstractAsyncContextManager[object]]


def token_auth(settings: AuthClientSettings) -> tuple[JwtAuthenticator | None, tuple[Resource, ...]]:
    """The authenticator and resources a service's ``ServiceSpec`` takes; none when auth is off."""
    if not settings.require_auth:
        return None, ()
    authenticator = JwtAuthenticator.from_settings(settings)
    return authenticator, (authenticator.resource,)
