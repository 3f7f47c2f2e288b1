"""The mesh's token verifier (pure parts): what it accepts, what it refuses and why, and its caches."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mesh.interceptors import PermissionDenied, Principal, Unauthenticated
from mesh.permissions import ROLE_PERMISSIONS
from mesh.tokens import (
    RevokedTokens,
    TokenRejected,
    TokenVerifier,
    VerifiedTokenCache,
    load_jwks,
    principal_of,
)
from services.auth.keys import public_jwk

ISSUER, AUDIENCE = "itsmesh-auth", "itsmesh"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def kid(signing_key) -> str:
    return public_jwk(signing_key.public_key())["kid"]


@pytest.fixture
def verifier(signing_key, kid) -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys={kid: signing_key.public_key()}, leeway_s=10)


def _claims(**overrides):
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "sub_type": "user",
        "roles": ["viewer"],
        "scope": "cameras:*",
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 600,
        "jti": "jti-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(key, kid, **overrides) -> str:
    return jwt.encode(_claims(**overrides), key, algorithm="RS256", headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _why(verifier, token, now=NOW, **kwargs) -> str:
    with pytest.raises(TokenRejected) as rejected:
        verifier.verify(token, now, **kwargs)
    assert rejected.value.grpc_code.name == "UNAUTHENTICATED"
    assert rejected.value.reason == f"TOKEN_{rejected.value.why}"
    return rejected.value.why


def test_a_well_signed_token_verifies_with_its_claims(verifier, signing_key, kid):
    verified = verifier.verify(_sign(signing_key, kid), NOW + 1)
    assert (verified.subject, verified.token_id, verified.kid) == ("user-1", "jti-1", kid)
    assert verified.roles == {"viewer"}
    assert verified.expires_at == NOW + 600


def test_a_signature_by_another_key_under_the_same_kid_is_refused(verifier, other_key, kid):
    assert _why(verifier, _sign(other_key, kid)) == "BAD_SIGNATURE"


def test_a_tampered_payload_is_refused(verifier, signing_key, kid):
    header, _, signature = _sign(signing_key, kid).split(".")
    payload = _b64(json.dumps(_claims(roles=["admin"])).encode())
    assert _why(verifier, f"{header}.{payload}.{signature}") == "BAD_SIGNATURE"


def test_alg_none_is_refused_before_any_key_is_used(verifier, kid):
    header = _b64(json.dumps({"alg": "none", "kid": kid, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(roles=["admin"])).encode())
    assert _why(verifier, f"{header}.{payload}.") == "ALGORITHM_NOT_ALLOWED"
    assert _why(verifier, f"{header}.{payload}.{_b64(b'x')}") == "ALGORITHM_NOT_ALLOWED"


def test_hs256_signed_with_the_public_key_is_refused(verifier, signing_key, kid):
    public_pem = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
    payload = _b64(json.dumps(_claims(roles=["admin"])).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert _why(verifier, f"{header}.{payload}.{_b64(mac)}") == "ALGORITHM_NOT_ALLOWED"
    # the same MAC under a header that claims RS256 fails the RSA signature check
    rs_header = _b64(json.dumps({"alg": "RS256", "kid": kid}).encode())
    mac = hmac.new(public_pem, f"{rs_header}.{payload}".encode(), hashlib.sha256).digest()
    assert _why(verifier, f"{rs_header}.{payload}.{_b64(mac)}") == "BAD_SIGNATURE"


def test_other_asymmetric_algorithms_are_refused(verifier, kid):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(), ec_key, algorithm="ES256", headers={"kid": kid})
    assert _why(verifier, token) == "ALGORITHM_NOT_ALLOWED"


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"aud": "someone-else"}, "WRONG_AUDIENCE"),
        ({"aud": ["a", "b"]}, "WRONG_AUDIENCE"),
        ({"iss": "https://evil.example"}, "WRONG_ISSUER"),
        ({"exp": int(NOW) - 11}, "EXPIRED"),
        ({"nbf": int(NOW) + 60}, "NOT_YET_VALID"),
        ({"iat": int(NOW) + 60, "nbf": None}, "NOT_YET_VALID"),
        ({"exp": None}, "MALFORMED"),
        ({"exp": "soon"}, "MALFORMED"),
        ({"jti": None}, "MALFORMED"),
        ({"sub": ""}, "MALFORMED"),
        ({"roles": "admin"}, "MALFORMED"),
        ({"scope": ["cameras:*"]}, "MALFORMED"),
    ],
)
def test_claims_are_checked(verifier, signing_key, kid, overrides, why):
    assert _why(verifier, _sign(signing_key, kid, **overrides)) == why


def test_a_list_audience_containing_ours_and_the_leeway_are_accepted(verifier, signing_key, kid):
    verifier.verify(_sign(signing_key, kid, aud=["other", AUDIENCE]), NOW)
    verifier.verify(_sign(signing_key, kid, exp=int(NOW) - 5), NOW)  # within the 10 s leeway
    verifier.verify(_sign(signing_key, kid, nbf=int(NOW) + 5), NOW)


def test_an_explicit_audience_overrides_the_default(verifier, signing_key, kid):
    token = _sign(signing_key, kid, aud="analytics")
    assert _why(verifier, token) == "WRONG_AUDIENCE"
    assert verifier.verify(token, NOW, audience="analytics").subject == "user-1"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.sig",
        "W10.e30.sig",  # header is a JSON array
        "eyJhbGciOiJSUzI1NiJ9.e30.sig",  # RS256 without a kid
        "x" * 9000,
    ],
)
def test_malformed_tokens_are_refused(verifier, token):
    assert _why(verifier, token) == "MALFORMED"


def test_a_header_without_alg_is_refused(verifier):
    assert _why(verifier, "e30.e30.sig") == "ALGORITHM_NOT_ALLOWED"


def test_a_kid_missing_from_the_key_set_is_unknown(verifier, other_key):
    assert _why(verifier, _sign(other_key, "not-published")) == "UNKNOWN_KEY"


def test_load_jwks_keeps_only_rs256_signing_keys_of_2048_bits_or_more(signing_key, kid):
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    good = public_jwk(signing_key.public_key())
    document = {
        "keys": [
            good,
            {**public_jwk(small.public_key()), "kid": "short"},
            {**good, "kid": "enc", "use": "enc"},
            {**good, "kid": "hs", "alg": "HS256"},
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "broken", "n": "***", "e": "AQAB"},
            "not a key",
        ]
    }
    assert list(load_jwks(document)) == [kid]
    with pytest.raises(ValueError, match="keys"):
        load_jwks({"nope": []})


def test_principal_carries_roles_scope_narrowed_permissions_and_kind(verifier, signing_key, kid):
    verified = verifier.verify(_sign(signing_key, kid, roles=["operator"], scope="cameras:read"), NOW)
    principal = principal_of(verified)
    assert principal.kind == "user"
    assert principal.can("cameras:read")
    assert not principal.can("cameras:update")
    device = principal_of(
        verifier.verify(_sign(signing_key, kid, sub_type="device", roles=["device"], scope=None), NOW)
    )
    assert device.kind == "device"
    assert device.permissions == ROLE_PERMISSIONS["device"]


def test_revoked_tokens_are_remembered_until_they_expire():
    revoked = RevokedTokens()
    revoked.add("a", NOW + 10)
    revoked.add("b", NOW - 1)
    assert revoked.is_revoked("a")
    revoked.prune(NOW)
    assert revoked.is_revoked("a")
    assert not revoked.is_revoked("b")
    revoked.replace([("c", NOW + 5)])
    assert (revoked.is_revoked("a"), revoked.is_revoked("c"), len(revoked)) == (False, True, 1)


def test_the_cache_is_a_bounded_lru_keyed_by_digest_and_honours_exp_and_ttl():
    cache = VerifiedTokenCache(max_entries=2, ttl_s=30)
    principal = Principal("u")
    keys = [VerifiedTokenCache.key(f"token-{i}") for i in range(3)]
    assert len(keys[0]) == 16
    cache.put(keys[0], principal, "j0", expires_at=NOW + 600, now=NOW)
    cache.put(keys[1], principal, "j1", expires_at=NOW + 5, now=NOW)
    assert cache.get(keys[0], NOW) is not None  # keys[0] is now the most recent
    cache.put(keys[2], principal, "j2", expires_at=NOW + 600, now=NOW)
    assert cache.get(keys[1], NOW) is None, "the least recently used entry was evicted"
    assert cache.get(keys[0], NOW + 29) is not None
    assert cache.get(keys[0], NOW + 30) is None, "entries live at most ttl_s"
    cache.put(keys[1], principal, "j1", expires_at=NOW + 5, now=NOW)
    assert cache.get(keys[1], NOW + 5) is None, "and never past the token's exp"


def test_a_disabled_cache_stores_nothing():
    cache = VerifiedTokenCache(max_entries=0)
    cache.put(b"k" * 16, Principal("u"), "j", expires_at=time.time() + 60, now=time.time())
    assert len(cache) == 0


def test_rejections_are_unauthenticated_and_permission_errors_distinct():
    assert isinstance(TokenRejected("EXPIRED", "x"), Unauthenticated)
    assert not isinstance(TokenRejected("EXPIRED", "x"), PermissionDenied)
