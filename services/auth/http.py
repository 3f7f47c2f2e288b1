"""REST front of the auth service (OpenAPI docs at /docs): the same operations as the gRPC API.

Every route's permission comes from ``mesh.permissions.HTTP_ROUTE_PERMISSIONS`` (keyed ``"METHOD /path"``)
and is enforced by one dependency with the service's ``JwtAuthenticator``, exactly as the gRPC interceptor
does for RPCs. Errors are the same ``StatusError``s the gRPC front raises, answered as an HTTP status with a
JSON body ``{"error", "error_description", "reason", "details"}`` (OAuth 2.0 style, RFC 6749 §5.2), and
``Retry-After`` when the error says when to come back.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mesh.host import VERSION
from mesh.interceptors import Principal
from mesh.permissions import (
    PERMISSIONS,
    ROLE_DESCRIPTIONS,
    ROLE_PERMISSIONS,
    ROLES,
    routes_requiring,
)
from mesh.status import StatusError, details_from_trailers, http_status, status_trailers
from mesh.tokens import JwtAuthenticator
from services.auth import passwords, rbac, validation
from services.auth.authority import Authority
from services.auth.config import AuthSettings
from services.auth.errors import InvalidArgument
from services.auth.keys import KEY_SIZES, SigningKeyRecord
from services.auth.model import (
    AUDIT_ACTIONS,
    AuditEvent,
    AuditQuery,
    Caller,
    Device,
    DeviceChanges,
    DeviceCredentials,
    IssuedTokens,
    ServiceAccount,
    User,
    UserChanges,
)

_OAUTH_ERROR: Final[Mapping[str, str]] = {
    "INVALID_CLIENT": "invalid_client",
    "INVALID_ARGUMENT": "invalid_request",
    "MISSING_PERMISSION": "insufficient_scope",
}
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def error_response(error: StatusError) -> JSONResponse:
    """The HTTP answer for a ``StatusError``."""
    details = details_from_trailers(error.grpc_code, error.message, status_trailers(error.status))
    status = http_status(error.grpc_code)
    reason = details.reason or error.grpc_code.name
    oauth_error = _OAUTH_ERROR.get(reason)
    if oauth_error is None and status == 401:
        bearer_problem = reason.startswith("TOKEN_") or reason == "MISSING_CREDENTIALS"
        oauth_error = "invalid_token" if bearer_problem else "invalid_grant"  # RFC 6750 §3.1 / RFC 6749 §5.2
    if oauth_error is None:
        oauth_error = error.grpc_code.name.lower()
    body: dict[str, Any] = {
        "error": oauth_error,
        "error_description": error.message,
        "reason": reason,
        "details": dict(details.metadata),
    }
    if details.field_violations:
        body["field_violations"] = [{"field": f, "description": d} for f, d in details.field_violations]
    headers = dict(_NO_STORE)
    if details.retry_delay_s is not None:
        headers["Retry-After"] = str(max(1, round(details.retry_delay_s)))
    if status == 401:
        headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{reason}"'
    return JSONResponse(body, status_code=status, headers=headers)


# -- request bodies ------------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RefreshBody(_Body):
    """Body of POST /auth/refresh (JSON or form)."""

    refresh_token: str


class RevokeBody(_Body):
    """Body of POST /auth/revoke (RFC 7009)."""

    token: str
    token_type_hint: Literal["access_token", "refresh_token", ""] = ""


class LogoutBody(_Body):
    """Body of POST /auth/logout: the refresh token to end (the bearer access token is revoked too)."""

    refresh_token: str = ""


class IntrospectBody(_Body):
    """Body of POST /auth/introspect."""

    token: str
    required_permission: str = ""
    audience: str = ""


class RotateKeyBody(_Body):
    """Body of POST /auth/keys/rotate."""

    key_size_bits: int = 2048


class PasswordBody(_Body):
    """Body of POST /auth/password and POST /users/{user_id}/password."""

    current_password: str = ""
    new_password: str


class TotpCodeBody(_Body):
    """Body of POST /auth/mfa/totp/confirm."""

    code: str


class TotpDisableBody(_Body):
    """Body of POST /auth/mfa/totp/disable."""

    user_id: str = ""
    code: str = ""


class CreateUserBody(_Body):
    """Body of POST /users."""

    username: str
    password: str
    roles: list[str]
    email: str = ""
    display_name: str = ""


class UpdateUserBody(_Body):
    """Body of PATCH /users/{user_id}: only the fields present change."""

    email: str | None = None
    display_name: str | None = None
    roles: list[str] | None = None
    disabled: bool | None = None


class RegisterDeviceBody(_Body):
    """Body of POST /devices."""

    device_id: str
    kind: Literal["camera", "telemetry_unit"]
    name: str
    labels: dict[str, str] = Field(default_factory=dict)


class UpdateDeviceBody(_Body):
    """Body of PATCH /devices/{device_id}: only the fields present change."""

    name: str | None = None
    labels: dict[str, str] | None = None
    disabled: bool | None = None


class RotateCredentialsBody(_Body):
    """Body of POST /devices/{device_id}/credentials."""

    rotate_api_key: bool = False
    rotate_hmac_secret: bool = False
    previous_secret_grace_s: float | None = None


class CreateServiceAccountBody(_Body):
    """Body of POST /service-accounts."""

    service_account_id: str
    description: str = ""
    roles: list[str] = Field(default_factory=lambda: ["service"])


# -- response shapes -----------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def tokens_json(tokens: IssuedTokens) -> dict[str, Any]:
    """OAuth 2.0 token response (RFC 6749 §5.1) plus subject and roles."""
    body: dict[str, Any] = {
        "access_token": tokens.access_token,
        "token_type": "Bearer",
        "expires_in": tokens.expires_in_s,
        "scope": tokens.scope,
        "subject": tokens.subject,
        "subject_type": tokens.subject_type,
        "roles": list(tokens.roles),
    }
    if tokens.refresh_token:
        body["refresh_token"] = tokens.refresh_token
        body["refresh_expires_in"] = tokens.refresh_expires_in_s
    return body


def user_json(user: User) -> dict[str, Any]:
    """A user without credentials."""
    return {
        "user_id": user.user_id,
        "username": user.username,
        "email": user.email,
        "display_name": user.display_name,
        "roles": list(user.roles),
        "disabled": user.disabled,
        "mfa_enabled": user.mfa_enabled,
        "failed_login_count": user.failed_login_count,
        "lock_expire_time": _iso(user.locked_until),
        "last_login_time": _iso(user.last_login_at),
        "password_change_time": _iso(user.password_changed_at),
        "create_time": _iso(user.created_at),
        "update_time": _iso(user.updated_at),
    }


def device_json(device: Device) -> dict[str, Any]:
    """A device without secrets."""
    return {
        "device_id": device.device_id,
        "kind": device.kind,
        "name": device.name,
        "labels": dict(device.labels),
        "disabled": device.disabled,
        "api_key_prefix": device.api_key_prefix,
        "hmac_key_id": device.hmac_key_id,
        "created_by": device.created_by,
        "create_time": _iso(device.created_at),
        "update_time": _iso(device.updated_at),
        "last_token_time": _iso(device.last_token_at),
    }


def credentials_json(credentials: DeviceCredentials) -> dict[str, Any]:
    """Freshly issued device credentials (the HMAC secret base64-encoded)."""
    return {
        "api_key": credentials.api_key,
        "hmac_key_id": credentials.hmac_key_id,
        "hmac_secret": base64.b64encode(credentials.hmac_secret).decode() if credentials.hmac_secret else "",
    }


def account_json(account: ServiceAccount) -> dict[str, Any]:
    """A service account without its secret."""
    return {
        "service_account_id": account.service_account_id,
        "description": account.description,
        "roles": list(account.roles),
        "disabled": account.disabled,
        "secret_prefix": account.secret_prefix,
        "create_time": _iso(account.created_at),
        "last_token_time": _iso(account.last_token_at),
    }


def key_json(key: SigningKeyRecord) -> dict[str, Any]:
    """A signing key's public facts."""
    return {
        "kid": key.kid,
        "alg": key.alg,
        "state": key.state,
        "create_time": _iso(key.created_at),
        "deactivate_time": _iso(key.deactivated_at),
        "retire_time": _iso(key.retire_at),
        "public_key": dict(key.public_jwk),
    }


