"""The pure parts of the auth hook: bearer tokens, the permission check, principals and errors."""

from __future__ import annotations

import grpc
import pytest

from mesh.interceptors import (
    AuthInterceptor,
    PermissionDenied,
    Principal,
    Unauthenticated,
    authorize,
    bearer_token,
    current_principal,
)

PERMISSIONS = {"/itsmesh.v1.StreamingService/GetCamera": "camera:read"}


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ([("authorization", "Bearer abc.def")], "abc.def"),
        ([("authorization", "bearer   abc ")], "abc"),
        ([("user-agent", "x"), ("authorization", "Basic Zm9v"), ("authorization", "Bearer t")], "t"),
        ([("authorization", "Bearer ")], None),
        ([("authorization", "Basic Zm9v")], None),
        ([("authorization-bin", b"Bearer x")], None),
        ([], None),
        (None, None),
    ],
)
def test_the_bearer_token_is_read_from_the_authorization_entry(metadata, token):
    assert bearer_token(metadata) == token


def test_a_principal_holding_the_method_permission_is_authorized():
    principal = Principal("op-1", permissions=frozenset({"camera:read"}))
    authorize(principal, "/itsmesh.v1.StreamingService/GetCamera", PERMISSIONS)


def test_a_principal_without_the_permission_is_denied_with_the_permission_named():
    principal = Principal("viewer-1", permissions=frozenset({"metrics:read"}))
    with pytest.raises(PermissionDenied) as denied:
        authorize(principal, "/itsmesh.v1.StreamingService/GetCamera", PERMISSIONS)
    assert denied.value.grpc_code is grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.reason == "MISSING_PERMISSION"
    assert "camera:read" in denied.value.message


def test_a_method_missing_from_the_map_is_denied_to_everyone():
    admin = Principal("root", roles=frozenset({"admin"}), permissions=frozenset({"camera:read"}))
    with pytest.raises(PermissionDenied) as denied:
        authorize(admin, "/itsmesh.v1.StreamingService/DeleteCamera", PERMISSIONS)
    assert denied.value.reason == "METHOD_NOT_MAPPED"


def test_auth_errors_carry_their_code_and_a_default_reason():
    assert (Unauthenticated("x").grpc_code, Unauthenticated("x").reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )
    assert PermissionDenied("x", reason="ROLE_REQUIRED").reason == "ROLE_REQUIRED"
    assert not Unauthenticated("expired").retriable


def test_principals_compare_by_identity_fields_not_claims():
    a = Principal("cam-1", kind="device", claims={"jti": "1"})
    b = Principal("cam-1", kind="device", claims={"jti": "2"})
    assert a == b
    assert hash(a) == hash(b)
    assert a.can("frame:stream") is False


def test_no_principal_outside_a_handler():
    assert current_principal() is None


def test_without_an_authenticator_the_interceptor_passes_everything_through():
    assert not AuthInterceptor(None).applies_to("/itsmesh.v1.StreamingService/GetCamera")


def test_health_and_reflection_are_open_with_an_authenticator():
    class Refuser:
        async def authenticate(self, method, metadata):
            raise Unauthenticated("no")

    interceptor = AuthInterceptor(Refuser())
    assert not interceptor.applies_to("/grpc.health.v1.Health/Watch")
    assert not interceptor.applies_to("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert interceptor.applies_to("/itsmesh.v1.StreamingService/GetCamera")
