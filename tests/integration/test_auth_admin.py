"""Users, roles, the audit log (admin only), admin bootstrap and keys sealed at rest."""

from __future__ import annotations

import base64
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from itsmesh.v1 import auth_pb2, auth_pb2_grpc
from mesh.host import ServiceHost
from mesh.migrations import apply_migrations
from mesh.permissions import PERMISSIONS
from services.auth.encryption import SecretKeyError
from services.auth.service import build as build_auth
from tests.integration.auth_stack import (
    PASSWORD,
    auth_settings,
    bearer,
    create_user,
    expect_rpc_error,
    grpc_login,
    http_client,
    running_stack,
    user_token,
)

pytestmark = pytest.mark.integration

SECRET_KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(scope="module")
async def stack(infra):
    async with running_stack(infra, with_services=False) as running:
        yield running


@pytest.fixture
async def scratch_db(infra):
    """A database of its own, migrated, so first-start behaviour can be watched."""
    name = f"auth_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(infra.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(infra.database_url)._replace(path=f"/{name}"))
    await apply_migrations(url)
    yield url
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_users_are_created_updated_and_role_changes_are_audited_with_old_and_new(stack):
    admin = await user_token(stack, "admin")
    async with http_client(stack) as client:
        headers = {"authorization": f"Bearer {admin}"}
        created = await client.post(
            "/users",
            json={"username": f"ana-{uuid.uuid4().hex[:6]}", "password": PASSWORD, "roles": ["viewer"]},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        user = created.json()
        assert "password" not in str(user).lower().replace("password_change_time", "")
        weak = await client.post(
            "/users", json={"username": "weakling", "password": "short", "roles": ["viewer"]}, headers=headers
        )
        assert weak.status_code == 400
        assert weak.json()["field_violations"][0]["field"] == "password"
        device_role = await client.post(
            "/users",
            json={"username": "robot-user", "password": PASSWORD, "roles": ["device"]},
            headers=headers,
        )
        assert device_role.status_code == 400, "device and service roles are not for humans"
        taken = await client.post(
            "/users",
            json={"username": user["username"], "password": PASSWORD, "roles": ["viewer"]},
            headers=headers,
        )
        assert taken.status_code == 409
        patched = await client.patch(
            f"/users/{user['user_id']}", json={"roles": ["analyst", "viewer"]}, headers=headers
        )
        assert patched.json()["roles"] == ["analyst", "viewer"]
        audit = await client.get(
            "/audit",
            params={"target": user["user_id"], "action": ["roles_changed", "user_created"]},
            headers=headers,
        )
    assert audit.status_code == 200
    events = audit.json()["audit_events"]
    assert [e["action"] for e in events] == ["ROLES_CHANGED", "USER_CREATED"]
    assert events[0]["details"] == {"old_roles": ["viewer"], "new_roles": ["analyst", "viewer"]}
    assert events[0]["actor_type"] == "user"

    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        updated = await stub.UpdateUser(
            auth_pb2.UpdateUserRequest(
                user=auth_pb2.User(user_id=user["user_id"], disabled=True),
                update_mask=field_mask_pb2.FieldMask(paths=["disabled"]),
            ),
            metadata=bearer(admin),
            timeout=5,
        )
        assert updated.disabled
        empty_mask = await expect_rpc_error(
            stub.UpdateUser(
                auth_pb2.UpdateUserRequest(user=auth_pb2.User(user_id=user["user_id"])),
                metadata=bearer(admin),
            )
        )
        assert empty_mask.field_violations[0][0] == "update_mask"
    refused = await expect_rpc_error(grpc_login(stack.auth_grpc, user["username"]))
    assert refused.reason == "INVALID_CREDENTIALS"


async def test_the_audit_log_is_for_admins_only(stack):
    viewer = await user_token(stack, "viewer")
    operator = await user_token(stack, "operator")
    async with http_client(stack) as client:
        anonymous = await client.get("/audit")
        as_viewer = await client.get("/audit", headers={"authorization": f"Bearer {viewer}"})
        as_operator = await client.get("/audit", headers={"authorization": f"Bearer {operator}"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert as_viewer.status_code == as_operator.status_code == 403
    assert as_viewer.json()["details"]["permission"] == "audit:read"
    assert as_viewer.json()["error"] == "insufficient_scope"
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        denied = await expect_rpc_error(
            stub.ListAuditEvents(auth_pb2.ListAuditEventsRequest(), metadata=bearer(viewer))
        )
    assert (denied.code, denied.metadata["permission"]) == (grpc.StatusCode.PERMISSION_DENIED, "audit:read")


async def test_audit_pages_and_filters_over_grpc(stack):
    username, user_id = await create_user(stack.authority, "viewer")
    for _ in range(3):
        await expect_rpc_error(grpc_login(stack.auth_grpc, username, "wrong password!"))
    admin = await user_token(stack, "admin")
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        request = auth_pb2.ListAuditEventsRequest(
            target=user_id, failures_only=True, page_size=2, actions=[auth_pb2.AUDIT_ACTION_LOGIN_FAILED]
        )
        first = await stub.ListAuditEvents(request, metadata=bearer(admin), timeout=5)
        request.page_token = first.next_page_token
        second = await stub.ListAuditEvents(request, metadata=bearer(admin), timeout=5)
    assert len(first.audit_events) == 2
    assert first.next_page_token
    assert len(second.audit_events) == 1
    assert not second.next_page_token
    times = [e.event_time.ToNanoseconds() for e in [*first.audit_events, *second.audit_events]]
    assert times == sorted(times, reverse=True)
    event = first.audit_events[0]
    assert (event.action, event.success, event.actor, event.source_ip) == (
        auth_pb2.AUDIT_ACTION_LOGIN_FAILED,
        False,
        username,
        "127.0.0.1",
    )
    assert dict(event.details)["reason"] == "wrong_password"


async def test_roles_and_permissions_are_listed_with_where_each_permission_is_required(stack):
    viewer = await user_token(stack, "viewer")
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        roles = await stub.ListRoles(auth_pb2.ListRolesRequest(), metadata=bearer(viewer), timeout=5)
        permissions = await stub.ListPermissions(
            auth_pb2.ListPermissionsRequest(), metadata=bearer(viewer), timeout=5
        )
    assert [r.name for r in roles.roles] == ["admin", "operator", "analyst", "viewer", "device", "service"]
    assert len(permissions.permissions) == len(PERMISSIONS) >= 35
    audit = next(p for p in permissions.permissions if p.name == "audit:read")
    assert list(audit.roles) == [auth_pb2.ROLE_ADMIN]
    assert list(audit.grpc_methods) == ["/itsmesh.v1.AuthService/ListAuditEvents"]
    assert list(audit.http_routes) == ["GET /audit"]


async def test_changing_ones_password_needs_the_current_one_and_ends_other_sessions(stack):
    username, _ = await create_user(stack.authority, "operator")
    other_session = await grpc_login(stack.auth_grpc, username)
    this_session = await grpc_login(stack.auth_grpc, username)
    async with http_client(stack) as client:
        headers = {"authorization": f"Bearer {this_session.access_token}"}
        wrong = await client.post(
            "/auth/password",
            json={"current_password": "not it at all", "new_password": "a brand new passphrase"},
            headers=headers,
        )
        assert wrong.status_code == 401
        changed = await client.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
            headers=headers,
        )
        assert changed.status_code == 200, changed.text
        other = await client.post("/auth/refresh", json={"refresh_token": other_session.refresh_token})
        this = await client.post("/auth/refresh", json={"refresh_token": this_session.refresh_token})
    assert other.json()["reason"] == "TOKEN_REVOKED"
    assert this.status_code == 200, "the session that changed the password stays"
    assert (await grpc_login(stack.auth_grpc, username, "a brand new passphrase")).access_token


async def test_the_last_admin_cannot_be_demoted_or_deleted(stack, scratch_db, infra):
    settings = auth_settings(infra, database_url=scratch_db, secret_key=SECRET_KEY, admin_password=PASSWORD)
    host = ServiceHost(build_auth(settings))
    await host.start()
    try:
        address = f"127.0.0.1:{host.grpc_port}"
        reply = await grpc_login(address, "admin")
        async with grpc.aio.insecure_channel(address) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            me = reply.subject
            demote = await expect_rpc_error(
                stub.UpdateUser(
                    auth_pb2.UpdateUserRequest(
                        user=auth_pb2.User(user_id=me, roles=[auth_pb2.ROLE_VIEWER]),
                        update_mask=field_mask_pb2.FieldMask(paths=["roles"]),
                    ),
                    metadata=bearer(reply.access_token),
                )
            )
            delete = await expect_rpc_error(
                stub.DeleteUser(auth_pb2.DeleteUserRequest(user_id=me), metadata=bearer(reply.access_token))
            )
        assert demote.reason == delete.reason == "LAST_ADMIN"
    finally:
        await host.stop()


async def test_first_start_bootstraps_an_admin_from_the_env_password_once(scratch_db, infra, pg):
    settings = auth_settings(infra, database_url=scratch_db, secret_key=SECRET_KEY, admin_password=PASSWORD)
    for _ in range(2):
        host = ServiceHost(build_auth(settings))
        await host.start()
        try:
            reply = await grpc_login(f"127.0.0.1:{host.grpc_port}", "admin")
            assert list(reply.roles) == [auth_pb2.ROLE_ADMIN]
        finally:
            await host.stop()
    conn = await asyncpg.connect(scratch_db)
    try:
        admins = await conn.fetchval("SELECT count(*) FROM auth.users WHERE 'admin' = ANY(roles)")
        actions = await conn.fetch("SELECT action, details FROM auth.audit_events ORDER BY event_time")
        private = await conn.fetchval("SELECT private_key_enc FROM auth.signing_keys WHERE state = 'active'")
    finally:
        await conn.close()
    assert admins == 1
    assert [a["action"] for a in actions].count("ADMIN_BOOTSTRAPPED") == 1
    assert b"PRIVATE" not in private
    assert private[:1] == b"\x01", "sealed, not PKCS#8 DER (which starts with 0x30)"


async def test_without_an_env_password_a_one_time_password_is_handed_over_once_never_logged(
    scratch_db, infra, capsys, caplog, tmp_path
):
    settings = auth_settings(infra, database_url=scratch_db, secret_key=SECRET_KEY, data_dir=tmp_path)
    host = ServiceHost(build_auth(settings))
    await host.start()
    handed_over = tmp_path / "auth" / "initial-admin-password"
    try:
        # stderr is not a terminal under pytest, as under `itsmesh up`: the password goes to a 0600 file
        assert handed_over.stat().st_mode & 0o777 == 0o600
        username, password = handed_over.read_text().split()
        reply = await grpc_login(f"127.0.0.1:{host.grpc_port}", username, password)
        assert reply.access_token
    finally:
        await host.stop()
    handed_over.unlink()
    host = ServiceHost(build_auth(settings))
    await host.start()
    await host.stop()
    assert not handed_over.exists(), "a second start creates no new admin and no new password"
    assert password not in capsys.readouterr().err
    assert password not in caplog.text


async def test_a_different_secret_key_refuses_to_start_rather_than_sign_with_an_unreadable_key(
    scratch_db, infra
):
    first = ServiceHost(
        build_auth(
            auth_settings(infra, database_url=scratch_db, secret_key=SECRET_KEY, admin_password=PASSWORD)
        )
    )
    await first.start()
    await first.stop()
    other_key = base64.b64encode(bytes(32)).decode()
    second = ServiceHost(build_auth(auth_settings(infra, database_url=scratch_db, secret_key=other_key)))
    with pytest.raises(SecretKeyError, match="ITSMESH_AUTH_SECRET_KEY"):
        await second.start()
    await second.stop()