def audit_json(event: AuditEvent) -> dict[str, Any]:
    """An audit entry."""
    return {
        "audit_event_id": event.audit_event_id,
        "event_time": event.event_time.isoformat(),
        "action": event.action,
        "success": event.success,
        "actor": event.actor,
        "actor_type": event.actor_type,
        "target": event.target,
        "source_ip": event.source_ip,
        "user_agent": event.user_agent,
        "trace_id": event.trace_id,
        "details": dict(event.details),
    }


# -- form and JSON bodies of the OAuth endpoints -------------------------------------------------------------

_TOKEN_BODY_SCHEMA: Final = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": ["password", "refresh_token", "client_credentials"]},
        "username": {"type": "string"},
        "password": {"type": "string", "format": "password"},
        "totp_code": {"type": "string", "description": "6-digit TOTP code for MFA users"},
        "recovery_code": {"type": "string"},
        "scope": {"type": "string", "description": "space-separated scopes; empty = all the roles allow"},
        "refresh_token": {"type": "string"},
        "client_id": {"type": "string"},
        "client_secret": {"type": "string", "format": "password"},
    },
}
_TOKEN_OPENAPI: Final = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": _TOKEN_BODY_SCHEMA},
            "application/json": {"schema": _TOKEN_BODY_SCHEMA},
        },
    }
}


