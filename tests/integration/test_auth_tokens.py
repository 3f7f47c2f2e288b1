"""Login, refresh rotation, reuse detection, revocation and key rotation against real servers.

The auth service runs on loopback with real PostgreSQL and Redis; streaming verifies its tokens the way
every service does (JWKS over HTTP, revocations over Redis pub/sub).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import grpc
import jwt
import pytest

from itsmesh.v1 import auth_pb2, auth_pb2_grpc, streaming_pb2, streaming_pb2_grpc
from services.auth.model import AuditQuery
from services.auth.tokens import TokenSubject, issue_access_token
from tests.integration.auth_stack import (
    PASSWORD,
    bearer,
    create_user,
    expect_rpc_error,
    grpc_login,
    http_client,
    running_stack,
    user_token,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def stack(infra):
    async with running_stack(infra) as running:
        yield running


async def _get_camera(stack, token: str) -> grpc.StatusCode:
    """GetCamera of an unknown camera with this token: NOT_FOUND means authenticated and authorized."""
    async with grpc.aio.insecure_channel(stack.address("streaming")) as channel:
        stub = streaming_pb2_grpc.StreamingServiceStub(channel)
        try:
            await stub.GetCamera(
                streaming_pb2.GetCameraRequest(camera_id="c1"), metadata=bearer(token), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def _streaming_reason(stack, token: str) -> str | None:
    async with grpc.aio.insecure_channel(stack.address("streaming")) as channel:
        stub = streaming_pb2_grpc.StreamingServiceStub(channel)
        details = await expect_rpc_error(
            stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="c1"), metadata=bearer(token), timeout=5)
        )
    return details.reason


async def _eventually_rejected(stack, token: str, reason: str, timeout_s: float = 3.0) -> None:
    """Revocations reach other services over pub/sub within milliseconds; allow a little time."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await _streaming_reason(stack, token)
        if found == reason or time.monotonic() > deadline:
            assert found == reason
            return
        await asyncio.sleep(0.02)


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _sign_with(stack, signer, **claims):
    """A token signed directly with ``signer`` (as an auth instance holding that key would)."""
    settings = stack.authority.settings
    return issue_access_token(
        TokenSubject("someone", "user", ("viewer",)),
        scope="*",
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        now=claims.get("now", time.time()),
        ttl_s=600,
        private_key=signer.key,
        kid=signer.kid,
    )


async def test_login_over_form_json_and_grpc_gives_rs256_tokens_with_every_claim(stack):
    username, user_id = await create_user(stack.authority, "operator")
    async with http_client(stack) as client:
        form = await client.post("/auth/token", data={"username": username, "password": PASSWORD})
        as_json = await client.post(
            "/auth/token", json={"grant_type": "password", "username": username, "password": PASSWORD}
        )
    assert form.status_code == as_json.status_code == 200, form.text
    assert form.headers["cache-control"] == "no-store"
    body = form.json()
    assert body["token_type"] == "Bearer"
    assert 300 <= body["expires_in"] <= 900
    assert body["refresh_token"].startswith("rt_")
    assert body["roles"] == ["operator"]
    reply = await grpc_login(stack.auth_grpc, username)
    assert reply.token_type == "Bearer"
    assert list(reply.roles) == [auth_pb2.ROLE_OPERATOR]
    for token in (body["access_token"], as_json.json()["access_token"], reply.access_token):
        header = jwt.get_unverified_header(token)
        assert header["alg"] == "RS256"
        assert header["kid"]
        claims = _claims(token)
        assert {"iss", "aud", "sub", "roles", "scope", "jti", "exp", "iat", "nbf"} <= set(claims)
        assert claims["sub"] == user_id
        assert claims["roles"] == ["operator"]
        assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert await _get_camera(stack, reply.access_token) == grpc.StatusCode.NOT_FOUND


async def test_a_wrong_password_is_invalid_credentials_on_both_fronts(stack):
    username, _ = await create_user(stack.authority, "viewer")
    async with http_client(stack) as client:
        response = await client.post(
            "/auth/token", data={"username": username, "password": "not the password"}
        )
    assert response.status_code == 401
    assert response.json()["reason"] == "INVALID_CREDENTIALS"
    details = await expect_rpc_error(grpc_login(stack.auth_grpc, username, "not the password"))
    assert (details.code, details.reason, details.domain) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
        "itsmesh.auth",
    )
    details = await expect_rpc_error(grpc_login(stack.auth_grpc, "nobody-here", "not the password"))
    assert details.reason == "INVALID_CREDENTIALS", "unknown users look like wrong passwords"


