"""The one permission map: every RPC and REST route declares a permission, and roles grant sensible sets."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from itsmesh.v1 import alert_pb2, analytics_pb2, auth_pb2, streaming_pb2
from mesh.permissions import (
    ANONYMOUS_PERMISSIONS,
    GRPC_METHOD_PERMISSIONS,
    HTTP_ROUTE_PERMISSIONS,
    PERMISSIONS,
    ROLE_PERMISSIONS,
    ROLES,
    default_scope,
    permissions_for,
    routes_requiring,
    scope_grants,
)
from mesh.tokens import JwtAuthenticator
from services.auth.authority import Authority, LocalJwksSource
from services.auth.config import AuthSettings
from services.auth.http import create_app as create_auth_app
from services.console.app import create_app as create_console_app

PROTO_MODULES = (streaming_pb2, analytics_pb2, alert_pb2, auth_pb2)


def _proto_methods() -> list[str]:
    return [
        f"/{service.full_name}/{method.name}"
        for module in PROTO_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def _http_routes(app) -> list[str]:
    keys = []
    for route in app.routes:
        if isinstance(route, APIRoute | Route):
            keys.extend(
                f"{method} {route.path}" for method in sorted(route.methods or ()) if method != "HEAD"
            )
    return keys


def test_every_rpc_of_every_proto_service_declares_a_permission():
    missing = [m for m in _proto_methods() if m not in GRPC_METHOD_PERMISSIONS]
    assert missing == [], "add these RPCs to mesh/permissions.py GRPC_METHOD_PERMISSIONS"


def test_the_map_names_no_rpc_that_does_not_exist():
    assert set(GRPC_METHOD_PERMISSIONS) - set(_proto_methods()) == set()


def test_every_rest_route_of_the_auth_and_console_apps_declares_a_permission():
    settings = AuthSettings()
    authority = Authority(settings)
    authenticator = JwtAuthenticator(LocalJwksSource(authority), issuer="i", audience="a")
    routes = _http_routes(create_auth_app(authority, authenticator, settings)) + _http_routes(
        create_console_app()
    )
    assert len(routes) > 30
    assert [r for r in routes if r not in HTTP_ROUTE_PERMISSIONS] == []


def test_there_are_at_least_35_permissions_all_of_resource_action_form_and_all_used():
    assert len(PERMISSIONS) >= 35
    for name in PERMISSIONS:
        resource, _, action = name.partition(":")
        assert resource, name
        assert action, name
        assert ":" not in action, name
    used = set(GRPC_METHOD_PERMISSIONS.values()) | set(HTTP_ROUTE_PERMISSIONS.values())
    assert set(PERMISSIONS) - used == set(), "a permission no method or route requires"
    assert used - set(PERMISSIONS) == set(), "a method requires an undeclared permission"


def test_roles_grant_only_declared_permissions_and_admin_everything_but_device_secrets():
    assert set(ROLES) == set(ROLE_PERMISSIONS)
    for role, granted in ROLE_PERMISSIONS.items():
        assert granted <= set(PERMISSIONS), role
        assert granted >= ANONYMOUS_PERMISSIONS, role
    assert ROLE_PERMISSIONS["admin"] == set(PERMISSIONS) - {"device_secrets:read"}
    assert "device_secrets:read" in ROLE_PERMISSIONS["service"]


@pytest.mark.parametrize(
    ("role", "allowed", "denied"),
    [
        ("viewer", "cameras:read", "cameras:update"),
        ("analyst", "metrics:export", "alerts:acknowledge"),
        ("operator", "silences:create", "users:read"),
        ("device", "frames:stream", "cameras:read"),
        ("service", "device_secrets:read", "users:create"),
        ("admin", "audit:read", "device_secrets:read"),
    ],
)
def test_each_role_holds_what_it_is_for(role, allowed, denied):
    assert allowed in ROLE_PERMISSIONS[role]
    assert denied not in ROLE_PERMISSIONS[role]


def test_a_scope_only_narrows_what_the_roles_grant():
    assert permissions_for(["viewer"]) == ROLE_PERMISSIONS["viewer"]
    narrowed = permissions_for(["operator"], "cameras:* alerts:read users:delete")
    assert {"cameras:read", "cameras:update", "alerts:read"} <= narrowed
    assert "users:delete" not in narrowed, "a scope never grants what the roles do not"
    assert "silences:create" not in narrowed
    assert narrowed >= ANONYMOUS_PERMISSIONS
    assert permissions_for(["nobody"]) == ANONYMOUS_PERMISSIONS


def test_the_default_scope_covers_exactly_the_roles_permissions():
    scope = default_scope(["analyst"])
    assert permissions_for(["analyst"], scope) == ROLE_PERMISSIONS["analyst"]
    assert scope_grants("*", "audit:read")
    assert scope_grants("audit:*", "audit:read")
    assert not scope_grants("audit:*", "users:read")


def test_routes_requiring_lists_both_fronts():
    methods, routes = routes_requiring("audit:read")
    assert methods == ["/itsmesh.v1.AuthService/ListAuditEvents"]
    assert routes == ["GET /audit"]