async def read_fields(request: Request) -> dict[str, str]:
    """The fields of a form-encoded or JSON body, as strings (repeated form fields: the first)."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise InvalidArgument("body", "is not valid JSON") from exc
        if not isinstance(data, dict):
            raise InvalidArgument("body", "must be a JSON object")
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    if content_type in ("application/x-www-form-urlencoded", ""):
        try:
            parsed = parse_qs(raw.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=32)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidArgument("body", "is not a valid form") from exc
        return {k: v[0] for k, v in parsed.items()}
    raise InvalidArgument("content-type", "must be application/x-www-form-urlencoded or application/json")


def basic_client_credentials(request: Request) -> tuple[str, str] | None:
    """client_id and client_secret from ``Authorization: Basic`` (RFC 6749 §2.3.1), if sent."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        client_id, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgument("authorization", "is not valid Basic credentials") from exc
    return (client_id, secret) if sep else None


async def caller(request: Request) -> Caller:
    """Authenticate a request for its route's permission and say who is calling from where."""
    route = request.scope.get("route")
    key = f"{request.method} {getattr(route, 'path', request.url.path)}"
    # A route missing from HTTP_ROUTE_PERMISSIONS is refused (PERMISSION_DENIED, METHOD_NOT_MAPPED).
    authenticator: JwtAuthenticator = request.app.state.authenticator
    principal: Principal = await authenticator.authorize_route(key, request.headers.get("authorization"))
    return Caller(
        principal,
        source_ip=request.client.host if request.client else "",
        user_agent=request.headers.get("user-agent", ""),
    )


CallerDep = Annotated[Caller, Depends(caller)]


