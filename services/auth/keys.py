"""Token signing keys: generation, their public JWK form, and the rules of their lifecycle (no I/O).

A key is ``active`` (signs new tokens, published), then ``verify_only`` once a newer key took over
(published until every token it signed has expired), then ``retired`` (gone from the JWKS). The time a
verify-only key leaves is its deactivation time + the access-token lifetime + ``RETIRE_MARGIN``, which
covers an auth instance that had not yet noticed the rotation plus the verifiers' clock leeway.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KeyState = Literal["active", "verify_only", "retired"]

ALGORITHM: Final = "RS256"
KEY_SIZES: Final = (2048, 3072, 4096)
RETIRE_MARGIN: Final = timedelta(minutes=2)
ACTIVE_KEY_RECHECK_S: Final = 10.0
"""How stale an instance's idea of the active key may get before it re-reads it (≪ RETIRE_MARGIN)."""


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """A stored signing key without its private half."""

    kid: str
    state: KeyState
    public_jwk: Mapping[str, str]
    created_at: datetime
    deactivated_at: datetime | None = None
    retire_at: datetime | None = None
    alg: str = ALGORITHM

    def state_at(self, now: datetime) -> KeyState:
        """The state at ``now``: a verify-only key past its retire time counts as retired."""
        if self.state == "verify_only" and self.retire_at is not None and self.retire_at <= now:
            return "retired"
        return self.state


@dataclass(frozen=True, slots=True)
class NewSigningKey:
    """A freshly generated key: its id, private half (PKCS#8 DER, to be sealed) and public JWK."""

    kid: str
    private_der: bytes
    public_jwk: Mapping[str, str]


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def thumbprint(n: str, e: str) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an RSA public key: a stable, content-derived kid."""
    canonical = json.dumps({"e": e, "kty": "RSA", "n": n}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def public_jwk(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    """The JWK (RFC 7517) of an RSA public key for RS256 signatures, with its thumbprint as kid."""
    numbers = public_key.public_numbers()
    n, e = _b64url_uint(numbers.n), _b64url_uint(numbers.e)
    return {"kty": "RSA", "kid": thumbprint(n, e), "use": "sig", "alg": ALGORITHM, "n": n, "e": e}


def generate_signing_key(bits: int = 2048) -> NewSigningKey:
    """A new RSA key of ``bits`` (2048, 3072 or 4096)."""
    if bits not in KEY_SIZES:
        raise ValueError(f"key size must be one of {KEY_SIZES}")
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    jwk = public_jwk(private.public_key())
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return NewSigningKey(kid=jwk["kid"], private_der=der, public_jwk=jwk)


def load_private_key(der: bytes) -> rsa.RSAPrivateKey:
    """The private key from its PKCS#8 DER form."""
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("stored signing key is not an RSA key")
    return key


def published(keys: Iterable[SigningKeyRecord], now: datetime) -> list[SigningKeyRecord]:
    """The keys the JWKS lists at ``now``: the active one first, then verify-only keys, newest first."""
    live = [k for k in keys if k.state_at(now) != "retired"]
    return sorted(live, key=lambda k: (k.state_at(now) != "active", -k.created_at.timestamp()))


def rotation_due(active: SigningKeyRecord | None, now: datetime, interval_s: float) -> bool:
    """Whether the scheduled rotation should create a new key now (also when there is none at all)."""
    if active is None:
        return True
    return interval_s > 0 and now - active.created_at >= timedelta(seconds=interval_s)


def retire_time(deactivated_at: datetime, access_token_ttl_s: float) -> datetime:
    """When a key that stopped signing at ``deactivated_at`` may leave the JWKS."""
    return deactivated_at + timedelta(seconds=access_token_ttl_s) + RETIRE_MARGIN
