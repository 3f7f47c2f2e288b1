"""Scopes, access-token claims and opaque secrets."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mesh.permissions import ROLE_PERMISSIONS, permissions_for
from services.auth import tokens
from services.auth.tokens import ScopeError, TokenSubject

USER = TokenSubject("u-1", "user", ("operator",), username="op")


def test_an_empty_request_grants_everything_the_roles_allow():
    scope = tokens.resolve_scope(["operator"], [])
    assert permissions_for(["operator"], scope) == ROLE_PERMISSIONS["operator"]


def test_requested_scopes_are_kept_when_held_and_refused_when_not():
    assert (
        tokens.resolve_scope(["operator"], ["cameras:read alerts:*", "cameras:read"])
        == "cameras:read alerts:*"
    )
    assert tokens.resolve_scope(["viewer"], ["*"]) == "*"
    with pytest.raises(ScopeError, match="not held"):
        tokens.resolve_scope(["viewer"], ["cameras:delete"])
    with pytest.raises(ScopeError, match="not a permission"):
        tokens.resolve_scope(["admin"], ["cameras:fly"])
    with pytest.raises(ScopeError, match="resource"):
        tokens.resolve_scope(["device"], ["users:*"])


def test_access_tokens_carry_every_required_claim_and_the_kid():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    access = tokens.issue_access_token(
        USER,
        scope="cameras:*",
        issuer="iss",
        audience="aud",
        now=1_800_000_000.5,
        ttl_s=600,
        private_key=key,
        kid="kid-1",
        session_id="fam-1",
    )
    header = jwt.get_unverified_header(access.token)
    assert header == {"alg": "RS256", "kid": "kid-1", "typ": "at+jwt"}
    claims = jwt.decode(
        access.token,
        key.public_key(),
        algorithms=["RS256"],
        audience="aud",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims == {
        "iss": "iss",
        "aud": "aud",
        "sub": "u-1",
        "sub_type": "user",
        "username": "op",
        "roles": ["operator"],
        "scope": "cameras:*",
        "iat": 1_800_000_000,
        "nbf": 1_800_000_000,
        "exp": 1_800_000_600,
        "jti": access.token_id,
        "sid": "fam-1",
    }
    assert (access.issued_at, access.expires_at) == (1_800_000_000, 1_800_000_600)


def test_opaque_secrets_are_random_typed_and_stored_by_digest():
    refresh, api_key, client_secret = (
        tokens.new_refresh_token(),
        tokens.new_api_key(),
        tokens.new_client_secret(),
    )
    assert refresh.startswith("rt_")
    assert api_key.startswith("imk_")
    assert client_secret.startswith("ims_")
    assert len(refresh) > 40
    assert tokens.new_refresh_token() != refresh
    assert len(tokens.secret_digest(refresh)) == 64
    assert tokens.secret_digest(refresh) == tokens.secret_digest(refresh)
    assert tokens.visible_prefix(api_key) == api_key[:12]
