"""TOTP MFA end to end, with codes computed by an independent RFC 6238 implementation written here."""

from __future__ import annotations

import base64
import hmac
import time
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from itsmesh.v1 import auth_pb2, auth_pb2_grpc
from services.auth.model import AuditQuery
from tests.integration.auth_stack import (
    PASSWORD,
    bearer,
    create_user,
    expect_rpc_error,
    grpc_login,
    http_client,
    running_stack,
)

pytestmark = pytest.mark.integration


def rfc6238_code(secret_base32: str, step: int) -> str:
    """The TOTP code of time step ``step``: HMAC-SHA1 of the big-endian step, dynamic truncation, 6 digits."""
    key = base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8))
    digest = hmac.digest(key, step.to_bytes(8, "big"), "sha1")
    start = digest[-1] % 16
    return str((int.from_bytes(digest[start : start + 4], "big") & 0x7FFFFFFF) % 1_000_000).rjust(6, "0")


@pytest.fixture(scope="module")
async def stack(infra):
    async with running_stack(infra, with_services=False) as running:
        yield running


async def _enrolled_user(stack):
    """A user with MFA enabled; returns (username, user_id, secret, step used to confirm, recovery codes)."""
    username, user_id = await create_user(stack.authority, "analyst")
    token = (await grpc_login(stack.auth_grpc, username)).access_token
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        enrollment = await stub.EnrollTotp(auth_pb2.EnrollTotpRequest(), metadata=bearer(token), timeout=5)
        query = parse_qs(urlsplit(enrollment.otpauth_uri).query)
        assert query["secret"] == [enrollment.secret_base32]
        assert query["issuer"] == ["itsmesh"]
        assert enrollment.expire_time.ToSeconds() > time.time()
        step = int(time.time()) // 30
        confirmed = await stub.ConfirmTotp(
            auth_pb2.ConfirmTotpRequest(code=rfc6238_code(enrollment.secret_base32, step)),
            metadata=bearer(token),
            timeout=5,
        )
    assert len(confirmed.recovery_codes) == 10
    return username, user_id, enrollment.secret_base32, step, list(confirmed.recovery_codes)


async def test_an_mfa_user_needs_a_current_code_which_works_once(stack):
    username, user_id, secret, step, _ = await _enrolled_user(stack)

    details = await expect_rpc_error(grpc_login(stack.auth_grpc, username))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MFA_REQUIRED")
    details = await expect_rpc_error(grpc_login(stack.auth_grpc, username, totp_code="000000"))
    assert details.reason == "INVALID_MFA_CODE"

    # the next step's code is inside the ±1 step window; the confirm step's code was used already
    next_code = rfc6238_code(secret, step + 1)
    reply = await grpc_login(stack.auth_grpc, username, totp_code=next_code)
    assert reply.access_token
    replay = await expect_rpc_error(grpc_login(stack.auth_grpc, username, totp_code=next_code))
    assert replay.reason == "INVALID_MFA_CODE", "a code cannot be used twice"
    older = await expect_rpc_error(
        grpc_login(stack.auth_grpc, username, totp_code=rfc6238_code(secret, step))
    )
    assert older.reason == "INVALID_MFA_CODE", "nor can an earlier step's code once a later one was used"
    far = await expect_rpc_error(
        grpc_login(stack.auth_grpc, username, totp_code=rfc6238_code(secret, step + 5))
    )
    assert far.reason == "INVALID_MFA_CODE", "codes outside ±1 step are refused"

    async with http_client(stack) as client:
        form = await client.post(
            "/auth/token", data={"username": username, "password": PASSWORD, "totp_code": "123456"}
        )
    assert form.status_code == 401
    assert form.json()["reason"] == "INVALID_MFA_CODE"

    events = await stack.authority.store.list_audit_events(AuditQuery(target=user_id, page_size=100))
    actions = [e.action for e in events.items]
    assert "MFA_ENABLED" in actions
    assert actions.count("LOGIN_SUCCEEDED") == 2  # before enrollment, and with the next code
    failures = [e.details.get("reason") for e in events.items if e.action == "LOGIN_FAILED"]
    assert sorted(failures) == sorted(["mfa_required"] + ["wrong_totp_code"] * 5)


