"""The auth service's SQL (schema ``auth``): parameterised queries and row ↔ domain mapping, nothing else.

``AuthStore`` runs on a pool; ``transaction()`` yields a store bound to one connection inside a
transaction. Driver errors are translated here: a unique violation becomes ``AlreadyExists``, a lost
connection ``Unavailable``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from mesh.pg_pool import DATABASE_DOWN
from services.auth.errors import AlreadyExists, InvalidArgument, Unavailable
from services.auth.keys import KeyState, SigningKeyRecord
from services.auth.model import (
    AuditEvent,
    AuditQuery,
    Device,
    DeviceChanges,
    DeviceKind,
    DeviceSecretRecord,
    Page,
    RefreshTokenRecord,
    ServiceAccount,
    User,
    UserChanges,
)

Executor = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy

# Any constant works; every auth instance must use the same one.
_KEYS_LOCK: Final = 0x17_5_A07
_BOOTSTRAP_LOCK: Final = 0x17_5_A08

_DEVICE_SELECT: Final = """SELECT d.*, (SELECT s.key_id FROM auth.device_secrets s
        WHERE s.device_id = d.device_id AND s.expires_at IS NULL
        ORDER BY s.created_at DESC LIMIT 1) AS hmac_key_id
    FROM auth.devices d"""

_AUDIT_FILTER: Final = """SELECT * FROM auth.audit_events
    WHERE ($1::timestamptz IS NULL OR event_time >= $1)
      AND ($2::timestamptz IS NULL OR event_time < $2)
      AND (cardinality($3::text[]) = 0 OR action = ANY($3))
      AND ($4 = '' OR actor = $4)
      AND ($5 = '' OR target = $5)
      AND (NOT $6 OR NOT success)"""
_AUDIT_NEWEST_FIRST: Final = (
    _AUDIT_FILTER
    + """ AND ($7::timestamptz IS NULL OR (event_time, audit_event_id) < ($7, $8::uuid))
    ORDER BY event_time DESC, audit_event_id DESC LIMIT $9"""
)
_AUDIT_OLDEST_FIRST: Final = (
    _AUDIT_FILTER
    + """ AND ($7::timestamptz IS NULL OR (event_time, audit_event_id) > ($7, $8::uuid))
    ORDER BY event_time, audit_event_id LIMIT $9"""
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def open_pool(database_url: str) -> asyncpg.Pool:
    """A small pool with JSON codecs for the auth schema."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=10, init=_init_connection, command_timeout=10
    )
    return pool


