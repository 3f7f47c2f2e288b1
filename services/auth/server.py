"""gRPC front of the auth service: proto ↔ domain translation and input validation.

Each RPC turns its request into validated arguments (or INVALID_ARGUMENT naming the field), calls the
``Authority`` and translates the result back. Errors the authority raises already carry their status and
details; ``_rpc`` ends the call with them.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import grpc
from google.protobuf import empty_pb2, struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from itsmesh.v1 import auth_pb2, auth_pb2_grpc, common_pb2
from mesh.interceptors import current_principal
from mesh.permissions import PERMISSIONS, ROLE_DESCRIPTIONS, ROLE_PERMISSIONS, ROLES, routes_requiring
from mesh.status import StatusError, abort_with_error
from mesh.tokens import ANONYMOUS
from services.auth import passwords, rbac, validation
from services.auth.authority import Authority
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
    DeviceKind,
    IssuedTokens,
    ServiceAccount,
    User,
    UserChanges,
)

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")

_DEVICE_KINDS: Final[Mapping[auth_pb2.DeviceKind.ValueType, DeviceKind]] = {
    auth_pb2.DEVICE_KIND_CAMERA: "camera",
    auth_pb2.DEVICE_KIND_TELEMETRY_UNIT: "telemetry_unit",
}
_DEVICE_KIND_NUMBERS: Final[Mapping[str, auth_pb2.DeviceKind.ValueType]] = {
    name: number for number, name in _DEVICE_KINDS.items()
}
_SUBJECT_TYPES: Final[Mapping[str, auth_pb2.SubjectType.ValueType]] = {
    "user": auth_pb2.SUBJECT_TYPE_USER,
    "device": auth_pb2.SUBJECT_TYPE_DEVICE,
    "service": auth_pb2.SUBJECT_TYPE_SERVICE,
}
_KEY_STATES: Final[Mapping[str, auth_pb2.SigningKeyState.ValueType]] = {
    "active": auth_pb2.SIGNING_KEY_STATE_ACTIVE,
    "verify_only": auth_pb2.SIGNING_KEY_STATE_VERIFY_ONLY,
    "retired": auth_pb2.SIGNING_KEY_STATE_RETIRED,
}


# -- translation helpers -------------------------------------------------------------------------------------


def role_number(role: str) -> auth_pb2.Role.ValueType:
    """The proto Role value of a role name (ROLE_ADMIN = 1 …); UNSPECIFIED for an unknown name."""
    return auth_pb2.Role.Value(f"ROLE_{role.upper()}") if role in ROLES else auth_pb2.ROLE_UNSPECIFIED


def role_name(number: int, field: str) -> str:
    """The role name of a proto Role value, or INVALID_ARGUMENT naming ``field``."""
    if not 1 <= number <= len(ROLES):
        raise InvalidArgument(field, f"{number} is not a role")
    return ROLES[number - 1]


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _duration(seconds: int) -> Duration:
    return Duration(seconds=seconds)


def _roles(numbers: Iterable[int], field: str, allowed: frozenset[str]) -> tuple[str, ...]:
    return validation.roles((role_name(n, field) for n in numbers), field, allowed)


def _peer_ip(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` → ``127.0.0.1``; ``ipv6:[::1]:5000`` → ``::1``."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return peer


def caller_of(context: Context) -> Caller:
    """Who is calling (as the auth interceptor established it) and from where."""
    agent = next((str(v) for k, v in context.invocation_metadata() or () if k == "user-agent"), "")
    return Caller(
        current_principal() or ANONYMOUS, source_ip=_peer_ip(context.peer() or ""), user_agent=agent
    )


def token_response(tokens: IssuedTokens) -> auth_pb2.TokenResponse:
    """The proto of issued tokens."""
    response = auth_pb2.TokenResponse(
        access_token=tokens.access_token,
        token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
        expires_in=_duration(tokens.expires_in_s),
        refresh_token=tokens.refresh_token,
        scopes=tokens.scope.split(),
        subject=tokens.subject,
        roles=[role_number(r) for r in tokens.roles],
    )
    if tokens.refresh_token:
        response.refresh_expires_in.CopyFrom(_duration(tokens.refresh_expires_in_s))
    return response


def user_message(user: User) -> auth_pb2.User:
    """The proto of a user (never its credentials)."""
    message = auth_pb2.User(
        user_id=user.user_id,
        username=user.username,
        email=user.email,
        display_name=user.display_name,
        roles=[role_number(r) for r in user.roles],
        disabled=user.disabled,
        mfa_enabled=user.mfa_enabled,
        failed_login_count=user.failed_login_count,
    )
    for field, value in (
        ("lock_expire_time", user.locked_until),
        ("last_login_time", user.last_login_at),
        ("password_change_time", user.password_changed_at),
        ("create_time", user.created_at),
        ("update_time", user.updated_at),
    ):
        stamp = _timestamp(value)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


def jwk_message(jwk: Mapping[str, str]) -> auth_pb2.Jwk:
    """The proto of a JWK."""
    return auth_pb2.Jwk(
        kty=jwk["kty"],
        kid=jwk["kid"],
        use=jwk.get("use", "sig"),
        alg=jwk.get("alg", "RS256"),
        n=jwk["n"],
        e=jwk["e"],
    )


def signing_key_message(key: SigningKeyRecord) -> auth_pb2.SigningKey:
    """The proto of a signing key's public facts."""
    message = auth_pb2.SigningKey(
        kid=key.kid, alg=key.alg, state=_KEY_STATES[key.state], public_key=jwk_message(key.public_jwk)
    )
    for field, value in (
        ("create_time", key.created_at),
        ("deactivate_time", key.deactivated_at),
        ("retire_time", key.retire_at),
    ):
        stamp = _timestamp(value)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


