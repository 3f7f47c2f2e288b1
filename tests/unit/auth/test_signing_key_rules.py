"""Signing keys: JWK form, RFC 7638 thumbprints, and which keys the JWKS publishes when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mesh.tokens import load_jwks
from services.auth import keys

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_the_kid_is_the_rfc_7638_thumbprint():
    # RFC 7638 §3.1 example key and its thumbprint
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCi"
        "FV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnY"
        "b9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0"
        "Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    assert keys.thumbprint(n, "AQAB") == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_a_generated_key_publishes_a_loadable_rs256_jwk():
    new = keys.generate_signing_key(2048)
    assert new.public_jwk["kid"] == new.kid
    assert {k: new.public_jwk[k] for k in ("kty", "use", "alg", "e")} == {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "e": "AQAB",
    }
    assert list(load_jwks({"keys": [dict(new.public_jwk)]})) == [new.kid]
    private = keys.load_private_key(new.private_der)
    assert keys.public_jwk(private.public_key()) == dict(new.public_jwk)
    with pytest.raises(ValueError, match="key size"):
        keys.generate_signing_key(1024)


def _key(kid, state, created_min_ago, retire_in_min=None):
    return keys.SigningKeyRecord(
        kid=kid,
        state=state,
        public_jwk={"kid": kid},
        created_at=NOW - timedelta(minutes=created_min_ago),
        retire_at=None if retire_in_min is None else NOW + timedelta(minutes=retire_in_min),
    )


def test_the_jwks_lists_the_active_key_first_then_unexpired_verify_only_keys():
    active = _key("new", "active", 1)
    previous = _key("prev", "verify_only", 60, retire_in_min=5)
    older = _key("older", "verify_only", 120, retire_in_min=10)
    gone = _key("gone", "verify_only", 180, retire_in_min=0)
    retired = _key("ret", "retired", 300)
    assert [k.kid for k in keys.published([older, gone, previous, retired, active], NOW)] == [
        "new",
        "prev",
        "older",
    ]
    assert gone.state_at(NOW) == "retired"
    assert previous.state_at(NOW) == "verify_only"


def test_a_deactivated_key_stays_published_for_the_token_lifetime_plus_a_margin():
    assert keys.retire_time(NOW, 600) == NOW + timedelta(seconds=600) + keys.RETIRE_MARGIN
    assert keys.RETIRE_MARGIN.total_seconds() > keys.ACTIVE_KEY_RECHECK_S + 10


def test_rotation_is_due_without_a_key_and_when_the_active_one_is_old_enough():
    assert keys.rotation_due(None, NOW, 0)
    assert not keys.rotation_due(_key("k", "active", 10), NOW, 0), "0 = rotate only on request"
    assert not keys.rotation_due(_key("k", "active", 10), NOW, 3600)
    assert keys.rotation_due(_key("k", "active", 61), NOW, 3600)
