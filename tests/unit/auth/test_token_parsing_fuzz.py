"""JWT parsing under arbitrary input: the verifier only ever answers with a verified token or TokenRejected
(never another exception, never a token it did not sign)."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.tokens import TokenRejected, TokenVerifier
from services.auth.keys import public_jwk

ISSUER, AUDIENCE, NOW = "itsmesh-auth", "itsmesh", 1_800_000_000.0
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KID = public_jwk(KEY.public_key())["kid"]
VALID = jwt.encode(
    {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u",
        "sub_type": "user",
        "roles": ["viewer"],
        "iat": int(NOW),
        "exp": int(NOW) + 600,
        "jti": "j1",
    },
    KEY,
    algorithm="RS256",
    headers={"kid": KID},
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _verifier() -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys={KID: KEY.public_key()}, leeway_s=10)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _outcome(token: str) -> str:
    try:
        verified = _verifier().verify(token, NOW)
    except TokenRejected as rejected:
        return rejected.reason
    return f"ok:{verified.token_id}"


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_is_rejected_with_a_reason(token):
    assert not _outcome(token).startswith("ok:")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@FUZZ
@given(header=json_values, payload=json_values, signature=st.binary(max_size=300))
def test_forged_structures_are_rejected(header, payload, signature):
    token = ".".join(_b64(json.dumps(part).encode()) for part in (header, payload)) + "." + _b64(signature)
    assert not _outcome(token).startswith("ok:")


@FUZZ
@given(position=st.integers(0, len(VALID) - 1), replacement=st.characters(codec="ascii"))
def test_a_changed_character_of_a_valid_token_never_verifies_as_another_token(position, replacement):
    mutated = VALID[:position] + replacement + VALID[position + 1 :]
    outcome = _outcome(mutated)
    # base64url has slack bits in a segment's last character, so a few edits decode to the same bytes.
    assert outcome in ("ok:j1",) or not outcome.startswith("ok:")


def test_the_unchanged_token_verifies():
    assert _outcome(VALID) == "ok:j1"


@pytest.mark.parametrize("token", ["", ".", "..", "a.b.c", "a" * 100_000, VALID + ".extra"])
def test_edge_shapes_are_rejected(token):
    assert not _outcome(token).startswith("ok:")