async def test_jwks_and_discovery_documents(stack):
    async with http_client(stack) as client:
        jwks = (await client.get("/.well-known/jwks.json")).json()
        discovery = (await client.get("/.well-known/openid-configuration")).json()
    assert jwks["keys"]
    assert all(k["kty"] == "RSA" and k["alg"] == "RS256" and k["use"] == "sig" for k in jwks["keys"])
    assert discovery["issuer"] == stack.authority.settings.token_issuer
    assert discovery["jwks_uri"].endswith("/.well-known/jwks.json")
    assert "client_credentials" in discovery["grant_types_supported"]
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
    assert [k.kid for k in reply.keys] == [k["kid"] for k in jwks["keys"]]


async def test_refresh_rotates_and_reusing_a_rotated_token_revokes_the_whole_family(stack):
    username, user_id = await create_user(stack.authority, "analyst")
    first = await grpc_login(stack.auth_grpc, username)
    async with http_client(stack) as client:
        second = await client.post("/auth/refresh", json={"refresh_token": first.refresh_token})
        assert second.status_code == 200, second.text
        second_body = second.json()
        assert second_body["refresh_token"] != first.refresh_token
        third = await client.post(
            "/auth/token", data={"grant_type": "refresh_token", "refresh_token": second_body["refresh_token"]}
        )
        assert third.status_code == 200
        third_body = third.json()
        assert await _get_camera(stack, third_body["access_token"]) == grpc.StatusCode.NOT_FOUND

        # the first refresh token was rotated: presenting it again is reuse
        reused = await client.post("/auth/refresh", data={"refresh_token": first.refresh_token})
    assert reused.status_code == 401
    assert reused.json()["reason"] == "REFRESH_TOKEN_REUSED"

    # ... which revoked every token of that login: the newest refresh token and the live access token
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        details = await expect_rpc_error(
            stub.RefreshToken(
                auth_pb2.RefreshTokenRequest(refresh_token=third_body["refresh_token"]), timeout=5
            )
        )
    assert details.reason == "TOKEN_REVOKED"
    await _eventually_rejected(stack, third_body["access_token"], "TOKEN_REVOKED")

    # an unrelated login of the same user is untouched
    other = await grpc_login(stack.auth_grpc, username)
    assert await _get_camera(stack, other.access_token) == grpc.StatusCode.NOT_FOUND
    rows = await stack.authority.store.list_audit_events(AuditQuery(target=user_id, page_size=50))
    actions = [e.action for e in rows.items]
    assert "REFRESH_TOKEN_REUSE_DETECTED" in actions
    assert actions.count("TOKEN_REFRESHED") == 2


async def test_revoking_an_access_token_takes_effect_in_other_services_even_when_cached(stack):
    token = await user_token(stack, "viewer")
    assert await _get_camera(stack, token) == grpc.StatusCode.NOT_FOUND  # now in streaming's cache
    async with http_client(stack) as client:
        response = await client.post("/auth/revoke", data={"token": token, "token_type_hint": "access_token"})
        assert response.status_code == 200
        again = await client.post("/auth/revoke", data={"token": token})
        assert again.status_code == 200, "revoking a revoked token succeeds"
    await _eventually_rejected(stack, token, "TOKEN_REVOKED")
    assert stack.others["streaming"].spec.authenticator.revoked.is_revoked(_claims(token)["jti"])


async def test_logout_revokes_the_bearer_token_and_the_refresh_family(stack):
    username, _ = await create_user(stack.authority, "viewer")
    tokens = await grpc_login(stack.auth_grpc, username)
    async with http_client(stack) as client:
        response = await client.post(
            "/auth/logout",
            json={"refresh_token": tokens.refresh_token},
            headers={"authorization": f"Bearer {tokens.access_token}"},
        )
        assert response.status_code == 200, response.text
        refreshed = await client.post("/auth/refresh", json={"refresh_token": tokens.refresh_token})
    assert refreshed.json()["reason"] == "TOKEN_REVOKED"
    await _eventually_rejected(stack, tokens.access_token, "TOKEN_REVOKED")