def encode_page_token(key: Sequence[str]) -> str:
    """An opaque page token for the last row's sort key."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_page_token(token: str, parts: int) -> list[str] | None:
    """The sort key a page token carries; None for the first page; InvalidArgument if it is not ours."""
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError as exc:
        raise InvalidArgument("page_token", "is not a token this service issued") from exc
    if not (isinstance(key, list) and len(key) == parts and all(isinstance(k, str) for k in key)):
        raise InvalidArgument("page_token", "is not a token this service issued")
    return key


def _user(row: asyncpg.Record) -> User:
    return User(
        user_id=str(row["user_id"]),
        username=row["username"],
        roles=tuple(row["roles"]),
        email=row["email"],
        display_name=row["display_name"],
        disabled=row["disabled"],
        mfa_enabled=row["mfa_enabled"],
        failed_login_count=row["failed_login_count"],
        locked_until=row["locked_until"],
        last_login_at=row["last_login_at"],
        password_changed_at=row["password_changed_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        password_hash=row["password_hash"],
        totp_secret_enc=row["totp_secret_enc"],
        totp_pending_enc=row["totp_pending_enc"],
        totp_pending_until=row["totp_pending_until"],
    )


def _device(row: asyncpg.Record) -> Device:
    return Device(
        device_id=row["device_id"],
        kind=row["kind"],
        name=row["name"],
        labels=dict(row["labels"] or {}),
        disabled=row["disabled"],
        api_key_prefix=row["api_key_prefix"],
        hmac_key_id=row["hmac_key_id"] or "",
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_token_at=row["last_token_at"],
        api_key_hash=row["api_key_hash"],
    )


def _account(row: asyncpg.Record) -> ServiceAccount:
    return ServiceAccount(
        service_account_id=row["service_account_id"],
        roles=tuple(row["roles"]),
        description=row["description"],
        disabled=row["disabled"],
        secret_prefix=row["secret_prefix"],
        created_at=row["created_at"],
        last_token_at=row["last_token_at"],
        secret_hash=row["secret_hash"],
    )


def _signing_key(row: asyncpg.Record) -> SigningKeyRecord:
    state: KeyState = row["state"]
    return SigningKeyRecord(
        kid=row["kid"],
        state=state,
        public_jwk=dict(row["public_jwk"]),
        created_at=row["created_at"],
        deactivated_at=row["deactivated_at"],
        retire_at=row["retire_at"],
        alg=row["alg"],
    )


def _refresh(row: asyncpg.Record) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        token_hash=row["token_hash"],
        family_id=str(row["family_id"]),
        user_id=str(row["user_id"]),
        scope=row["scope"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        access_jti=row["access_jti"],
        access_expires_at=row["access_expires_at"],
        rotated_at=row["rotated_at"],
        revoked_at=row["revoked_at"],
    )


def _audit(row: asyncpg.Record) -> AuditEvent:
    return AuditEvent(
        audit_event_id=str(row["audit_event_id"]),
        event_time=row["event_time"],
        action=row["action"],
        success=row["success"],
        actor=row["actor"],
        actor_type=row["actor_type"],
        target=row["target"],
        source_ip=row["source_ip"],
        user_agent=row["user_agent"],
        trace_id=row["trace_id"],
        details=dict(row["details"] or {}),
    )


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


class AuthStore:
    """Queries of the auth schema, on a pool or (inside ``transaction()``) one connection."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AuthStore]:
        """A store whose queries run in one transaction, committed when the block ends without error."""
        if isinstance(self._db, asyncpg.Connection | PoolConnectionProxy):
            async with self._db.transaction():
                yield self
            return
        try:
            async with self._db.acquire() as conn, conn.transaction():
                yield AuthStore(conn)
        except DATABASE_DOWN as exc:
            raise Unavailable("the auth database is unreachable") from exc

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return await self._db.fetch(query, *args)
        except asyncpg.UniqueViolationError:
            raise
        except DATABASE_DOWN as exc:
            raise Unavailable("the auth database is unreachable") from exc

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        rows = await self._fetch(query, *args)
        return rows[0] if rows else None

    async def _execute(self, query: str, *args: Any) -> str:
        try:
            return await self._db.execute(query, *args)
        except DATABASE_DOWN as exc:
            raise Unavailable("the auth database is unreachable") from exc

    # -- locks (inside a transaction) ------------------------------------------------------------------------

    async def lock_signing_keys(self) -> None:
        """Serialise key creation and rotation across auth instances until the transaction ends."""
        await self._execute("SELECT pg_advisory_xact_lock($1)", _KEYS_LOCK)

    async def lock_bootstrap(self) -> None:
        """Serialise the first-start admin creation across auth instances until the transaction ends."""
        await self._execute("SELECT pg_advisory_xact_lock($1)", _BOOTSTRAP_LOCK)

    # -- signing keys ----------------------------------------------------------------------------------------

    async def list_signing_keys(self, *, include_retired: bool = True) -> list[SigningKeyRecord]:
        """Signing keys, newest first."""
        rows = await self._fetch(
            """SELECT kid, alg, state, public_jwk, created_at, deactivated_at, retire_at
               FROM auth.signing_keys
               WHERE $1 OR state <> 'retired'
               ORDER BY created_at DESC""",
            include_retired,
        )
        return [_signing_key(r) for r in rows]

    async def active_signing_key(self) -> tuple[SigningKeyRecord, bytes] | None:
        """The key that signs now and its sealed private half."""
        row = await self._fetchrow(
            """SELECT kid, alg, state, public_jwk, created_at, deactivated_at, retire_at, private_key_enc
               FROM auth.signing_keys WHERE state = 'active'"""
        )
        return None if row is None else (_signing_key(row), bytes(row["private_key_enc"]))

    async def add_signing_key(
        self,
        kid: str,
        public_jwk: Mapping[str, str],
        private_key_enc: bytes,
        now: datetime,
        retire_at: datetime,
    ) -> SigningKeyRecord:
        """Make a new key the active one; the previous active key becomes verify-only until ``retire_at``.

        Call inside a transaction after ``lock_signing_keys``.
        """
        await self._execute(
            """UPDATE auth.signing_keys SET state = 'verify_only', deactivated_at = $1, retire_at = $2
               WHERE state = 'active'""",
            now,
            retire_at,
        )
        row = await self._fetchrow(
            """INSERT INTO auth.signing_keys (kid, alg, state, private_key_enc, public_jwk, created_at)
               VALUES ($1, 'RS256', 'active', $2, $3, $4)
               RETURNING kid, alg, state, public_jwk, created_at, deactivated_at, retire_at""",
            kid,
            private_key_enc,
            dict(public_jwk),
            now,
        )
        assert row is not None  # INSERT … RETURNING always returns the row
        return _signing_key(row)

    async def retire_signing_keys(self, now: datetime) -> list[str]:
        """Mark verify-only keys past their retire time as retired; returns their kids."""
        rows = await self._fetch(
            """UPDATE auth.signing_keys SET state = 'retired'
               WHERE state = 'verify_only' AND retire_at <= $1 RETURNING kid""",
            now,
        )
        return [r["kid"] for r in rows]

    # -- users -----------------------------------------------------------------------------------------------

    async def any_user_with_role(self, role: str, *, except_user: str | None = None) -> bool:
        """Whether some enabled user (other than ``except_user``) holds ``role``."""
        row = await self._fetchrow(
            """SELECT 1 FROM auth.users
               WHERE $1 = ANY(roles) AND NOT disabled AND ($2::uuid IS NULL OR user_id <> $2) LIMIT 1""",
            role,
            None if except_user is None else uuid.UUID(except_user),
        )
        return row is not None

    async def create_user(
        self,
        *,
        username: str,
        roles: Sequence[str],
        password_hash: str,
        email: str = "",
        display_name: str = "",
        now: datetime,
    ) -> User:
        """Insert a user; ``AlreadyExists`` if the username is taken."""
        try:
            row = await self._fetchrow(
                """INSERT INTO auth.users (user_id, username, email, display_name, roles, password_hash,
                        password_changed_at, created_at, updated_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7)
                    RETURNING *""",
                uuid.uuid4(),
                username,
                email,
                display_name,
                list(roles),
                password_hash,
                now,
            )
        except asyncpg.UniqueViolationError as exc:
            raise AlreadyExists("user", username) from exc
        assert row is not None  # INSERT … RETURNING always returns the row
        return _user(row)

    async def get_user(self, user_id: str) -> User | None:
        """The user with ``user_id`` (None if there is none or the id is not a UUID)."""
        key = _uuid(user_id)
        if key is None:
            return None
        row = await self._fetchrow("SELECT * FROM auth.users WHERE user_id = $1", key)
        return None if row is None else _user(row)

    async def get_user_by_username(self, username: str) -> User | None:
        """The user named ``username``."""
        row = await self._fetchrow("SELECT * FROM auth.users WHERE username = $1", username)
        return None if row is None else _user(row)

    async def list_users(
        self, *, page_size: int, page_token: str, role: str | None, include_disabled: bool
    ) -> Page[User]:
        """Users ordered by username."""
        after = decode_page_token(page_token, 1)
        rows = await self._fetch(
            """SELECT * FROM auth.users
                WHERE ($1::text IS NULL OR username > $1)
                  AND ($2::text IS NULL OR $2 = ANY(roles))
                  AND ($3 OR NOT disabled)
                ORDER BY username LIMIT $4""",
            after[0] if after else None,
            role,
            include_disabled,
            page_size + 1,
        )
        users = [_user(r) for r in rows[:page_size]]
        token = encode_page_token([users[-1].username]) if len(rows) > page_size else ""
        return Page(tuple(users), token)

    async def update_user(self, user_id: str, changes: UserChanges, now: datetime) -> User | None:
        """Apply ``changes``; None if the user does not exist."""
        key = _uuid(user_id)
        if key is None:
            return None
        row = await self._fetchrow(
            """UPDATE auth.users SET
                    email = COALESCE($2, email),
                    display_name = COALESCE($3, display_name),
                    roles = COALESCE($4, roles),
                    disabled = COALESCE($5, disabled),
                    updated_at = $6
                WHERE user_id = $1 RETURNING *""",
            key,
            changes.email,
            changes.display_name,
            None if changes.roles is None else list(changes.roles),
            changes.disabled,
            now,
        )
        return None if row is None else _user(row)

    async def delete_user(self, user_id: str) -> bool:
        """Delete a user (their refresh tokens and recovery codes go with them)."""
        key = _uuid(user_id)
        if key is None:
            return False
        return await self._execute("DELETE FROM auth.users WHERE user_id = $1", key) == "DELETE 1"

    async def record_login_failure(self, user_id: str, now: datetime) -> int:
        """Count one more failed login; returns the count in a row."""
        row = await self._fetchrow(
            """UPDATE auth.users SET failed_login_count = failed_login_count + 1, updated_at = $2
               WHERE user_id = $1 RETURNING failed_login_count""",
            uuid.UUID(user_id),
            now,
        )
        return int(row["failed_login_count"]) if row is not None else 0

    async def lock_user(self, user_id: str, until: datetime) -> None:
        """Lock the account until ``until``."""
        await self._execute(
            "UPDATE auth.users SET locked_until = $2 WHERE user_id = $1", uuid.UUID(user_id), until
        )

    async def record_login_success(self, user_id: str, now: datetime) -> None:
        """Reset the failure count and remember the login time."""
        await self._execute(
            """UPDATE auth.users SET failed_login_count = 0, locked_until = NULL, last_login_at = $2
               WHERE user_id = $1""",
            uuid.UUID(user_id),
            now,
        )

    async def unlock_user(self, user_id: str, now: datetime) -> User | None:
        """Lift a lockout and reset the failure count."""
        key = _uuid(user_id)
        if key is None:
            return None
        row = await self._fetchrow(
            """UPDATE auth.users SET failed_login_count = 0, locked_until = NULL, updated_at = $2
                WHERE user_id = $1 RETURNING *""",
            key,
            now,
        )
        return None if row is None else _user(row)

    async def set_password(self, user_id: str, password_hash: str, now: datetime) -> None:
        """Replace the password hash."""
        await self._execute(
            """UPDATE auth.users SET password_hash = $2, password_changed_at = $3, updated_at = $3
               WHERE user_id = $1""",
            uuid.UUID(user_id),
            password_hash,
            now,
        )

    async def set_totp_pending(self, user_id: str, secret_enc: bytes, until: datetime) -> None:
        """Store a TOTP secret awaiting confirmation."""
        await self._execute(
            "UPDATE auth.users SET totp_pending_enc = $2, totp_pending_until = $3 WHERE user_id = $1",
            uuid.UUID(user_id),
            secret_enc,
            until,
        )

    async def enable_totp(
        self, user_id: str, secret_enc: bytes, recovery_hmacs: Sequence[str], now: datetime
    ) -> None:
        """Turn MFA on with ``secret_enc`` and replace the recovery codes (call inside a transaction)."""
        key = uuid.UUID(user_id)
        await self._execute(
            """UPDATE auth.users SET mfa_enabled = true, totp_secret_enc = $2, totp_pending_enc = NULL,
                   totp_pending_until = NULL, updated_at = $3
               WHERE user_id = $1""",
            key,
            secret_enc,
            now,
        )
        await self._execute("DELETE FROM auth.recovery_codes WHERE user_id = $1", key)
        await self._db.executemany(
            "INSERT INTO auth.recovery_codes (user_id, code_hmac, created_at) VALUES ($1, $2, $3)",
            [(key, code, now) for code in recovery_hmacs],
        )

    async def disable_totp(self, user_id: str, now: datetime) -> None:
        """Turn MFA off and forget the secret and recovery codes (call inside a transaction)."""
        key = uuid.UUID(user_id)
        await self._execute(
            """UPDATE auth.users SET mfa_enabled = false, totp_secret_enc = NULL, totp_pending_enc = NULL,
                   totp_pending_until = NULL, updated_at = $2
               WHERE user_id = $1""",
            key,
            now,
        )
        await self._execute("DELETE FROM auth.recovery_codes WHERE user_id = $1", key)

    async def use_recovery_code(self, user_id: str, code_hmac: str, now: datetime) -> bool:
        """Mark an unused recovery code used; False if there is no such unused code."""
        row = await self._fetchrow(
            """UPDATE auth.recovery_codes SET used_at = $3
               WHERE user_id = $1 AND code_hmac = $2 AND used_at IS NULL RETURNING 1""",
            uuid.UUID(user_id),
            code_hmac,
            now,
        )
        return row is not None

    async def unused_recovery_codes(self, user_id: str) -> int:
        """How many recovery codes the user has left."""
        row = await self._fetchrow(
            "SELECT count(*) AS n FROM auth.recovery_codes WHERE user_id = $1 AND used_at IS NULL",
            uuid.UUID(user_id),
        )
        return int(row["n"]) if row is not None else 0

    # -- refresh tokens --------------------------------------------------------------------------------------

    async def add_refresh_token(self, record: RefreshTokenRecord) -> None:
        """Store a newly issued refresh token."""
        await self._execute(
            """INSERT INTO auth.refresh_tokens (token_hash, family_id, user_id, scope, created_at, expires_at,
                   access_jti, access_expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            record.token_hash,
            uuid.UUID(record.family_id),
            uuid.UUID(record.user_id),
            record.scope,
            record.created_at,
            record.expires_at,
            record.access_jti,
            record.access_expires_at,
        )

    async def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        """The refresh token stored under ``token_hash``."""
        row = await self._fetchrow("SELECT * FROM auth.refresh_tokens WHERE token_hash = $1", token_hash)
        return None if row is None else _refresh(row)

    async def mark_rotated(self, token_hash: str, now: datetime) -> bool:
        """Mark a live refresh token used; False if it was already used or revoked (atomic)."""
        row = await self._fetchrow(
            """UPDATE auth.refresh_tokens SET rotated_at = $2
               WHERE token_hash = $1 AND rotated_at IS NULL AND revoked_at IS NULL RETURNING 1""",
            token_hash,
            now,
        )
        return row is not None

    async def revoke_families(
        self,
        *,
        now: datetime,
        family_id: str | None = None,
        user_id: str | None = None,
        keep_family: str | None = None,
    ) -> list[tuple[str, datetime]]:
        """Revoke one family, or every family of a user (except ``keep_family``).

        Returns the ``(jti, exp)`` of access tokens issued with them that have not expired yet, so they can
        join the revocation list too.
        """
        rows = await self._fetch(
            """UPDATE auth.refresh_tokens SET revoked_at = COALESCE(revoked_at, $1)
               WHERE ($2::uuid IS NULL OR family_id = $2)
                 AND ($3::uuid IS NULL OR user_id = $3)
                 AND ($4::uuid IS NULL OR family_id <> $4)
                 AND ($2::uuid IS NOT NULL OR $3::uuid IS NOT NULL)
               RETURNING access_jti, access_expires_at""",
            now,
            None if family_id is None else uuid.UUID(family_id),
            None if user_id is None else uuid.UUID(user_id),
            None if keep_family is None else uuid.UUID(keep_family),
        )
        return [(r["access_jti"], r["access_expires_at"]) for r in rows if r["access_expires_at"] > now]

    # -- devices ---------------------------------------------------------------------------------------------

    async def create_device(
        self,
        *,
        device_id: str,
        kind: DeviceKind,
        name: str,
        labels: Mapping[str, str],
        api_key_hash: str,
        api_key_prefix: str,
        created_by: str,
        hmac_key_id: str,
        hmac_secret_enc: bytes,
        now: datetime,
    ) -> Device:
        """Insert a device with its first API key and HMAC secret (call inside a transaction)."""
        try:
            await self._execute(
                """INSERT INTO auth.devices (device_id, kind, name, labels, api_key_hash, api_key_prefix,
                       created_by, created_at, updated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)""",
                device_id,
                kind,
                name,
                dict(labels),
                api_key_hash,
                api_key_prefix,
                created_by,
                now,
            )
        except asyncpg.UniqueViolationError as exc:
            raise AlreadyExists("device", device_id) from exc
        await self.add_device_secret(
            device_id, hmac_key_id, hmac_secret_enc, now=now, previous_expires_at=None
        )
        device = await self.get_device(device_id)
        assert device is not None  # inserted just above in the same transaction
        return device

    async def get_device(self, device_id: str) -> Device | None:
        """The device with ``device_id``."""
        row = await self._fetchrow(_DEVICE_SELECT + " WHERE d.device_id = $1", device_id)
        return None if row is None else _device(row)

    async def list_devices(
        self,
        *,
        page_size: int,
        page_token: str,
        kind: DeviceKind | None,
        labels: Mapping[str, str],
        include_disabled: bool,
    ) -> Page[Device]:
        """Devices ordered by device_id."""
        after = decode_page_token(page_token, 1)
        rows = await self._fetch(
            _DEVICE_SELECT
            + """
                WHERE ($1::text IS NULL OR d.device_id > $1)
                  AND ($2::text IS NULL OR d.kind = $2)
                  AND d.labels @> $3::jsonb
                  AND ($4 OR NOT d.disabled)
                ORDER BY d.device_id LIMIT $5""",
            after[0] if after else None,
            kind,
            dict(labels),
            include_disabled,
            page_size + 1,
        )
        devices = [_device(r) for r in rows[:page_size]]
        token = encode_page_token([devices[-1].device_id]) if len(rows) > page_size else ""
        return Page(tuple(devices), token)

    async def update_device(self, device_id: str, changes: DeviceChanges, now: datetime) -> Device | None:
        """Apply ``changes``; None if the device does not exist."""
        row = await self._fetchrow(
            """UPDATE auth.devices SET
                   name = COALESCE($2, name),
                   labels = COALESCE($3::jsonb, labels),
                   disabled = COALESCE($4, disabled),
                   updated_at = $5
               WHERE device_id = $1 RETURNING device_id""",
            device_id,
            changes.name,
            None if changes.labels is None else dict(changes.labels),
            changes.disabled,
            now,
        )
        return None if row is None else await self.get_device(device_id)

    async def delete_device(self, device_id: str) -> bool:
        """Delete a device with its secrets."""
        return await self._execute("DELETE FROM auth.devices WHERE device_id = $1", device_id) == "DELETE 1"

    async def set_device_api_key(
        self, device_id: str, api_key_hash: str, api_key_prefix: str, now: datetime
    ) -> None:
        """Replace a device's API key (the old one stops working at once)."""
        await self._execute(
            """UPDATE auth.devices SET api_key_hash = $2, api_key_prefix = $3, updated_at = $4
               WHERE device_id = $1""",
            device_id,
            api_key_hash,
            api_key_prefix,
            now,
        )

    async def add_device_secret(
        self,
        device_id: str,
        key_id: str,
        secret_enc: bytes,
        *,
        now: datetime,
        previous_expires_at: datetime | None,
    ) -> None:
        """Make a new HMAC secret current; the previous current one expires at ``previous_expires_at``."""
        await self._execute(
            """UPDATE auth.device_secrets SET expires_at = COALESCE($2::timestamptz, $3::timestamptz)
               WHERE device_id = $1 AND expires_at IS NULL""",
            device_id,
            previous_expires_at,
            now,
        )
        await self._execute(
            """INSERT INTO auth.device_secrets (device_id, key_id, secret_enc, created_at)
               VALUES ($1, $2, $3, $4)""",
            device_id,
            key_id,
            secret_enc,
            now,
        )

    async def get_device_secret(self, device_id: str, key_id: str | None) -> DeviceSecretRecord | None:
        """The current secret (``key_id`` None) or the named one, expired or not."""
        row = await self._fetchrow(
            """SELECT device_id, key_id, secret_enc, created_at, expires_at FROM auth.device_secrets
               WHERE device_id = $1 AND (($2::text IS NULL AND expires_at IS NULL) OR key_id = $2)
               ORDER BY created_at DESC LIMIT 1""",
            device_id,
            key_id,
        )
        if row is None:
            return None
        return DeviceSecretRecord(
            device_id=row["device_id"],
            key_id=row["key_id"],
            secret_enc=bytes(row["secret_enc"]),
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        )

    async def touch_device(self, device_id: str, now: datetime) -> None:
        """Remember that the device obtained a token."""
        await self._execute("UPDATE auth.devices SET last_token_at = $2 WHERE device_id = $1", device_id, now)

    # -- service accounts ------------------------------------------------------------------------------------

    async def create_service_account(
        self,
        *,
        service_account_id: str,
        description: str,
        roles: Sequence[str],
        secret_hash: str,
        secret_prefix: str,
        now: datetime,
    ) -> ServiceAccount:
        """Insert a service account; ``AlreadyExists`` if the id is taken."""
        try:
            row = await self._fetchrow(
                """INSERT INTO auth.service_accounts (service_account_id, description, roles, secret_hash,
                       secret_prefix, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""",
                service_account_id,
                description,
                list(roles),
                secret_hash,
                secret_prefix,
                now,
            )
        except asyncpg.UniqueViolationError as exc:
            raise AlreadyExists("service account", service_account_id) from exc
        assert row is not None  # INSERT … RETURNING always returns the row
        return _account(row)

    async def get_service_account(self, service_account_id: str) -> ServiceAccount | None:
        """The service account with that id."""
        row = await self._fetchrow(
            "SELECT * FROM auth.service_accounts WHERE service_account_id = $1", service_account_id
        )
        return None if row is None else _account(row)

    async def list_service_accounts(self, *, page_size: int, page_token: str) -> Page[ServiceAccount]:
        """Service accounts ordered by id."""
        after = decode_page_token(page_token, 1)
        rows = await self._fetch(
            """SELECT * FROM auth.service_accounts WHERE ($1::text IS NULL OR service_account_id > $1)
               ORDER BY service_account_id LIMIT $2""",
            after[0] if after else None,
            page_size + 1,
        )
        accounts = [_account(r) for r in rows[:page_size]]
        token = encode_page_token([accounts[-1].service_account_id]) if len(rows) > page_size else ""
        return Page(tuple(accounts), token)

    async def delete_service_account(self, service_account_id: str) -> bool:
        """Delete a service account."""
        status = await self._execute(
            "DELETE FROM auth.service_accounts WHERE service_account_id = $1", service_account_id
        )
        return status == "DELETE 1"

    async def touch_service_account(self, service_account_id: str, now: datetime) -> None:
        """Remember that the account obtained a token."""
        await self._execute(
            "UPDATE auth.service_accounts SET last_token_at = $2 WHERE service_account_id = $1",
            service_account_id,
            now,
        )

    # -- audit log -------------------------------------------------------------------------------------------

    async def add_audit_event(self, event: AuditEvent) -> None:
        """Append one audit entry."""
        await self._execute(
            """INSERT INTO auth.audit_events (audit_event_id, event_time, action, success, actor, actor_type,
                   target, source_ip, user_agent, trace_id, details)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
            uuid.UUID(event.audit_event_id),
            event.event_time,
            event.action,
            event.success,
            event.actor,
            event.actor_type,
            event.target,
            event.source_ip,
            event.user_agent,
            event.trace_id,
            dict(event.details),
        )

    async def list_audit_events(self, query: AuditQuery) -> Page[AuditEvent]:
        """Audit entries matching ``query``, by event time (newest first unless asked otherwise)."""
        after = decode_page_token(query.page_token, 2)
        after_time = datetime.fromisoformat(after[0]) if after else None
        after_id = _uuid(after[1]) if after else None
        if after is not None and after_id is None:
            raise InvalidArgument("page_token", "is not a token this service issued")
        rows = await self._fetch(
            _AUDIT_NEWEST_FIRST if query.newest_first else _AUDIT_OLDEST_FIRST,
            query.start,
            query.end,
            list(query.actions),
            query.actor,
            query.target,
            query.failures_only,
            after_time,
            after_id,
            query.page_size + 1,
        )
        events = [_audit(r) for r in rows[: query.page_size]]
        token = ""
        if len(rows) > query.page_size:
            last = events[-1]
            token = encode_page_token([last.event_time.isoformat(), last.audit_event_id])
        return Page(tuple(events), token)
