"""Domain values of the auth service, as the store returns them and the fronts translate them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from mesh.interceptors import Principal

DeviceKind = Literal["camera", "telemetry_unit"]
T = TypeVar("T")

AUDIT_ACTIONS = (
    "LOGIN_SUCCEEDED",
    "LOGIN_FAILED",
    "ACCOUNT_LOCKED",
    "ACCOUNT_UNLOCKED",
    "MFA_ENABLED",
    "MFA_DISABLED",
    "RECOVERY_CODE_USED",
    "TOKEN_REFRESHED",
    "REFRESH_TOKEN_REUSE_DETECTED",
    "TOKEN_REVOKED",
    "CLIENT_CREDENTIALS_GRANT",
    "USER_CREATED",
    "USER_UPDATED",
    "USER_DELETED",
    "ROLES_CHANGED",
    "PASSWORD_CHANGED",
    "SIGNING_KEY_ROTATED",
    "DEVICE_REGISTERED",
    "DEVICE_UPDATED",
    "DEVICE_DELETED",
    "DEVICE_CREDENTIALS_ROTATED",
    "DEVICE_SECRET_READ",
    "SERVICE_ACCOUNT_CREATED",
    "SERVICE_ACCOUNT_DELETED",
    "ADMIN_BOOTSTRAPPED",
)
"""Audit actions; the names of the proto's AuditAction values without the ``AUDIT_ACTION_`` prefix."""


@dataclass(frozen=True, slots=True)
class User:
    """A human user. The credential fields never leave the service."""

    user_id: str
    username: str
    roles: tuple[str, ...]
    email: str = ""
    display_name: str = ""
    disabled: bool = False
    mfa_enabled: bool = False
    failed_login_count: int = 0
    locked_until: datetime | None = None
    last_login_at: datetime | None = None
    password_changed_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    password_hash: str = field(default="", repr=False)
    totp_secret_enc: bytes | None = field(default=None, repr=False)
    totp_pending_enc: bytes | None = field(default=None, repr=False)
    totp_pending_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class UserChanges:
    """Fields UpdateUser may change; None = leave as is."""

    email: str | None = None
    display_name: str | None = None
    roles: tuple[str, ...] | None = None
    disabled: bool | None = None


@dataclass(frozen=True, slots=True)
class RefreshTokenRecord:
    """One issued refresh token (stored by digest)."""

    token_hash: str
    family_id: str
    user_id: str
    scope: str | None
    created_at: datetime
    expires_at: datetime
    access_jti: str
    access_expires_at: datetime
    rotated_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """A registered camera or telemetry unit (never its secrets)."""

    device_id: str
    kind: DeviceKind
    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    disabled: bool = False
    api_key_prefix: str = ""
    hmac_key_id: str = ""
    created_by: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_token_at: datetime | None = None
    api_key_hash: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class DeviceChanges:
    """Fields UpdateDevice may change; None = leave as is."""

    name: str | None = None
    labels: Mapping[str, str] | None = None
    disabled: bool | None = None


@dataclass(frozen=True, slots=True)
class DeviceSecretRecord:
    """One HMAC secret of a device, sealed."""

    device_id: str
    key_id: str
    secret_enc: bytes = field(repr=False)
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """Credentials shown once: a new API key and/or HMAC secret."""

    api_key: str = field(default="", repr=False)
    hmac_key_id: str = ""
    hmac_secret: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class DeviceSecret:
    """A device's HMAC secret in clear, for the streaming service."""

    device_id: str
    key_id: str
    hmac_secret: bytes = field(repr=False)
    expires_at: datetime | None
    device_disabled: bool


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """An account an internal service obtains service tokens with."""

    service_account_id: str
    roles: tuple[str, ...]
    description: str = ""
    disabled: bool = False
    secret_prefix: str = ""
    created_at: datetime | None = None
    last_token_at: datetime | None = None
    secret_hash: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit log entry; ``details`` never hold secrets."""

    audit_event_id: str
    event_time: datetime
    action: str
    success: bool
    actor: str = ""
    actor_type: str = ""
    target: str = ""
    source_ip: str = ""
    user_agent: str = ""
    trace_id: str = ""
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters and page of ListAuditEvents."""

    start: datetime | None = None
    end: datetime | None = None
    actions: tuple[str, ...] = ()
    actor: str = ""
    target: str = ""
    failures_only: bool = False
    newest_first: bool = True
    page_size: int = 100
    page_token: str = ""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing and the token of the next (empty on the last page)."""

    items: tuple[T, ...]
    next_page_token: str = ""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a request and from where: what the audit log and the lockout need."""

    principal: Principal
    source_ip: str = ""
    user_agent: str = ""
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    """An access token and, for logins and refreshes, a refresh token."""

    access_token: str = field(repr=False)
    expires_in_s: int
    scope: str
    subject: str
    subject_type: str
    roles: tuple[str, ...]
    refresh_token: str = field(default="", repr=False)
    refresh_expires_in_s: int = 0


@dataclass(frozen=True, slots=True)
class TotpEnrollment:
    """A pending TOTP enrollment."""

    otpauth_uri: str = field(repr=False)
    secret_base32: str = field(repr=False)
    expires_at: datetime
    qr_png: bytes = b""


@dataclass(frozen=True, slots=True)
class Introspection:
    """What IntrospectToken reports."""

    active: bool
    inactive_reason: str = ""
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    kid: str = ""
    permissions: frozenset[str] = frozenset()
    permission_granted: bool = False