async def test_a_recovery_code_logs_in_once_and_is_audited(stack):
    username, user_id, _, _, codes = await _enrolled_user(stack)
    reply = await grpc_login(stack.auth_grpc, username, recovery_code=codes[3].upper())
    assert reply.access_token
    again = await expect_rpc_error(grpc_login(stack.auth_grpc, username, recovery_code=codes[3]))
    assert again.reason == "INVALID_MFA_CODE"
    events = await stack.authority.store.list_audit_events(
        AuditQuery(target=user_id, actions=("RECOVERY_CODE_USED",), page_size=10)
    )
    assert [e.details["remaining"] for e in events.items] == [9]


async def test_disabling_mfa_needs_a_current_code_and_enrolling_twice_is_refused(stack):
    username, user_id, secret, step, codes = await _enrolled_user(stack)
    token = (await grpc_login(stack.auth_grpc, username, recovery_code=codes[0])).access_token
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        twice = await expect_rpc_error(
            stub.EnrollTotp(auth_pb2.EnrollTotpRequest(), metadata=bearer(token), timeout=5)
        )
        assert (twice.code, twice.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MFA_ALREADY_ENABLED")
        no_code = await expect_rpc_error(
            stub.DisableTotp(auth_pb2.DisableTotpRequest(), metadata=bearer(token), timeout=5)
        )
        assert no_code.code == grpc.StatusCode.INVALID_ARGUMENT
        await stub.DisableTotp(
            auth_pb2.DisableTotpRequest(code=rfc6238_code(secret, step + 1)),
            metadata=bearer(token),
            timeout=5,
        )
    assert (await grpc_login(stack.auth_grpc, username)).access_token, "no code needed any more"
    user = await stack.authority.get_user(user_id)
    assert not user.mfa_enabled


async def test_an_admin_may_disable_another_users_mfa_but_a_viewer_may_not(stack):
    username, user_id, *_ = await _enrolled_user(stack)
    admin_name, _ = await create_user(stack.authority, "admin")
    viewer_name, _ = await create_user(stack.authority, "viewer")
    admin = (await grpc_login(stack.auth_grpc, admin_name)).access_token
    viewer = (await grpc_login(stack.auth_grpc, viewer_name)).access_token
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        denied = await expect_rpc_error(
            stub.DisableTotp(auth_pb2.DisableTotpRequest(user_id=user_id), metadata=bearer(viewer), timeout=5)
        )
        assert (denied.code, denied.metadata["permission"]) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "users:update",
        )
        await stub.DisableTotp(
            auth_pb2.DisableTotpRequest(user_id=user_id), metadata=bearer(admin), timeout=5
        )
    assert (await grpc_login(stack.auth_grpc, username)).access_token


async def test_enrollment_over_rest_returns_the_uri_and_confirm_returns_recovery_codes(stack):
    username, _ = await create_user(stack.authority, "viewer")
    async with http_client(stack) as client:
        login = await client.post("/auth/token", data={"username": username, "password": PASSWORD})
        headers = {"authorization": f"Bearer {login.json()['access_token']}"}
        enrolled = await client.post("/auth/mfa/totp/enroll", headers=headers)
        assert enrolled.status_code == 200, enrolled.text
        body = enrolled.json()
        assert body["otpauth_uri"].startswith("otpauth://totp/itsmesh%3A")
        assert base64.b64decode(body["qr_code_png"]).startswith(b"\x89PNG\r\n\x1a\n"), "a scannable QR PNG"
        wrong = await client.post("/auth/mfa/totp/confirm", json={"code": "12345x"}, headers=headers)
        assert wrong.status_code == 400
        code = rfc6238_code(body["secret_base32"], int(time.time()) // 30)
        confirmed = await client.post("/auth/mfa/totp/confirm", json={"code": code}, headers=headers)
    assert confirmed.status_code == 200, confirmed.text
    assert len(confirmed.json()["recovery_codes"]) == 10