def device_message(device: Device) -> auth_pb2.Device:
    """The proto of a device (never its secrets)."""
    message = auth_pb2.Device(
        device_id=device.device_id,
        kind=_DEVICE_KIND_NUMBERS[device.kind],
        name=device.name,
        labels=dict(device.labels),
        disabled=device.disabled,
        api_key_prefix=device.api_key_prefix,
        hmac_key_id=device.hmac_key_id,
        created_by=device.created_by,
    )
    for field, value in (
        ("create_time", device.created_at),
        ("update_time", device.updated_at),
        ("last_token_time", device.last_token_at),
    ):
        stamp = _timestamp(value)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


def credentials_message(credentials: DeviceCredentials) -> auth_pb2.DeviceCredentials:
    """The proto of freshly issued device credentials."""
    return auth_pb2.DeviceCredentials(
        api_key=credentials.api_key, hmac_key_id=credentials.hmac_key_id, hmac_secret=credentials.hmac_secret
    )


def account_message(account: ServiceAccount) -> auth_pb2.ServiceAccount:
    """The proto of a service account (never its secret)."""
    message = auth_pb2.ServiceAccount(
        service_account_id=account.service_account_id,
        description=account.description,
        roles=[role_number(r) for r in account.roles],
        disabled=account.disabled,
        secret_prefix=account.secret_prefix,
    )
    for field, value in (("create_time", account.created_at), ("last_token_time", account.last_token_at)):
        stamp = _timestamp(value)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


def audit_message(event: AuditEvent) -> auth_pb2.AuditEvent:
    """The proto of an audit entry."""
    details = struct_pb2.Struct()
    details.update(dict(event.details))
    message = auth_pb2.AuditEvent(
        audit_event_id=event.audit_event_id,
        action=auth_pb2.AuditAction.Value(f"AUDIT_ACTION_{event.action}"),
        success=event.success,
        actor=event.actor,
        actor_type=_SUBJECT_TYPES.get(event.actor_type, auth_pb2.SUBJECT_TYPE_UNSPECIFIED),
        target=event.target,
        source_ip=event.source_ip,
        user_agent=event.user_agent,
        trace_id=event.trace_id,
        details=details,
    )
    message.event_time.FromDatetime(event.event_time)
    return message


