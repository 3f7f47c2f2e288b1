"""Who may do what: every permission, the one each RPC and REST route requires, and what each role holds.

DESIGN §6: permissions are ``resource:action`` strings; every gRPC method of every service and every REST
route declares exactly one, here, in one table, so the auth interceptor of each service enforces the same
rules and a new RPC without an entry fails the test that walks the proto descriptors. The six roles map to
sets of permissions; the auth service puts roles (and a scope) into tokens, and every verifier turns them
back into permissions with ``permissions_for``.

A handful of permissions are held by everyone, authenticated or not (``ANONYMOUS_PERMISSIONS``): logging
in, revoking a token one holds, reading the public keys, health and API docs. Methods that require one of
them are served without a token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Final

__all__ = [
    "ANONYMOUS_PERMISSIONS",
    "GRPC_METHOD_PERMISSIONS",
    "HTTP_ROUTE_PERMISSIONS",
    "METHOD_PERMISSIONS",
    "PERMISSIONS",
    "ROLES",
    "ROLE_DESCRIPTIONS",
    "ROLE_PERMISSIONS",
    "PermissionInfo",
    "default_scope",
    "is_anonymous",
    "permissions_for",
    "routes_requiring",
    "scope_grants",
]

# ---------------------------------------------------------------------------------------------------------
# Permissions
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PermissionInfo:
    """One ``resource:action`` permission and what it allows."""

    name: str
    description: str

    @property
    def resource(self) -> str:
        """The part before the colon: ``cameras`` of ``cameras:read``."""
        return self.name.partition(":")[0]


_PERMISSION_LIST: Final = (
    # open to everyone
    PermissionInfo("tokens:issue", "Log in, refresh a token, or exchange client credentials for a token."),
    PermissionInfo("tokens:revoke", "Revoke (log out) a token one holds."),
    PermissionInfo("jwks:read", "Read the public signing keys (JWKS) and the discovery document."),
    PermissionInfo("health:read", "Read liveness and health endpoints."),
    PermissionInfo("docs:read", "Read the OpenAPI description and its documentation pages."),
    # one's own account
    PermissionInfo("password:change", "Change one's own password."),
    PermissionInfo("mfa:enroll", "Enroll and confirm TOTP MFA for one's own account."),
    PermissionInfo(
        "mfa:disable", "Disable TOTP MFA (one's own with a code; another user's needs users:update)."
    ),
    # identity administration (auth service)
    PermissionInfo("tokens:introspect", "Check another party's token and read its claims."),
    PermissionInfo("signing_keys:read", "List token signing keys and their states."),
    PermissionInfo("signing_keys:rotate", "Create a new signing key (key rotation)."),
    PermissionInfo("users:create", "Create users."),
    PermissionInfo("users:read", "Read users."),
    PermissionInfo("users:update", "Change users: roles, details, disabled flag, another user's password."),
    PermissionInfo("users:delete", "Delete users."),
    PermissionInfo("users:unlock", "Lift a lockout after repeated failed logins."),
    PermissionInfo("roles:read", "List roles and the permissions they grant."),
    PermissionInfo("permissions:read", "List permissions and where they are required."),
    PermissionInfo("devices:create", "Register cameras and IoT devices."),
    PermissionInfo("devices:read", "Read registered devices (never their secrets)."),
    PermissionInfo("devices:update", "Change a device's name, labels or disabled flag."),
    PermissionInfo("devices:delete", "Delete devices and invalidate their credentials."),
    PermissionInfo("device_credentials:rotate", "Issue a new API key or HMAC secret for a device."),
    PermissionInfo("device_secrets:read", "Read a device's HMAC secret to verify its telemetry signatures."),
    PermissionInfo("service_accounts:create", "Create service accounts."),
    PermissionInfo("service_accounts:read", "Read service accounts."),
    PermissionInfo("service_accounts:delete", "Delete service accounts."),
    PermissionInfo("audit:read", "Read the audit log."),
    # streaming service
    PermissionInfo("cameras:create", "Register cameras."),
    PermissionInfo("cameras:read", "Read camera configuration."),
    PermissionInfo("cameras:update", "Change camera configuration."),
    PermissionInfo("cameras:delete", "Delete cameras."),
    PermissionInfo("camera_status:read", "Read live camera status."),
    PermissionInfo("frames:read", "Read the latest frame (thumbnail) of a camera."),
    PermissionInfo("frames:stream", "Stream frames as a camera."),
    PermissionInfo("telemetry:stream", "Stream telemetry as a device."),
    PermissionInfo("telemetry:submit", "Submit a telemetry batch as a device."),
    PermissionInfo("streams:read", "List open ingest streams."),
    PermissionInfo("ingest:read", "Read ingest pipeline status."),
    # analytics service
    PermissionInfo("metrics:read", "Query traffic metrics."),
    PermissionInfo("metrics:stream", "Subscribe to live traffic metrics."),
    PermissionInfo("metrics:export", "Export traffic metrics in bulk."),
    PermissionInfo("passages:read", "Query vehicle passages."),
    PermissionInfo("violations:read", "Query violations."),
    PermissionInfo("anomalies:read", "Query anomalies."),
    PermissionInfo("telemetry:read", "Query telemetry readings."),
    PermissionInfo("geofences:create", "Create geofences."),
    PermissionInfo("geofences:read", "Read geofences."),
    PermissionInfo("geofences:update", "Change geofences."),
    PermissionInfo("geofences:delete", "Delete geofences."),
    PermissionInfo("pipeline:read", "Read analytics pipeline status."),
    # alert service
    PermissionInfo("alerts:raise", "Raise alerts."),
    PermissionInfo("alerts:read", "Read alerts, alert groups and statistics."),
    PermissionInfo("alerts:acknowledge", "Acknowledge alerts."),
    PermissionInfo("alerts:resolve", "Resolve alerts."),
    PermissionInfo("alerts:watch", "Subscribe to alert changes."),
    PermissionInfo("silences:create", "Create silences."),
    PermissionInfo("silences:read", "Read silences."),
    PermissionInfo("silences:update", "Change silences."),
    PermissionInfo("silences:delete", "Delete silences."),
    PermissionInfo("deliveries:read", "Read notification deliveries."),
    PermissionInfo("deliveries:retry", "Retry failed notification deliveries."),
    PermissionInfo("routing:read", "Read the alert routing configuration."),
    PermissionInfo("routing:reload", "Reload the alert routing configuration."),
    # console
    PermissionInfo("status:read", "Read the live status console."),
)

PERMISSIONS: Final[Mapping[str, PermissionInfo]] = MappingProxyType({p.name: p for p in _PERMISSION_LIST})
"""Every permission by name."""

ANONYMOUS_PERMISSIONS: Final = frozenset(
    {"tokens:issue", "tokens:revoke", "jwks:read", "health:read", "docs:read"}
)
"""Held by every caller, with or without a token: the methods requiring them are served without one."""

# ---------------------------------------------------------------------------------------------------------
# Method and route → permission (the single declared map)
# ---------------------------------------------------------------------------------------------------------

_STREAMING = "/itsmesh.v1.StreamingService/"
_ANALYTICS = "/itsmesh.v1.AnalyticsService/"
_ALERT = "/itsmesh.v1.AlertService/"
_AUTH = "/itsmesh.v1.AuthService/"

GRPC_METHOD_PERMISSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        # StreamingService
        _STREAMING + "RegisterCamera": "cameras:create",
        _STREAMING + "GetCamera": "cameras:read",
        _STREAMING + "ListCameras": "cameras:read",
        _STREAMING + "UpdateCamera": "cameras:update",
        _STREAMING + "DeleteCamera": "cameras:delete",
        _STREAMING + "GetCameraStatus": "camera_status:read",
        _STREAMING + "ListCameraStatuses": "camera_status:read",
        _STREAMING + "GetLatestFrame": "frames:read",
        _STREAMING + "StreamFrames": "frames:stream",
        _STREAMING + "StreamTelemetry": "telemetry:stream",
        _STREAMING + "SubmitTelemetry": "telemetry:submit",
        _STREAMING + "ListStreams": "streams:read",
        _STREAMING + "GetIngestStatus": "ingest:read",
        # AnalyticsService
        _ANALYTICS + "GetTrafficMetrics": "metrics:read",
        _ANALYTICS + "ListPassages": "passages:read",
        _ANALYTICS + "ListViolations": "violations:read",
        _ANALYTICS + "GetViolation": "violations:read",
        _ANALYTICS + "ListAnomalies": "anomalies:read",
        _ANALYTICS + "ListTelemetryReadings": "telemetry:read",
        _ANALYTICS + "StreamLiveMetrics": "metrics:stream",
        _ANALYTICS + "ExportMetrics": "metrics:export",
        _ANALYTICS + "CreateGeofence": "geofences:create",
        _ANALYTICS + "GetGeofence": "geofences:read",
        _ANALYTICS + "ListGeofences": "geofences:read",
        _ANALYTICS + "UpdateGeofence": "geofences:update",
        _ANALYTICS + "DeleteGeofence": "geofences:delete",
        _ANALYTICS + "GetPipelineStatus": "pipeline:read",
        # AlertService
        _ALERT + "RaiseAlert": "alerts:raise",
        _ALERT + "GetAlert": "alerts:read",
        _ALERT + "ListAlerts": "alerts:read",
        _ALERT + "AcknowledgeAlert": "alerts:acknowledge",
        _ALERT + "ResolveAlert": "alerts:resolve",
        _ALERT + "WatchAlerts": "alerts:watch",
        _ALERT + "GetAlertStatistics": "alerts:read",
        _ALERT + "ListAlertGroups": "alerts:read",
        _ALERT + "CreateSilence": "silences:create",
        _ALERT + "GetSilence": "silences:read",
        _ALERT + "ListSilences": "silences:read",
        _ALERT + "UpdateSilence": "silences:update",
        _ALERT + "DeleteSilence": "silences:delete",
        _ALERT + "ListDeliveries": "deliveries:read",
        _ALERT + "RetryFailedDeliveries": "deliveries:retry",
        _ALERT + "GetRoutingConfig": "routing:read",
        _ALERT + "ReloadRoutingConfig": "routing:reload",
        # AuthService
        _AUTH + "Login": "tokens:issue",
        _AUTH + "RefreshToken": "tokens:issue",
        _AUTH + "RevokeToken": "tokens:revoke",
        _AUTH + "ExchangeClientCredentials": "tokens:issue",
        _AUTH + "IntrospectToken": "tokens:introspect",
        _AUTH + "GetJwks": "jwks:read",
        _AUTH + "ListSigningKeys": "signing_keys:read",
        _AUTH + "RotateSigningKey": "signing_keys:rotate",
        _AUTH + "CreateUser": "users:create",
        _AUTH + "GetUser": "users:read",
        _AUTH + "ListUsers": "users:read",
        _AUTH + "UpdateUser": "users:update",
        _AUTH + "DeleteUser": "users:delete",
        _AUTH + "ChangePassword": "password:change",
        _AUTH + "UnlockUser": "users:unlock",
        _AUTH + "ListRoles": "roles:read",
        _AUTH + "ListPermissions": "permissions:read",
        _AUTH + "EnrollTotp": "mfa:enroll",
        _AUTH + "ConfirmTotp": "mfa:enroll",
        _AUTH + "DisableTotp": "mfa:disable",
        _AUTH + "RegisterDevice": "devices:create",
        _AUTH + "GetDevice": "devices:read",
        _AUTH + "ListDevices": "devices:read",
        _AUTH + "UpdateDevice": "devices:update",
        _AUTH + "DeleteDevice": "devices:delete",
        _AUTH + "RotateDeviceCredentials": "device_credentials:rotate",
        _AUTH + "GetDeviceSecret": "device_secrets:read",
        _AUTH + "CreateServiceAccount": "service_accounts:create",
        _AUTH + "ListServiceAccounts": "service_accounts:read",
        _AUTH + "DeleteServiceAccount": "service_accounts:delete",
        _AUTH + "ListAuditEvents": "audit:read",
    }
)
"""Full gRPC method path → the permission it requires."""

HTTP_ROUTE_PERMISSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        # every HTTP app
        "GET /healthz": "health:read",
        "GET /docs": "docs:read",
        "GET /docs/oauth2-redirect": "docs:read",
        "GET /redoc": "docs:read",
        "GET /openapi.json": "docs:read",
        # auth: tokens and keys
        "POST /auth/token": "tokens:issue",
        "POST /auth/refresh": "tokens:issue",
        "POST /auth/revoke": "tokens:revoke",
        "POST /auth/logout": "tokens:revoke",
        "POST /auth/introspect": "tokens:introspect",
        "GET /.well-known/jwks.json": "jwks:read",
        "GET /.well-known/openid-configuration": "jwks:read",
        "GET /auth/keys": "signing_keys:read",
        "POST /auth/keys/rotate": "signing_keys:rotate",
        # auth: own account
        "POST /auth/password": "password:change",
        "POST /auth/mfa/totp/enroll": "mfa:enroll",
        "POST /auth/mfa/totp/confirm": "mfa:enroll",
        "POST /auth/mfa/totp/disable": "mfa:disable",
        # auth: users, roles, permissions
        "GET /users": "users:read",
        "POST /users": "users:create",
        "GET /users/{user_id}": "users:read",
        "PATCH /users/{user_id}": "users:update",
        "DELETE /users/{user_id}": "users:delete",
        "POST /users/{user_id}/password": "password:change",
        "POST /users/{user_id}/unlock": "users:unlock",
        "GET /roles": "roles:read",
        "GET /permissions": "permissions:read",
        # auth: devices and service accounts
        "GET /devices": "devices:read",
        "POST /devices": "devices:create",
        "GET /devices/{device_id}": "devices:read",
        "PATCH /devices/{device_id}": "devices:update",
        "DELETE /devices/{device_id}": "devices:delete",
        "POST /devices/{device_id}/credentials": "device_credentials:rotate",
        "GET /devices/{device_id}/secret": "device_secrets:read",
        "GET /service-accounts": "service_accounts:read",
        "POST /service-accounts": "service_accounts:create",
        "DELETE /service-accounts/{service_account_id}": "service_accounts:delete",
        # auth: audit
        "GET /audit": "audit:read",
        # console
        "GET /": "status:read",
        "GET /api/status": "status:read",
        "GET /api/status/stream": "status:read",
        "GET /ws/status": "status:read",  # the WebSocket handshake
        "GET /api/cameras": "camera_status:read",
        "GET /api/cameras/{camera_id}/thumbnail": "frames:read",
        "GET /api/alerts": "alerts:read",
        "POST /api/alerts/{alert_id}/acknowledge": "alerts:acknowledge",
        "GET /api/analytics/metrics": "metrics:read",
        "GET /api/analytics/metrics/export": "metrics:export",
        "GET /api/analytics/passages": "passages:read",
        "GET /api/analytics/violations": "violations:read",
        "GET /api/analytics/anomalies": "anomalies:read",
        "GET /metrics": "health:read",  # Prometheus scrapes without a token, as on every metrics port
    }
)
"""``"METHOD /path"`` (the route's path template) → the permission it requires."""

METHOD_PERMISSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {**GRPC_METHOD_PERMISSIONS, **HTTP_ROUTE_PERMISSIONS}
)
"""Both maps in one: what ``JwtAuthenticator`` enforces (gRPC paths and route keys never collide)."""