async def test_an_expired_token_is_refused_with_token_expired(stack):
    expired = _sign_with(stack, await stack.authority.current_signer(), now=time.time() - 3600)
    assert await _streaming_reason(stack, expired.token) == "TOKEN_EXPIRED"


async def test_key_rotation_keeps_old_tokens_valid_until_their_key_retires(stack, pg):
    old_signer = await stack.authority.current_signer()
    old_token = await user_token(stack, "viewer")
    assert jwt.get_unverified_header(old_token)["kid"] == old_signer.kid
    assert await _get_camera(stack, old_token) == grpc.StatusCode.NOT_FOUND
    fetches_before = stack.others["streaming"].spec.authenticator.jwks_fetches

    admin = await user_token(stack, "admin")
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        new_key = await stub.RotateSigningKey(
            auth_pb2.RotateSigningKeyRequest(), metadata=bearer(admin), timeout=30
        )
        listed = await stub.ListSigningKeys(
            auth_pb2.ListSigningKeysRequest(), metadata=bearer(admin), timeout=5
        )
    assert new_key.kid != old_signer.kid
    assert new_key.state == auth_pb2.SIGNING_KEY_STATE_ACTIVE
    states = {k.kid: k.state for k in listed.keys}
    assert states[old_signer.kid] == auth_pb2.SIGNING_KEY_STATE_VERIFY_ONLY
    old_entry = next(k for k in listed.keys if k.kid == old_signer.kid)
    assert old_entry.retire_time.ToSeconds() - old_entry.deactivate_time.ToSeconds() >= 600

    # new tokens carry the new kid; streaming learns it by refetching the JWKS on the unknown kid
    new_token = await user_token(stack, "viewer")
    assert jwt.get_unverified_header(new_token)["kid"] == new_key.kid
    assert await _get_camera(stack, new_token) == grpc.StatusCode.NOT_FOUND
    assert stack.others["streaming"].spec.authenticator.jwks_fetches == fetches_before + 1
    # ... and the old key still verifies tokens it signed, uncached ones included
    late_old = _sign_with(stack, old_signer)
    assert await _get_camera(stack, old_token) == grpc.StatusCode.NOT_FOUND
    assert await _get_camera(stack, late_old.token) == grpc.StatusCode.NOT_FOUND
    async with http_client(stack) as client:
        kids = [k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]]
    assert kids[0] == new_key.kid
    assert old_signer.kid in kids

    # once its tokens have expired, the old key leaves the JWKS and verifiers drop it
    await pg.execute("UPDATE auth.signing_keys SET retire_at = now() WHERE kid = $1", old_signer.kid)
    await stack.authority.maintain_signing_keys()
    stack.authority._jwks_cache = None
    async with http_client(stack) as client:
        kids = [k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]]
    assert old_signer.kid not in kids
    await stack.others["streaming"].spec.authenticator.refresh_jwks()  # the periodic refresh, now
    assert await _streaming_reason(stack, _sign_with(stack, old_signer).token) == "TOKEN_UNKNOWN_KEY"
    assert await _get_camera(stack, new_token) == grpc.StatusCode.NOT_FOUND


async def test_introspection_reports_active_tokens_and_why_others_are_not(stack):
    service_token = await user_token(stack, "admin")
    viewer = await user_token(stack, "viewer")
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        info = await stub.IntrospectToken(
            auth_pb2.IntrospectTokenRequest(token=viewer, required_permission="cameras:read"),
            metadata=bearer(service_token),
            timeout=5,
        )
        assert info.active
        assert info.permission_granted
        assert list(info.roles) == [auth_pb2.ROLE_VIEWER]
        assert "cameras:read" in info.permissions
        bad = await stub.IntrospectToken(
            auth_pb2.IntrospectTokenRequest(token=viewer + "x"), metadata=bearer(service_token), timeout=5
        )
        assert not bad.active
        assert bad.inactive_reason == auth_pb2.TOKEN_INACTIVE_REASON_BAD_SIGNATURE
        denied = await expect_rpc_error(
            stub.IntrospectToken(
                auth_pb2.IntrospectTokenRequest(token=viewer), metadata=bearer(viewer), timeout=5
            )
        )
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.metadata["permission"] == "tokens:introspect"
