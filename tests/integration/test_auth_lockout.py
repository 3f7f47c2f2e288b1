"""Brute-force protection: progressive lockout per account and per source address, audited."""

from __future__ import annotations

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
    user_token,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def stack(infra):
    async with running_stack(infra, with_services=False) as running:
        yield running


async def test_five_wrong_passwords_lock_the_account_for_15_minutes_until_an_admin_unlocks_it(stack):
    username, user_id = await create_user(stack.authority, "operator")
    for _ in range(4):
        details = await expect_rpc_error(grpc_login(stack.auth_grpc, username, "wrong password!"))
        assert details.reason == "INVALID_CREDENTIALS"
    locked = await expect_rpc_error(grpc_login(stack.auth_grpc, username, "wrong password!"))
    assert (locked.code, locked.reason, locked.metadata["locked"]) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "ACCOUNT_LOCKED",
        "account",
    )
    assert 899 <= locked.retry_delay_s <= 900

    # the right password does not help while locked, on either front
    still = await expect_rpc_error(grpc_login(stack.auth_grpc, username, PASSWORD))
    assert still.reason == "ACCOUNT_LOCKED"
    async with http_client(stack) as client:
        response = await client.post("/auth/token", data={"username": username, "password": PASSWORD})
    assert response.status_code == 401
    assert response.json()["reason"] == "ACCOUNT_LOCKED"
    assert 890 <= int(response.headers["retry-after"]) <= 900

    admin = await user_token(stack, "admin")
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        user = await stub.GetUser(auth_pb2.GetUserRequest(user_id=user_id), metadata=bearer(admin), timeout=5)
        assert user.failed_login_count == 5
        assert user.HasField("lock_expire_time")
        unlocked = await stub.UnlockUser(
            auth_pb2.UnlockUserRequest(user_id=user_id), metadata=bearer(admin), timeout=5
        )
        assert not unlocked.HasField("lock_expire_time")
    assert (await grpc_login(stack.auth_grpc, username)).access_token

    events = await stack.authority.store.list_audit_events(AuditQuery(target=user_id, page_size=50))
    actions = [e.action for e in events.items]
    assert actions.count("LOGIN_FAILED") == 7  # five wrong passwords, two attempts while locked
    assert actions.count("ACCOUNT_LOCKED") == 1
    assert actions.count("ACCOUNT_UNLOCKED") == 1
    assert actions[0] == "LOGIN_SUCCEEDED"
    assert all(e.source_ip == "127.0.0.1" for e in events.items if e.action == "LOGIN_FAILED")


async def test_a_success_resets_the_count(stack):
    username, _ = await create_user(stack.authority, "viewer")
    for _ in range(4):
        await expect_rpc_error(grpc_login(stack.auth_grpc, username, "wrong password!"))
    await grpc_login(stack.auth_grpc, username)
    for _ in range(4):
        details = await expect_rpc_error(grpc_login(stack.auth_grpc, username, "wrong password!"))
        assert details.reason == "INVALID_CREDENTIALS"


async def test_failures_from_one_source_lock_that_source_across_usernames(infra):
    async with running_stack(infra, with_services=False, lockout_ip_threshold=3) as stack:
        state = stack.authority.state
        await state.clear_source("127.0.0.1")
        try:
            for name in ("nobody-1", "nobody-2"):
                details = await expect_rpc_error(grpc_login(stack.auth_grpc, name, "guessing!!!!"))
                assert details.reason == "INVALID_CREDENTIALS"
            locked = await expect_rpc_error(grpc_login(stack.auth_grpc, "nobody-3", "guessing!!!!"))
            assert locked.reason == "INVALID_CREDENTIALS", (
                "the third failure is refused, then the source locks"
            )
            username, _ = await create_user(stack.authority, "viewer")
            source = await expect_rpc_error(grpc_login(stack.auth_grpc, username, PASSWORD))
            assert (source.reason, source.metadata["locked"]) == ("ACCOUNT_LOCKED", "source")
            assert 0 < source.retry_delay_s <= 900
        finally:
            await state.clear_source("127.0.0.1")
        assert (await grpc_login(stack.auth_grpc, username)).access_token