# ---------------------------------------------------------------------------------------------------------
# Roles
# ---------------------------------------------------------------------------------------------------------

ROLES: Final = ("admin", "operator", "analyst", "viewer", "device", "service")
"""The six roles, in the order of the proto's Role enum (ROLE_ADMIN = 1 …)."""

ROLE_DESCRIPTIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "admin": "Everything, including users, keys and the audit log.",
        "operator": "Runs the network: cameras, devices, alerts, silences, deliveries.",
        "analyst": "Queries analytics and exports data.",
        "viewer": "Read-only access to status, cameras, alerts and metrics.",
        "device": "An edge device: streams its own frames or telemetry.",
        "service": "An internal service calling other services.",
    }
)

_OWN_ACCOUNT = ("password:change", "mfa:enroll", "mfa:disable", "roles:read", "permissions:read")
_VIEW = (
    "cameras:read",
    "camera_status:read",
    "frames:read",
    "streams:read",
    "ingest:read",
    "metrics:read",
    "pipeline:read",
    "alerts:read",
    "status:read",
)
_ANALYSIS = (
    "metrics:stream",
    "metrics:export",
    "passages:read",
    "violations:read",
    "anomalies:read",
    "telemetry:read",
    "geofences:read",
)
_OPERATIONS = (
    "cameras:create",
    "cameras:update",
    "cameras:delete",
    "devices:create",
    "devices:read",
    "devices:update",
    "devices:delete",
    "device_credentials:rotate",
    "geofences:create",
    "geofences:update",
    "geofences:delete",
    "alerts:raise",
    "alerts:acknowledge",
    "alerts:resolve",
    "alerts:watch",
    "silences:create",
    "silences:read",
    "silences:update",
    "silences:delete",
    "deliveries:read",
    "deliveries:retry",
    "routing:read",
    "routing:reload",
)