def create_app(
    authority: Authority | None = None,
    authenticator: JwtAuthenticator | None = None,
    settings: AuthSettings | None = None,
) -> FastAPI:
    """The auth REST API. Without an authority only ``/healthz`` and the docs answer (used in tests)."""
    app = FastAPI(title="itsmesh auth", version=VERSION, description="Users, tokens, devices and keys.")

    @app.exception_handler(StatusError)
    async def status_error_handler(request: Request, exc: StatusError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return error_response(InvalidArgument(field, str(first.get("msg", "invalid"))))

    @app.get("/healthz", tags=["health"], summary="Liveness of the auth HTTP API")
    async def healthz() -> dict[str, str]:
        return {"status": "SERVING"}

    if authority is None or authenticator is None:
        return app
    app.state.authenticator = authenticator
    auth_settings = settings or authority.settings
    _add_routes(app, authority, authenticator, auth_settings)
    return app


def _add_routes(
    app: FastAPI, authority: Authority, authenticator: JwtAuthenticator, settings: AuthSettings
) -> None:

    # -- tokens ----------------------------------------------------------------------------------------------

    @app.post(
        "/auth/token",
        tags=["tokens"],
        summary="Log in or exchange client credentials",
        openapi_extra=_TOKEN_OPENAPI,
    )
    async def token(request: Request, who: CallerDep) -> JSONResponse:
        fields = await read_fields(request)
        grant = fields.get("grant_type", "password")
        scopes = fields.get("scope", "").split()
        if grant == "password":
            tokens = await authority.login(
                who,
                username=validation.required(fields.get("username", ""), "username", max_length=64),
                password=validation.required(
                    fields.get("password", ""), "password", max_length=passwords.MAX_LENGTH
                ),
                totp_code=fields.get("totp_code", "").strip(),
                recovery_code=fields.get("recovery_code", "").strip(),
                scopes=scopes,
            )
        elif grant == "refresh_token":
            tokens = await authority.refresh(
                who, validation.required(fields.get("refresh_token", ""), "refresh_token")
            )
        elif grant == "client_credentials":
            client_id, client_secret = basic_client_credentials(request) or (
                fields.get("client_id", ""),
                fields.get("client_secret", ""),
            )
            tokens = await authority.exchange_client_credentials(
                who,
                client_id=validation.required(client_id, "client_id", max_length=63),
                client_secret=validation.required(client_secret, "client_secret", max_length=512),
                scopes=scopes,
            )
        else:
            raise InvalidArgument("grant_type", "must be password, refresh_token or client_credentials")
        return JSONResponse(tokens_json(tokens), headers=_NO_STORE)

    @app.post("/auth/refresh", tags=["tokens"], summary="Rotate a refresh token (JSON or form)")
    async def refresh(request: Request, who: CallerDep) -> JSONResponse:
        fields = await read_fields(request)
        refresh_token = validation.required(fields.get("refresh_token", ""), "refresh_token", max_length=512)
        return JSONResponse(tokens_json(await authority.refresh(who, refresh_token)), headers=_NO_STORE)

    @app.post("/auth/revoke", tags=["tokens"], summary="Revoke an access or refresh token (RFC 7009)")
    async def revoke(request: Request, who: CallerDep) -> dict[str, Any]:
        try:
            body = RevokeBody.model_validate(await read_fields(request))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidArgument(".".join(map(str, first["loc"])) or "body", first["msg"]) from exc
        hint = {"access_token": "access", "refresh_token": "refresh"}.get(body.token_type_hint, "")
        await authority.revoke(
            who, validation.required(body.token, "token", max_length=validation.MAX_TOKEN), hint=hint
        )
        return {}

    @app.post("/auth/logout", tags=["tokens"], summary="Revoke the bearer access token and a refresh token")
    async def logout(request: Request, body: LogoutBody, who: CallerDep) -> dict[str, Any]:
        scheme, _, access = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and access.strip():
            await authority.revoke(who, access.strip(), hint="access")
        if body.refresh_token:
            await authority.revoke(who, body.refresh_token, hint="refresh")
        return {}

    @app.post("/auth/introspect", tags=["tokens"], summary="Check a token and read its claims (RFC 7662)")
    async def introspect(body: IntrospectBody, who: CallerDep) -> dict[str, Any]:
        validation.permission(body.required_permission, "required_permission")
        result = await authority.introspect(
            body.token, required_permission=body.required_permission, audience=body.audience
        )
        if not result.active:
            return {"active": False, "inactive_reason": result.inactive_reason}
        return {
            "active": True,
            **dict(result.claims),
            "kid": result.kid,
            "permissions": sorted(result.permissions),
            "permission_granted": result.permission_granted,
        }

    @app.get("/.well-known/jwks.json", tags=["keys"], summary="Public signing keys (JWKS)")
    async def jwks(who: CallerDep) -> JSONResponse:
        return JSONResponse(await authority.jwks(), headers={"Cache-Control": "public, max-age=5"})

    @app.get("/.well-known/openid-configuration", tags=["keys"], summary="Discovery document")
    async def openid_configuration(who: CallerDep) -> dict[str, Any]:
        base = settings.auth_url.rstrip("/")
        return {
            "issuer": settings.token_issuer,
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "token_endpoint": f"{base}/auth/token",
            "revocation_endpoint": f"{base}/auth/revoke",
            "introspection_endpoint": f"{base}/auth/introspect",
            "grant_types_supported": ["password", "refresh_token", "client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
            "scopes_supported": sorted(
                {"*", *(f"{p.resource}:*" for p in PERMISSIONS.values()), *PERMISSIONS}
            ),
            "claims_supported": [
                "iss",
                "aud",
                "sub",
                "sub_type",
                "roles",
                "scope",
                "iat",
                "nbf",
                "exp",
                "jti",
            ],
        }

    @app.get("/auth/keys", tags=["keys"], summary="List signing keys")
    async def list_keys(who: CallerDep, include_retired: bool = False) -> dict[str, Any]:
        return {"keys": [key_json(k) for k in await authority.list_signing_keys(include_retired)]}

    @app.post("/auth/keys/rotate", tags=["keys"], summary="Rotate the signing key")
    async def rotate_key(body: RotateKeyBody, who: CallerDep) -> dict[str, Any]:
        if body.key_size_bits not in KEY_SIZES:
            raise InvalidArgument("key_size_bits", f"must be one of {', '.join(map(str, KEY_SIZES))}")
        return key_json(await authority.rotate_signing_key(who, body.key_size_bits))

    # -- own account -----------------------------------------------------------------------------------------

    @app.post("/auth/password", tags=["account"], summary="Change one's own password")
    async def change_own_password(body: PasswordBody, who: CallerDep) -> dict[str, Any]:
        await authority.change_password(
            who, "", body.current_password, validation.password(body.new_password, "new_password")
        )
        return {}

    @app.post("/auth/mfa/totp/enroll", tags=["account"], summary="Start TOTP enrollment")
    async def enroll_totp(who: CallerDep) -> JSONResponse:
        enrollment = await authority.enroll_totp(who)
        body = {
            "otpauth_uri": enrollment.otpauth_uri,
            "secret_base32": enrollment.secret_base32,
            "qr_code_png": base64.b64encode(enrollment.qr_png).decode() if enrollment.qr_png else "",
            "expire_time": enrollment.expires_at.isoformat(),
        }
        return JSONResponse(body, headers=_NO_STORE)

    @app.post("/auth/mfa/totp/confirm", tags=["account"], summary="Confirm TOTP and get recovery codes")
    async def confirm_totp(body: TotpCodeBody, who: CallerDep) -> JSONResponse:
        codes = await authority.confirm_totp(who, validation.required(body.code, "code", max_length=16))
        return JSONResponse({"recovery_codes": codes}, headers=_NO_STORE)

    @app.post("/auth/mfa/totp/disable", tags=["account"], summary="Disable TOTP MFA")
    async def disable_totp(body: TotpDisableBody, who: CallerDep) -> dict[str, Any]:
        await authority.disable_totp(who, body.user_id, body.code.strip())
        return {}

    # -- users, roles, permissions ---------------------------------------------------------------------------

    @app.get("/users", tags=["users"], summary="List users")
    async def list_users(
        who: CallerDep,
        page_size: int = 0,
        page_token: str = "",
        role: str | None = None,
        include_disabled: bool = False,
    ) -> dict[str, Any]:
        if role is not None and role not in ROLES:
            raise InvalidArgument("role", "is not a role")
        page = await authority.list_users(
            page_size=validation.page_size(page_size),
            page_token=page_token,
            role=role,
            include_disabled=include_disabled,
        )
        return {"users": [user_json(u) for u in page.items], "next_page_token": page.next_page_token}

    @app.post("/users", tags=["users"], summary="Create a user", status_code=201)
    async def create_user(body: CreateUserBody, who: CallerDep) -> dict[str, Any]:
        user = await authority.create_user(
            who,
            username=validation.username(body.username, "username"),
            password=validation.password(body.password, "password"),
            roles=validation.roles(body.roles, "roles", rbac.HUMAN_ROLES),
            email=validation.text(body.email, "email"),
            display_name=validation.text(body.display_name, "display_name"),
        )
        return user_json(user)

    @app.get("/users/{user_id}", tags=["users"], summary="Get a user")
    async def get_user(user_id: str, who: CallerDep) -> dict[str, Any]:
        return user_json(await authority.get_user(user_id))

    @app.patch("/users/{user_id}", tags=["users"], summary="Update a user")
    async def update_user(user_id: str, body: UpdateUserBody, who: CallerDep) -> dict[str, Any]:
        if not body.model_fields_set:
            raise InvalidArgument("body", "name at least one of email, display_name, roles, disabled")
        changes = UserChanges(
            email=None if body.email is None else validation.text(body.email, "email"),
            display_name=None
            if body.display_name is None
            else validation.text(body.display_name, "display_name"),
            roles=None if body.roles is None else validation.roles(body.roles, "roles", rbac.HUMAN_ROLES),
            disabled=body.disabled,
        )
        return user_json(await authority.update_user(who, user_id, changes))

    @app.delete("/users/{user_id}", tags=["users"], summary="Delete a user", status_code=204)
    async def delete_user(user_id: str, who: CallerDep) -> None:
        await authority.delete_user(who, user_id)

    @app.post("/users/{user_id}/password", tags=["users"], summary="Set a user's password")
    async def set_password(user_id: str, body: PasswordBody, who: CallerDep) -> dict[str, Any]:
        await authority.change_password(
            who, user_id, body.current_password, validation.password(body.new_password, "new_password")
        )
        return {}

    @app.post("/users/{user_id}/unlock", tags=["users"], summary="Lift a lockout")
    async def unlock_user(user_id: str, who: CallerDep) -> dict[str, Any]:
        return user_json(await authority.unlock_user(who, user_id))

    @app.get("/roles", tags=["users"], summary="Roles and their permissions")
    async def list_roles(who: CallerDep) -> dict[str, Any]:
        return {
            "roles": [
                {"name": r, "description": ROLE_DESCRIPTIONS[r], "permissions": sorted(ROLE_PERMISSIONS[r])}
                for r in ROLES
            ]
        }

    @app.get("/permissions", tags=["users"], summary="Permissions and where they are required")
    async def list_permissions(who: CallerDep) -> dict[str, Any]:
        entries = []
        for name in sorted(PERMISSIONS):
            methods, routes = routes_requiring(name)
            entries.append(
                {
                    "name": name,
                    "description": PERMISSIONS[name].description,
                    "roles": [r for r in ROLES if name in ROLE_PERMISSIONS[r]],
                    "grpc_methods": methods,
                    "http_routes": routes,
                }
            )
        return {"permissions": entries}

    # -- devices and service accounts ------------------------------------------------------------------------

    @app.post(
        "/devices", tags=["devices"], summary="Register a device (credentials shown once)", status_code=201
    )
    async def register_device(body: RegisterDeviceBody, who: CallerDep) -> JSONResponse:
        device, credentials = await authority.register_device(
            who,
            device_id=validation.identifier(body.device_id, "device_id"),
            kind=body.kind,
            name=validation.required(body.name, "name"),
            labels=validation.labels(body.labels, "labels"),
        )
        return JSONResponse(
            {"device": device_json(device), "credentials": credentials_json(credentials)},
            status_code=201,
            headers=_NO_STORE,
        )

    @app.get("/devices", tags=["devices"], summary="List devices")
    async def list_devices(
        who: CallerDep,
        page_size: int = 0,
        page_token: str = "",
        kind: Literal["camera", "telemetry_unit"] | None = None,
        include_disabled: bool = False,
    ) -> dict[str, Any]:
        page = await authority.list_devices(
            page_size=validation.page_size(page_size),
            page_token=page_token,
            kind=kind,
            labels={},
            include_disabled=include_disabled,
        )
        return {"devices": [device_json(d) for d in page.items], "next_page_token": page.next_page_token}

    @app.get("/devices/{device_id}", tags=["devices"], summary="Get a device")
    async def get_device(device_id: str, who: CallerDep) -> dict[str, Any]:
        return device_json(await authority.get_device(validation.identifier(device_id, "device_id")))

    @app.patch("/devices/{device_id}", tags=["devices"], summary="Update a device")
    async def update_device(device_id: str, body: UpdateDeviceBody, who: CallerDep) -> dict[str, Any]:
        if not body.model_fields_set:
            raise InvalidArgument("body", "name at least one of name, labels, disabled")
        changes = DeviceChanges(
            name=None if body.name is None else validation.required(body.name, "name"),
            labels=None if body.labels is None else validation.labels(body.labels, "labels"),
            disabled=body.disabled,
        )
        return device_json(
            await authority.update_device(who, validation.identifier(device_id, "device_id"), changes)
        )

    @app.delete("/devices/{device_id}", tags=["devices"], summary="Delete a device", status_code=204)
    async def delete_device(device_id: str, who: CallerDep) -> None:
        await authority.delete_device(who, validation.identifier(device_id, "device_id"))

    @app.post("/devices/{device_id}/credentials", tags=["devices"], summary="Rotate device credentials")
    async def rotate_device_credentials(
        device_id: str, body: RotateCredentialsBody, who: CallerDep
    ) -> JSONResponse:
        if not (body.rotate_api_key or body.rotate_hmac_secret):
            raise InvalidArgument("rotate_api_key", "set rotate_api_key and/or rotate_hmac_secret")
        grace = None
        if body.previous_secret_grace_s is not None:
            if not 0 <= body.previous_secret_grace_s <= 7 * 86400:
                raise InvalidArgument("previous_secret_grace_s", "must be between 0 and 7 days")
            grace = timedelta(seconds=body.previous_secret_grace_s)
        credentials = await authority.rotate_device_credentials(
            who,
            validation.identifier(device_id, "device_id"),
            rotate_api_key=body.rotate_api_key,
            rotate_hmac_secret=body.rotate_hmac_secret,
            grace=grace,
        )
        return JSONResponse(credentials_json(credentials), headers=_NO_STORE)

    @app.get(
        "/devices/{device_id}/secret", tags=["devices"], summary="Read a device's HMAC secret (services)"
    )
    async def get_device_secret(device_id: str, who: CallerDep, key_id: str = "") -> JSONResponse:
        secret = await authority.get_device_secret(
            who,
            validation.identifier(device_id, "device_id"),
            validation.text(key_id, "key_id", max_length=64),
        )
        body = {
            "device_id": secret.device_id,
            "key_id": secret.key_id,
            "hmac_secret": base64.b64encode(secret.hmac_secret).decode(),
            "expire_time": _iso(secret.expires_at),
            "device_disabled": secret.device_disabled,
        }
        return JSONResponse(body, headers=_NO_STORE)

    @app.get("/service-accounts", tags=["service accounts"], summary="List service accounts")
    async def list_service_accounts(
        who: CallerDep, page_size: int = 0, page_token: str = ""
    ) -> dict[str, Any]:
        page = await authority.list_service_accounts(
            page_size=validation.page_size(page_size), page_token=page_token
        )
        return {
            "service_accounts": [account_json(a) for a in page.items],
            "next_page_token": page.next_page_token,
        }

    @app.post(
        "/service-accounts", tags=["service accounts"], summary="Create a service account", status_code=201
    )
    async def create_service_account(body: CreateServiceAccountBody, who: CallerDep) -> JSONResponse:
        account, secret = await authority.create_service_account(
            who,
            service_account_id=validation.identifier(body.service_account_id, "service_account_id"),
            description=validation.text(body.description, "description"),
            roles=validation.roles(body.roles, "roles", rbac.ACCOUNT_ROLES),
        )
        return JSONResponse(
            {"service_account": account_json(account), "client_secret": secret},
            status_code=201,
            headers=_NO_STORE,
        )

    @app.delete(
        "/service-accounts/{service_account_id}",
        tags=["service accounts"],
        summary="Delete a service account",
        status_code=204,
    )
    async def delete_service_account(service_account_id: str, who: CallerDep) -> None:
        await authority.delete_service_account(
            who, validation.identifier(service_account_id, "service_account_id")
        )

    # -- audit -----------------------------------------------------------------------------------------------

    @app.get("/audit", tags=["audit"], summary="Audit log (admin only)")
    async def list_audit(
        who: CallerDep,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        action: Annotated[list[str] | None, Query()] = None,
        actor: str = "",
        target: str = "",
        failures_only: bool = False,
        order: Literal["newest_first", "oldest_first"] = "newest_first",
        page_size: int = 0,
        page_token: str = "",
    ) -> dict[str, Any]:
        actions = tuple(a.upper() for a in action or ())
        unknown = sorted(set(actions) - set(AUDIT_ACTIONS))
        if unknown:
            raise InvalidArgument("action", f"unknown audit actions: {', '.join(unknown)}")
        for name, value in (("start_time", start_time), ("end_time", end_time)):
            if value is not None and value.tzinfo is None:
                raise InvalidArgument(name, "must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
        if start_time is not None and end_time is not None and end_time <= start_time:
            raise InvalidArgument("end_time", "must be after start_time")
        page = await authority.list_audit_events(
            AuditQuery(
                start=start_time,
                end=end_time,
                actions=actions,
                actor=validation.text(actor, "actor"),
                target=validation.text(target, "target"),
                failures_only=failures_only,
                newest_first=order == "newest_first",
                page_size=validation.page_size(page_size),
                page_token=page_token,
            )
        )
        return {"audit_events": [audit_json(e) for e in page.items], "next_page_token": page.next_page_token}