def _rpc(
    handler: Callable[[AuthServicer, Req, Context], Awaitable[Resp]],
) -> Callable[[AuthServicer, Req, Context], Awaitable[Resp]]:
    """End the RPC with the status of any ``StatusError`` the handler raises."""

    @functools.wraps(handler)
    async def wrapper(self: AuthServicer, request: Req, context: Context) -> Resp:
        try:
            return await handler(self, request, context)
        except StatusError as exc:
            await abort_with_error(context, exc)

    return wrapper


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Answers itsmesh.v1.AuthService."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority

    # -- tokens ----------------------------------------------------------------------------------------------

    @_rpc
    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.TokenResponse:
        tokens = await self.authority.login(
            caller_of(context),
            username=validation.required(request.username, "username", max_length=64),
            password=validation.required(request.password, "password", max_length=passwords.MAX_LENGTH),
            totp_code=request.totp_code.strip(),
            recovery_code=request.recovery_code.strip(),
            scopes=list(request.scopes),
        )
        return token_response(tokens)

    @_rpc
    async def RefreshToken(
        self, request: auth_pb2.RefreshTokenRequest, context: Context
    ) -> auth_pb2.TokenResponse:
        token = validation.required(request.refresh_token, "refresh_token", max_length=512)
        return token_response(await self.authority.refresh(caller_of(context), token))

    @_rpc
    async def RevokeToken(self, request: auth_pb2.RevokeTokenRequest, context: Context) -> empty_pb2.Empty:
        token = validation.required(request.token, "token", max_length=8192)
        hint = {auth_pb2.TOKEN_TYPE_ACCESS: "access", auth_pb2.TOKEN_TYPE_REFRESH: "refresh"}.get(
            request.token_type_hint, ""
        )
        await self.authority.revoke(caller_of(context), token, hint=hint)
        return empty_pb2.Empty()

    @_rpc
    async def ExchangeClientCredentials(
        self, request: auth_pb2.ExchangeClientCredentialsRequest, context: Context
    ) -> auth_pb2.TokenResponse:
        tokens = await self.authority.exchange_client_credentials(
            caller_of(context),
            client_id=validation.required(request.client_id, "client_id", max_length=63),
            client_secret=validation.required(request.client_secret, "client_secret", max_length=512),
            scopes=list(request.scopes),
        )
        return token_response(tokens)

    @_rpc
    async def IntrospectToken(
        self, request: auth_pb2.IntrospectTokenRequest, context: Context
    ) -> auth_pb2.TokenInfo:
        validation.permission(request.required_permission, "required_permission")
        result = await self.authority.introspect(
            request.token, required_permission=request.required_permission, audience=request.audience
        )
        if not result.active:
            return auth_pb2.TokenInfo(
                active=False,
                inactive_reason=auth_pb2.TokenInactiveReason.Value(
                    f"TOKEN_INACTIVE_REASON_{result.inactive_reason}"
                ),
            )
        claims = result.claims
        aud = claims.get("aud")
        info = auth_pb2.TokenInfo(
            active=True,
            subject=str(claims.get("sub", "")),
            subject_type=_SUBJECT_TYPES.get(
                str(claims.get("sub_type", "user")), auth_pb2.SUBJECT_TYPE_UNSPECIFIED
            ),
            username=str(claims.get("username", "")),
            roles=[role_number(r) for r in claims.get("roles", [])],
            permissions=sorted(result.permissions),
            scopes=str(claims.get("scope", "")).split(),
            token_id=str(claims.get("jti", "")),
            key_id=result.kid,
            issuer=str(claims.get("iss", "")),
            audiences=[aud] if isinstance(aud, str) else list(aud or []),
            permission_granted=result.permission_granted,
        )
        info.issue_time.FromSeconds(int(claims["iat"]))
        info.expire_time.FromSeconds(int(claims["exp"]))
        return info

    @_rpc
    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Context) -> auth_pb2.Jwks:
        document = await self.authority.jwks()
        return auth_pb2.Jwks(keys=[jwk_message(k) for k in document["keys"]])

    @_rpc
    async def ListSigningKeys(
        self, request: auth_pb2.ListSigningKeysRequest, context: Context
    ) -> auth_pb2.ListSigningKeysResponse:
        keys = await self.authority.list_signing_keys(request.include_retired)
        return auth_pb2.ListSigningKeysResponse(keys=[signing_key_message(k) for k in keys])

    @_rpc
    async def RotateSigningKey(
        self, request: auth_pb2.RotateSigningKeyRequest, context: Context
    ) -> auth_pb2.SigningKey:
        bits = request.key_size_bits or 2048
        if bits not in KEY_SIZES:
            raise InvalidArgument("key_size_bits", f"must be 0 or one of {', '.join(map(str, KEY_SIZES))}")
        return signing_key_message(await self.authority.rotate_signing_key(caller_of(context), bits))

    # -- users -----------------------------------------------------------------------------------------------

    @_rpc
    async def CreateUser(self, request: auth_pb2.CreateUserRequest, context: Context) -> auth_pb2.User:
        user = request.user
        created = await self.authority.create_user(
            caller_of(context),
            username=validation.username(user.username, "user.username"),
            password=validation.password(request.password, "password"),
            roles=_roles(user.roles, "user.roles", rbac.HUMAN_ROLES),
            email=user.email[: validation.MAX_TEXT],
            display_name=user.display_name[: validation.MAX_TEXT],
        )
        return user_message(created)

    @_rpc
    async def GetUser(self, request: auth_pb2.GetUserRequest, context: Context) -> auth_pb2.User:
        return user_message(
            await self.authority.get_user(validation.required(request.user_id, "user_id", max_length=64))
        )

    @_rpc
    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, context: Context
    ) -> auth_pb2.ListUsersResponse:
        role = role_name(request.role, "role") if request.role else None
        page = await self.authority.list_users(
            page_size=validation.page_size(request.page_size),
            page_token=request.page_token,
            role=role,
            include_disabled=request.include_disabled,
        )
        return auth_pb2.ListUsersResponse(
            users=[user_message(u) for u in page.items], next_page_token=page.next_page_token
        )

    @_rpc
    async def UpdateUser(self, request: auth_pb2.UpdateUserRequest, context: Context) -> auth_pb2.User:
        user = request.user
        user_id = validation.required(user.user_id, "user.user_id", max_length=64)
        fields = validation.update_mask(
            list(request.update_mask.paths), ("email", "display_name", "roles", "disabled")
        )
        changes = UserChanges(
            email=user.email[: validation.MAX_TEXT] if "email" in fields else None,
            display_name=user.display_name[: validation.MAX_TEXT] if "display_name" in fields else None,
            roles=_roles(user.roles, "user.roles", rbac.HUMAN_ROLES) if "roles" in fields else None,
            disabled=user.disabled if "disabled" in fields else None,
        )
        return user_message(await self.authority.update_user(caller_of(context), user_id, changes))

    @_rpc
    async def DeleteUser(self, request: auth_pb2.DeleteUserRequest, context: Context) -> empty_pb2.Empty:
        await self.authority.delete_user(
            caller_of(context), validation.required(request.user_id, "user_id", max_length=64)
        )
        return empty_pb2.Empty()

    @_rpc
    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.authority.change_password(
            caller_of(context),
            request.user_id,
            request.current_password,
            validation.password(request.new_password, "new_password"),
        )
        return empty_pb2.Empty()

    @_rpc
    async def UnlockUser(self, request: auth_pb2.UnlockUserRequest, context: Context) -> auth_pb2.User:
        user_id = validation.required(request.user_id, "user_id", max_length=64)
        return user_message(await self.authority.unlock_user(caller_of(context), user_id))

    @_rpc
    async def ListRoles(
        self, request: auth_pb2.ListRolesRequest, context: Context
    ) -> auth_pb2.ListRolesResponse:
        return auth_pb2.ListRolesResponse(
            roles=[
                auth_pb2.RoleInfo(
                    role=role_number(role),
                    name=role,
                    description=ROLE_DESCRIPTIONS[role],
                    permissions=sorted(ROLE_PERMISSIONS[role]),
                )
                for role in ROLES
            ]
        )

    @_rpc
    async def ListPermissions(
        self, request: auth_pb2.ListPermissionsRequest, context: Context
    ) -> auth_pb2.ListPermissionsResponse:
        permissions = []
        for name in sorted(PERMISSIONS):
            methods, routes = routes_requiring(name)
            permissions.append(
                auth_pb2.Permission(
                    name=name,
                    description=PERMISSIONS[name].description,
                    roles=[role_number(r) for r in ROLES if name in ROLE_PERMISSIONS[r]],
                    grpc_methods=methods,
                    http_routes=routes,
                )
            )
        return auth_pb2.ListPermissionsResponse(permissions=permissions)

    # -- TOTP ------------------------------------------------------------------------------------------------

    @_rpc
    async def EnrollTotp(
        self, request: auth_pb2.EnrollTotpRequest, context: Context
    ) -> auth_pb2.TotpEnrollment:
        enrollment = await self.authority.enroll_totp(caller_of(context))
        message = auth_pb2.TotpEnrollment(
            otpauth_uri=enrollment.otpauth_uri,
            secret_base32=enrollment.secret_base32,
            qr_code_png=enrollment.qr_png,
        )
        message.expire_time.FromDatetime(enrollment.expires_at)
        return message

    @_rpc
    async def ConfirmTotp(
        self, request: auth_pb2.ConfirmTotpRequest, context: Context
    ) -> auth_pb2.ConfirmTotpResponse:
        codes = await self.authority.confirm_totp(
            caller_of(context), validation.required(request.code, "code", max_length=16)
        )
        return auth_pb2.ConfirmTotpResponse(recovery_codes=codes)

    @_rpc
    async def DisableTotp(self, request: auth_pb2.DisableTotpRequest, context: Context) -> empty_pb2.Empty:
        await self.authority.disable_totp(caller_of(context), request.user_id, request.code.strip())
        return empty_pb2.Empty()

    # -- devices ---------------------------------------------------------------------------------------------

    @_rpc
    async def RegisterDevice(
        self, request: auth_pb2.RegisterDeviceRequest, context: Context
    ) -> auth_pb2.RegisterDeviceResponse:
        device = request.device
        kind = _DEVICE_KINDS.get(device.kind)
        if kind is None:
            raise InvalidArgument(
                "device.kind", "is required (DEVICE_KIND_CAMERA or DEVICE_KIND_TELEMETRY_UNIT)"
            )
        registered, credentials = await self.authority.register_device(
            caller_of(context),
            device_id=validation.identifier(device.device_id, "device.device_id"),
            kind=kind,
            name=validation.required(device.name, "device.name"),
            labels=validation.labels(device.labels, "device.labels"),
        )
        return auth_pb2.RegisterDeviceResponse(
            device=device_message(registered), credentials=credentials_message(credentials)
        )

    @_rpc
    async def GetDevice(self, request: auth_pb2.GetDeviceRequest, context: Context) -> auth_pb2.Device:
        return device_message(
            await self.authority.get_device(validation.identifier(request.device_id, "device_id"))
        )

    @_rpc
    async def ListDevices(
        self, request: auth_pb2.ListDevicesRequest, context: Context
    ) -> auth_pb2.ListDevicesResponse:
        kind = _DEVICE_KINDS.get(request.kind) if request.kind else None
        if request.kind and kind is None:
            raise InvalidArgument("kind", "is not a device kind")
        page = await self.authority.list_devices(
            page_size=validation.page_size(request.page_size),
            page_token=request.page_token,
            kind=kind,
            labels=validation.labels(request.labels, "labels"),
            include_disabled=request.include_disabled,
        )
        return auth_pb2.ListDevicesResponse(
            devices=[device_message(d) for d in page.items], next_page_token=page.next_page_token
        )

    @_rpc
    async def UpdateDevice(self, request: auth_pb2.UpdateDeviceRequest, context: Context) -> auth_pb2.Device:
        device = request.device
        device_id = validation.identifier(device.device_id, "device.device_id")
        fields = validation.update_mask(list(request.update_mask.paths), ("name", "labels", "disabled"))
        changes = DeviceChanges(
            name=validation.required(device.name, "device.name") if "name" in fields else None,
            labels=validation.labels(device.labels, "device.labels") if "labels" in fields else None,
            disabled=device.disabled if "disabled" in fields else None,
        )
        return device_message(await self.authority.update_device(caller_of(context), device_id, changes))

    @_rpc
    async def DeleteDevice(self, request: auth_pb2.DeleteDeviceRequest, context: Context) -> empty_pb2.Empty:
        await self.authority.delete_device(
            caller_of(context), validation.identifier(request.device_id, "device_id")
        )
        return empty_pb2.Empty()

    @_rpc
    async def RotateDeviceCredentials(
        self, request: auth_pb2.RotateDeviceCredentialsRequest, context: Context
    ) -> auth_pb2.DeviceCredentials:
        if not (request.rotate_api_key or request.rotate_hmac_secret):
            raise InvalidArgument("rotate_api_key", "set rotate_api_key and/or rotate_hmac_secret")
        grace: timedelta | None = None
        if request.HasField("previous_secret_grace"):
            grace = request.previous_secret_grace.ToTimedelta()
            if grace < timedelta(0) or grace > timedelta(days=7):
                raise InvalidArgument("previous_secret_grace", "must be between 0 and 7 days")
        credentials = await self.authority.rotate_device_credentials(
            caller_of(context),
            validation.identifier(request.device_id, "device_id"),
            rotate_api_key=request.rotate_api_key,
            rotate_hmac_secret=request.rotate_hmac_secret,
            grace=grace,
        )
        return credentials_message(credentials)

    @_rpc
    async def GetDeviceSecret(
        self, request: auth_pb2.GetDeviceSecretRequest, context: Context
    ) -> auth_pb2.DeviceSecret:
        secret = await self.authority.get_device_secret(
            caller_of(context), validation.identifier(request.device_id, "device_id"), request.key_id[:64]
        )
        message = auth_pb2.DeviceSecret(
            device_id=secret.device_id,
            key_id=secret.key_id,
            hmac_secret=secret.hmac_secret,
            device_disabled=secret.device_disabled,
        )
        stamp = _timestamp(secret.expires_at)
        if stamp is not None:
            message.expire_time.CopyFrom(stamp)
        return message

    # -- service accounts ------------------------------------------------------------------------------------

    @_rpc
    async def CreateServiceAccount(
        self, request: auth_pb2.CreateServiceAccountRequest, context: Context
    ) -> auth_pb2.CreateServiceAccountResponse:
        account = request.service_account
        roles = (
            _roles(account.roles, "service_account.roles", rbac.ACCOUNT_ROLES)
            if account.roles
            else ("service",)
        )
        created, secret = await self.authority.create_service_account(
            caller_of(context),
            service_account_id=validation.identifier(
                account.service_account_id, "service_account.service_account_id"
            ),
            description=account.description[: validation.MAX_TEXT],
            roles=roles,
        )
        return auth_pb2.CreateServiceAccountResponse(
            service_account=account_message(created), client_secret=secret
        )

    @_rpc
    async def ListServiceAccounts(
        self, request: auth_pb2.ListServiceAccountsRequest, context: Context
    ) -> auth_pb2.ListServiceAccountsResponse:
        page = await self.authority.list_service_accounts(
            page_size=validation.page_size(request.page_size), page_token=request.page_token
        )
        return auth_pb2.ListServiceAccountsResponse(
            service_accounts=[account_message(a) for a in page.items], next_page_token=page.next_page_token
        )

    @_rpc
    async def DeleteServiceAccount(
        self, request: auth_pb2.DeleteServiceAccountRequest, context: Context
    ) -> empty_pb2.Empty:
        account_id = validation.identifier(request.service_account_id, "service_account_id")
        await self.authority.delete_service_account(caller_of(context), account_id)
        return empty_pb2.Empty()

    # -- audit -----------------------------------------------------------------------------------------------

    @_rpc
    async def ListAuditEvents(
        self, request: auth_pb2.ListAuditEventsRequest, context: Context
    ) -> auth_pb2.ListAuditEventsResponse:
        start = end = None
        if request.HasField("time_range"):
            if request.time_range.HasField("start_time"):
                start = request.time_range.start_time.ToDatetime(tzinfo=UTC)
            if request.time_range.HasField("end_time"):
                end = request.time_range.end_time.ToDatetime(tzinfo=UTC)
            if start is not None and end is not None and end <= start:
                raise InvalidArgument("time_range.end_time", "must be after start_time")
        actions = []
        for number in request.actions:
            name = auth_pb2.AuditAction.Name(number) if number in auth_pb2.AuditAction.values() else ""
            action = name.removeprefix("AUDIT_ACTION_")
            if action not in AUDIT_ACTIONS:
                raise InvalidArgument("actions", f"{number} is not an audit action")
            actions.append(action)
        page = await self.authority.list_audit_events(
            AuditQuery(
                start=start,
                end=end,
                actions=tuple(actions),
                actor=request.actor[: validation.MAX_TEXT],
                target=request.target[: validation.MAX_TEXT],
                failures_only=request.failures_only,
                newest_first=request.order != common_pb2.SORT_ORDER_OLDEST_FIRST,
                page_size=validation.page_size(request.page_size),
                page_token=request.page_token,
            )
        )
        return auth_pb2.ListAuditEventsResponse(
            audit_events=[audit_message(e) for e in page.items], next_page_token=page.next_page_token
        )