ROLE_PERMISSIONS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        # Everything except reading device secrets, which only services do (auth.proto: GetDeviceSecret).
        "admin": frozenset(PERMISSIONS) - {"device_secrets:read"},
        "operator": ANONYMOUS_PERMISSIONS | frozenset((*_OWN_ACCOUNT, *_VIEW, *_ANALYSIS, *_OPERATIONS)),
        "analyst": ANONYMOUS_PERMISSIONS | frozenset((*_OWN_ACCOUNT, *_VIEW, *_ANALYSIS)),
        "viewer": ANONYMOUS_PERMISSIONS | frozenset((*_OWN_ACCOUNT, *_VIEW)),
        "device": ANONYMOUS_PERMISSIONS
        | frozenset({"frames:stream", "telemetry:stream", "telemetry:submit"}),
        "service": ANONYMOUS_PERMISSIONS
        | frozenset(
            (
                *_VIEW,
                *_ANALYSIS,
                "roles:read",
                "permissions:read",
                "tokens:introspect",
                "devices:read",
                "device_secrets:read",
                "alerts:raise",
                "routing:read",
            )
        ),
    }
)
"""Role → the permissions it grants."""


def is_anonymous(permission: str) -> bool:
    """Whether ``permission`` is held by every caller, so its methods need no token."""
    return permission in ANONYMOUS_PERMISSIONS


