"""Token rules (no I/O): scopes, access-token claims and signing, opaque refresh tokens and client secrets.

Access tokens are RS256 JWTs with ``kid`` in the header and ``iss``, ``aud``, ``sub``, ``sub_type``,
``roles``, ``scope``, ``iat``, ``nbf``, ``exp`` and ``jti`` in the payload (plus ``username`` for users).
Refresh tokens, API keys and client secrets are 256-bit random strings with a short type prefix; only their
SHA-256 digest is stored, which is enough for values of that entropy (no offline guessing is possible).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from mesh.permissions import PERMISSIONS, ROLE_PERMISSIONS, default_scope

SubjectType = Literal["user", "device", "service"]

REFRESH_PREFIX: Final = "rt_"
API_KEY_PREFIX: Final = "imk_"
CLIENT_SECRET_PREFIX: Final = "ims_"  # noqa: S105 - a type tag, not a secret
SECRET_PREFIX_CHARS: Final = 12
"""How much of an API key or client secret is kept in clear, to recognise it in listings."""


@dataclass(frozen=True, slots=True)
class TokenSubject:
    """Whom a token is issued to."""

    subject: str
    subject_type: SubjectType
    roles: tuple[str, ...]
    username: str | None = None


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A signed access token and the facts about it the caller reports."""

    token: str
    token_id: str
    issued_at: int
    expires_at: int
    scope: str
    subject: TokenSubject


class ScopeError(ValueError):
    """A requested scope item that does not exist or that the roles do not hold."""

    def __init__(self, item: str, why: str) -> None:
        super().__init__(f"scope {item!r} {why}")
        self.item = item
        self.why = why


def resolve_scope(roles: Iterable[str], requested: Sequence[str]) -> str:
    """The scope to grant: ``requested`` (checked against the roles) or, if empty, everything they allow.

    Items are permissions (``cameras:read``), resource wildcards (``cameras:*``) or ``*``. An item naming
    something the roles do not hold is refused rather than silently dropped.
    """
    held = frozenset().union(*(ROLE_PERMISSIONS.get(role, frozenset()) for role in roles))
    if not requested:
        return default_scope(roles)
    granted: list[str] = []
    for raw in requested:
        for item in raw.split():
            resource, _, action = item.partition(":")
            if item == "*":
                pass
            elif action == "*":
                if not any(p.partition(":")[0] == resource for p in held):
                    raise ScopeError(item, "names a resource the roles cannot reach")
            elif item not in PERMISSIONS:
                raise ScopeError(item, "is not a permission")
            elif item not in held:
                raise ScopeError(item, "is not held by the roles")
            if item not in granted:
                granted.append(item)
    if not granted:
        return default_scope(roles)
    return " ".join(granted)


def new_token_id() -> str:
    """A fresh ``jti``."""
    return uuid.uuid4().hex


def access_claims(
    subject: TokenSubject,
    *,
    scope: str,
    issuer: str,
    audience: str,
    now: float,
    ttl_s: int,
    token_id: str,
    session_id: str | None = None,
) -> dict[str, Any]:
    """The payload of an access token issued at ``now``; ``session_id`` (``sid``) names a login's family."""
    issued = int(now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject.subject,
        "sub_type": subject.subject_type,
        "roles": list(subject.roles),
        "scope": scope,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
        "jti": token_id,
    }
    if subject.username is not None:
        claims["username"] = subject.username
    if session_id is not None:
        claims["sid"] = session_id
    return claims


def sign_access_token(claims: Mapping[str, Any], private_key: rsa.RSAPrivateKey, kid: str) -> str:
    """The compact RS256 JWS of ``claims``, with ``kid`` and ``typ: at+jwt`` (RFC 9068) in the header."""
    return jwt.encode(dict(claims), private_key, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})


def issue_access_token(
    subject: TokenSubject,
    *,
    scope: str,
    issuer: str,
    audience: str,
    now: float,
    ttl_s: int,
    private_key: rsa.RSAPrivateKey,
    kid: str,
    session_id: str | None = None,
) -> AccessToken:
    """A signed access token for ``subject``."""
    token_id = new_token_id()
    claims = access_claims(
        subject,
        scope=scope,
        issuer=issuer,
        audience=audience,
        now=now,
        ttl_s=ttl_s,
        token_id=token_id,
        session_id=session_id,
    )
    token = sign_access_token(claims, private_key, kid)
    return AccessToken(token, token_id, claims["iat"], claims["exp"], scope, subject)


def _random(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def new_refresh_token() -> str:
    """A fresh opaque refresh token."""
    return _random(REFRESH_PREFIX)


def new_api_key() -> str:
    """A fresh device API key."""
    return _random(API_KEY_PREFIX)


def new_client_secret() -> str:
    """A fresh service-account client secret."""
    return _random(CLIENT_SECRET_PREFIX)


def secret_digest(value: str) -> str:
    """SHA-256 hex digest under which a high-entropy secret is stored and looked up."""
    return hashlib.sha256(value.encode()).hexdigest()


def visible_prefix(value: str) -> str:
    """The part of a secret shown in listings."""
    return value[:SECRET_PREFIX_CHARS]