def default_scope(roles: Iterable[str]) -> str:
    """The scope a token carries when none was requested: ``resource:*`` for each resource the roles reach."""
    resources = {p.partition(":")[0] for role in roles for p in ROLE_PERMISSIONS.get(role, ())}
    return " ".join(f"{resource}:*" for resource in sorted(resources))


def scope_grants(scope_item: str, permission: str) -> bool:
    """Whether one scope item (``cameras:read``, ``cameras:*`` or ``*``) covers ``permission``."""
    if scope_item in ("*", permission):
        return True
    resource, _, action = scope_item.partition(":")
    return action == "*" and permission.partition(":")[0] == resource


@lru_cache(maxsize=1024)
def _permissions_for(roles: frozenset[str], scope: str | None) -> frozenset[str]:
    held = frozenset().union(*(ROLE_PERMISSIONS.get(role, frozenset()) for role in roles))
    if scope is None:
        return held | ANONYMOUS_PERMISSIONS
    items = scope.split()
    granted = {p for p in held if any(scope_grants(item, p) for item in items)}
    return frozenset(granted) | ANONYMOUS_PERMISSIONS


def permissions_for(roles: Iterable[str], scope: str | None = None) -> frozenset[str]:
    """Permissions a token with ``roles`` and ``scope`` (space-separated; None = unrestricted) holds.

    A scope only narrows: it never grants a permission the roles do not. Unknown roles grant nothing.
    Cached, so verifying a token costs a dictionary lookup here.
    """
    return _permissions_for(frozenset(roles), scope)


def routes_requiring(permission: str) -> tuple[list[str], list[str]]:
    """The gRPC methods and the REST routes that require ``permission``, each sorted."""
    methods = sorted(m for m, p in GRPC_METHOD_PERMISSIONS.items() if p == permission)
    routes = sorted(r for r, p in HTTP_ROUTE_PERMISSIONS.items() if p == permission)
    return methods, routes
