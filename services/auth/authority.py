"""What the auth service does, once for both fronts: the gRPC servicer and the REST app call these methods.

``Authority`` sequences the pure rules (``tokens``, ``passwords``, ``totp``, ``lockout``, ``keys``,
``rbac``) around the store (PostgreSQL), the Redis state and the sealing key. Inputs arrive validated by the
front; every security-relevant action is written to the audit log. ``running()`` is the service host
resource that opens its connections, makes sure a signing key exists, creates the first admin, and keeps
rotating and retiring keys on schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NoReturn

import asyncpg
from cryptography.hazmat.primitives.asymmetric import rsa

from mesh.credentials import credentials_path, read_credentials, write_credentials
from mesh.interceptors import Principal, current_trace_ids
from mesh.permissions import ROLE_PERMISSIONS, permissions_for
from mesh.pg_pool import DATABASE_DOWN
from mesh.redis_connect import connect_redis
from mesh.tokens import JwtAuthenticator, TokenRejected
from services.auth import keys as signing_keys
from services.auth import passwords, totp
from services.auth.config import AuthSettings
from services.auth.encryption import SecretBox, decode_key, load_or_create_dev_key
from services.auth.errors import (
    FailedPrecondition,
    Forbidden,
    InvalidArgument,
    LoginRefused,
    NotFound,
)
from services.auth.keys import SigningKeyRecord
from services.auth.lockout import LockoutPolicy, remaining_s
from services.auth.model import (
    AuditEvent,
    AuditQuery,
    Caller,
    Device,
    DeviceChanges,
    DeviceCredentials,
    DeviceKind,
    DeviceSecret,
    Introspection,
    IssuedTokens,
    Page,
    RefreshTokenRecord,
    ServiceAccount,
    TotpEnrollment,
    User,
    UserChanges,
)
from services.auth.rbac import acts_on_self, may_manage_other_users
from services.auth.redis_state import RedisState
from services.auth.store import AuthStore, open_pool
from services.auth.tokens import (
    API_KEY_PREFIX,
    CLIENT_SECRET_PREFIX,
    AccessToken,
    ScopeError,
    TokenSubject,
    issue_access_token,
    new_api_key,
    new_client_secret,
    new_refresh_token,
    resolve_scope,
    secret_digest,
    visible_prefix,
)

log = logging.getLogger(__name__)

TOTP_ENROLLMENT_TTL: Final = timedelta(minutes=10)
DEFAULT_SECRET_GRACE: Final = timedelta(minutes=15)
JWKS_CACHE_S: Final = 5.0
KEY_MAINTENANCE_INTERVAL_S: Final = 60.0

SYSTEM: Final = Caller(
    Principal("system", kind="service", roles=frozenset({"admin"}), permissions=ROLE_PERMISSIONS["admin"])
)
"""The caller of actions the service takes on its own (bootstrap, scheduled rotation)."""


def _actor_type(principal: Principal) -> str:
    return principal.kind if principal.kind in ("user", "device", "service") else ""


@dataclass(slots=True)
class Signer:
    """The active signing key as loaded by this instance."""

    kid: str
    key: rsa.RSAPrivateKey
    checked_at: float


class Authority:
    """The auth service's behaviour (see the module docstring)."""

    def __init__(self, settings: AuthSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.lockout = LockoutPolicy(threshold=settings.lockout_threshold, base_s=settings.lockout_duration_s)
        self.source_lockout = LockoutPolicy(
            threshold=settings.lockout_ip_threshold, base_s=settings.lockout_duration_s
        )
        self._clock = clock
        self._store: AuthStore | None = None
        self._box: SecretBox | None = None
        self._state: RedisState | None = None
        self._signer: Signer | None = None
        self._signer_lock = asyncio.Lock()
        self._jwks_cache: tuple[float, dict[str, Any]] | None = None
        self.verifier: JwtAuthenticator | None = None
        """The service's own token verifier (set by ``service.build``), used by introspection and revoke."""

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def store(self) -> AuthStore:
        """The store (only inside ``running()``)."""
        if self._store is None:
            raise RuntimeError("the auth authority is not running")
        return self._store

    @property
    def box(self) -> SecretBox:
        """The sealing key (only inside ``running()``)."""
        if self._box is None:
            raise RuntimeError("the auth authority is not running")
        return self._box

    @property
    def state(self) -> RedisState:
        """The Redis state (only inside ``running()``)."""
        if self._state is None:
            raise RuntimeError("the auth authority is not running")
        return self._state

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Authority]:
        """Open the database pool and Redis, ensure a signing key and an admin, rotate keys on schedule."""
        settings = self.settings
        key = (
            decode_key(settings.secret_key.get_secret_value())
            if settings.secret_key is not None
            else load_or_create_dev_key(settings.data_dir)
        )
        self._box = SecretBox(key)
        log.info("auth secret key loaded", extra={"key_fingerprint": self._box.fingerprint})
        pool = await open_pool(settings.database_url)
        redis = connect_redis(settings.redis_url, socket_connect_timeout=2.0, socket_timeout=2.0)
        self._store, self._state = AuthStore(pool), RedisState(redis)
        maintenance: asyncio.Task[None] | None = None
        try:
            await self.maintain_signing_keys()
            await self.current_signer()  # fails start-up now if the stored key does not open
            await self.bootstrap_admin()
            await self.provision_service_accounts()
            maintenance = asyncio.create_task(self._maintain_periodically(), name="signing-key-maintenance")
            yield self
        finally:
            if maintenance is not None:
                maintenance.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await maintenance
            await redis.aclose()
            await pool.close()
            self._store = self._state = None
            self._signer = None

    def resource(self, host: object) -> contextlib.AbstractAsyncContextManager[object]:
        """``running()`` in the shape ``ServiceSpec.resources`` wants."""
        return self.running()

    async def _maintain_periodically(self) -> None:
        interval = KEY_MAINTENANCE_INTERVAL_S
        if self.settings.key_rotation_interval_s:
            interval = min(interval, max(self.settings.key_rotation_interval_s / 10, 1.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.maintain_signing_keys()
            except (asyncpg.PostgresError, *DATABASE_DOWN, TimeoutError) as exc:
                log.warning("signing key maintenance failed; retrying later", extra={"error": str(exc)})
            except Exception:
                log.exception("signing key maintenance failed unexpectedly")

    # -- audit -----------------------------------------------------------------------------------------------

    async def audit(
        self,
        caller: Caller,
        action: str,
        *,
        success: bool = True,
        target: str = "",
        details: Mapping[str, Any] | None = None,
        actor: str | None = None,
        actor_type: str | None = None,
        store: AuthStore | None = None,
    ) -> None:
        """Append one audit entry (never with secrets in ``details``)."""
        trace = caller.trace_id or (current_trace_ids() or ("", ""))[0]
        event = AuditEvent(
            audit_event_id=str(uuid.uuid4()),
            event_time=self._now(),
            action=action,
            success=success,
            actor=caller.principal.subject if actor is None else actor,
            actor_type=_actor_type(caller.principal) if actor_type is None else actor_type,
            target=target,
            source_ip=caller.source_ip,
            user_agent=caller.user_agent[:500],
            trace_id=trace,
            details=dict(details or {}),
        )
        await (store or self.store).add_audit_event(event)

    async def list_audit_events(self, query: AuditQuery) -> Page[AuditEvent]:
        """Audit log entries matching ``query``."""
        return await self.store.list_audit_events(query)

    # -- signing keys ----------------------------------------------------------------------------------------

    async def maintain_signing_keys(self) -> None:
        """Create a key if none signs or the active one is due for rotation; retire expired keys."""
        now = self._now()
        active = await self.store.active_signing_key()
        if signing_keys.rotation_due(
            active[0] if active else None, now, self.settings.key_rotation_interval_s
        ):
            await self._rotate(SYSTEM, self.settings.signing_key_bits, only_if_due=True)
        retired = await self.store.retire_signing_keys(self._now())
        if retired:
            log.info("signing keys retired", extra={"kids": retired})
            self._jwks_cache = None

    async def rotate_signing_key(self, caller: Caller, bits: int) -> SigningKeyRecord:
        """Create a key that signs from now on; the previous one stays published until its tokens expire."""
        record = await self._rotate(caller, bits, only_if_due=False)
        if record is None:  # pragma: no cover - only_if_due=False always rotates
            raise RuntimeError("rotation did not create a key")
        return record

    async def _rotate(self, caller: Caller, bits: int, *, only_if_due: bool) -> SigningKeyRecord | None:
        new_key = await asyncio.to_thread(signing_keys.generate_signing_key, bits)
        sealed = self.box.seal(new_key.private_der, f"signing_key:{new_key.kid}")
        async with self.store.transaction() as tx:
            await tx.lock_signing_keys()
            now = self._now()
            active = await tx.active_signing_key()
            if only_if_due and not signing_keys.rotation_due(
                active[0] if active else None, now, self.settings.key_rotation_interval_s
            ):
                return None  # another instance rotated while we generated
            retire_at = signing_keys.retire_time(now, self.settings.access_token_ttl_s)
            record = await tx.add_signing_key(new_key.kid, new_key.public_jwk, sealed, now, retire_at)
            await self.audit(
                caller,
                "SIGNING_KEY_ROTATED",
                target=new_key.kid,
                details={"previous_kid": active[0].kid if active else "", "key_size_bits": bits},
                store=tx,
            )
        log.info(
            "signing key rotated",
            extra={"kid": record.kid, "previous_kid": active[0].kid if active else None},
        )
        self._signer = None
        self._jwks_cache = None
        return record

    async def list_signing_keys(self, include_retired: bool) -> list[SigningKeyRecord]:
        """Signing keys, newest first, with their state as of now."""
        now = self._now()
        keys = await self.store.list_signing_keys(include_retired=True)
        current = [replace(k, state=k.state_at(now)) for k in keys]
        return [k for k in current if include_retired or k.state != "retired"]

    async def jwks(self, *, fresh: bool = False) -> dict[str, Any]:
        """The JWKS document: the active key first, then keys whose tokens may still be valid.

        Answers from a copy at most ``JWKS_CACHE_S`` old (the endpoint is public), unless ``fresh``.
        """
        now = self._clock()
        cached = self._jwks_cache
        if not fresh and cached is not None and now - cached[0] < JWKS_CACHE_S:
            return cached[1]
        keys = signing_keys.published(await self.store.list_signing_keys(include_retired=False), self._now())
        document = {"keys": [dict(k.public_jwk) for k in keys]}
        self._jwks_cache = (now, document)
        return document

    async def current_signer(self) -> Signer:
        """The key that signs now (re-read when another instance may have rotated)."""
        signer = self._signer
        now = self._clock()
        if signer is not None and now - signer.checked_at < signing_keys.ACTIVE_KEY_RECHECK_S:
            return signer
        async with self._signer_lock:
            active = await self.store.active_signing_key()
            if active is None:
                raise FailedPrecondition("no signing key exists yet", "NO_SIGNING_KEY")
            record, sealed = active
            if signer is not None and signer.kid == record.kid:
                signer.checked_at = now  # another instance has not rotated: keep the loaded key
                return signer
            der = self.box.open(sealed, f"signing_key:{record.kid}")
            self._signer = Signer(record.kid, signing_keys.load_private_key(der), now)
            return self._signer

    # -- tokens ----------------------------------------------------------------------------------------------

    async def _access_token(
        self, subject: TokenSubject, scope: str, session_id: str | None = None
    ) -> AccessToken:
        signer = await self.current_signer()
        token = issue_access_token(
            subject,
            scope=scope,
            issuer=self.settings.token_issuer,
            audience=self.settings.token_audience,
            now=self._clock(),
            ttl_s=self.settings.access_token_ttl_s,
            private_key=signer.key,
            kid=signer.kid,
            session_id=session_id,
        )
        return token

    async def _issue_user_tokens(
        self, user: User, requested_scope: str | None, family_id: str, store: AuthStore
    ) -> IssuedTokens:
        try:
            scope = resolve_scope(user.roles, requested_scope.split() if requested_scope else [])
        except ScopeError as exc:
            raise InvalidArgument("scopes", str(exc)) from exc
        subject = TokenSubject(user.user_id, "user", user.roles, username=user.username)
        access = await self._access_token(subject, scope, session_id=family_id)
        refresh = new_refresh_token()
        now = self._now()
        ttl = self.settings.refresh_token_ttl_s
        await store.add_refresh_token(
            RefreshTokenRecord(
                token_hash=secret_digest(refresh),
                family_id=family_id,
                user_id=user.user_id,
                scope=requested_scope,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl),
                access_jti=access.token_id,
                access_expires_at=datetime.fromtimestamp(access.expires_at, UTC),
            )
        )
        return IssuedTokens(
            access_token=access.token,
            expires_in_s=self.settings.access_token_ttl_s,
            scope=scope,
            subject=user.user_id,
            subject_type="user",
            roles=user.roles,
            refresh_token=refresh,
            refresh_expires_in_s=ttl,
        )

    async def login(
        self,
        caller: Caller,
        *,
        username: str,
        password: str,
        totp_code: str = "",
        recovery_code: str = "",
        scopes: Sequence[str] = (),
    ) -> IssuedTokens:
        """Password (+ TOTP or recovery code) → access and refresh token; see auth.proto Login."""
        source_locked = await self.state.source_lock_remaining(caller.source_ip)
        if source_locked:
            await self._login_failed(caller, username, "source_locked")
            raise LoginRefused(
                "ACCOUNT_LOCKED",
                "too many failed logins from this address; try again later",
                retry_delay_s=source_locked,
                metadata={"locked": "source"},
            )
        user = await self.store.get_user_by_username(username)
        if user is None:
            await asyncio.to_thread(passwords.burn_verification, password)
            await self._count_failure(caller, None)
            await self._login_failed(caller, username, "unknown_user")
            raise LoginRefused("INVALID_CREDENTIALS", "wrong username or password")
        now = self._now()
        locked = remaining_s(user.locked_until, now)
        if locked:
            await self._login_failed(caller, username, "account_locked", user)
            raise LoginRefused(
                "ACCOUNT_LOCKED",
                "the account is locked after repeated failed logins; try again later",
                retry_delay_s=locked,
                metadata={"locked": "account"},
            )
        if not await asyncio.to_thread(passwords.verify_password, password, user.password_hash):
            await self._refuse_after_failure(caller, user, "wrong_password", "INVALID_CREDENTIALS")
        if user.disabled:
            await self._login_failed(caller, username, "disabled", user)
            raise LoginRefused("INVALID_CREDENTIALS", "the account is disabled")
        if user.mfa_enabled:
            await self._check_second_factor(caller, user, totp_code, recovery_code)
        requested = " ".join(scopes) or None
        async with self.store.transaction() as tx:
            await tx.record_login_success(user.user_id, now)
            tokens = await self._issue_user_tokens(user, requested, str(uuid.uuid4()), tx)
            await self.audit(
                caller,
                "LOGIN_SUCCEEDED",
                target=user.user_id,
                actor=user.user_id,
                actor_type="user",
                details={"username": user.username, "mfa": user.mfa_enabled},
                store=tx,
            )
        return tokens

    async def _check_second_factor(
        self, caller: Caller, user: User, totp_code: str, recovery_code: str
    ) -> None:
        if not totp_code and not recovery_code:
            await self._login_failed(caller, user.username, "mfa_required", user)
            raise LoginRefused("MFA_REQUIRED", "this account needs a TOTP code or a recovery code")
        if totp_code:
            if not await self._totp_matches(user, totp_code):
                await self._refuse_after_failure(caller, user, "wrong_totp_code", "INVALID_MFA_CODE")
            return
        digest = self.box.digest(totp.normalize_recovery_code(recovery_code), f"recovery:{user.user_id}")
        if not await self.store.use_recovery_code(user.user_id, digest, self._now()):
            await self._refuse_after_failure(caller, user, "wrong_recovery_code", "INVALID_MFA_CODE")
        left = await self.store.unused_recovery_codes(user.user_id)
        await self.audit(
            caller,
            "RECOVERY_CODE_USED",
            target=user.user_id,
            actor=user.user_id,
            actor_type="user",
            details={"remaining": left},
        )

    async def _totp_matches(self, user: User, code: str) -> bool:
        if user.totp_secret_enc is None:
            return False
        secret = self.box.open(user.totp_secret_enc, f"totp:{user.user_id}")
        step = totp.match(secret, code, self._clock())
        return step is not None and await self.state.accept_totp_step(user.user_id, step)

    async def _login_failed(self, caller: Caller, username: str, why: str, user: User | None = None) -> None:
        await self.audit(
            caller,
            "LOGIN_FAILED",
            success=False,
            actor=username,
            actor_type="user",
            target=user.user_id if user else "",
            details={"reason": why},
        )

    async def _count_failure(self, caller: Caller, user: User | None) -> float:
        """Count a failure for the source and the account; returns seconds the account is now locked for."""
        await self.state.record_source_failure(caller.source_ip, self.source_lockout)
        if user is None:
            return 0.0
        now = self._now()
        failures = await self.store.record_login_failure(user.user_id, now)
        until = self.lockout.locked_until(failures, now)
        if until is None:
            return 0.0
        await self.store.lock_user(user.user_id, until)
        await self.audit(
            caller,
            "ACCOUNT_LOCKED",
            actor=user.username,
            actor_type="user",
            target=user.user_id,
            details={"failures": failures, "locked_until": until.isoformat()},
        )
        return (until - now).total_seconds()

    async def _refuse_after_failure(self, caller: Caller, user: User, why: str, reason: str) -> NoReturn:
        locked = await self._count_failure(caller, user)
        await self._login_failed(caller, user.username, why, user)
        if locked:
            raise LoginRefused(
                "ACCOUNT_LOCKED",
                "the account is locked after repeated failed logins; try again later",
                retry_delay_s=locked,
                metadata={"locked": "account"},
            )
        message = "wrong username or password" if reason == "INVALID_CREDENTIALS" else "wrong MFA code"
        raise LoginRefused(reason, message)

    async def refresh(self, caller: Caller, refresh_token: str) -> IssuedTokens:
        """Rotate a refresh token; a reused one revokes its family (auth.proto RefreshToken)."""
        digest = secret_digest(refresh_token)
        record = await self.store.get_refresh_token(digest)
        if record is None:
            raise LoginRefused("INVALID_CREDENTIALS", "unknown refresh token")
        if record.revoked_at is not None:
            raise LoginRefused("TOKEN_REVOKED", "the refresh token has been revoked")
        if record.rotated_at is not None:
            await self._reuse_detected(caller, record)
        now = self._now()
        if record.expires_at <= now:
            raise LoginRefused("TOKEN_EXPIRED", "the refresh token has expired; log in again")
        user = await self.store.get_user(record.user_id)
        if user is None or user.disabled:
            await self._revoke_family(record.family_id)
            raise LoginRefused("TOKEN_REVOKED", "the account is disabled or gone")
        try:
            async with self.store.transaction() as tx:
                if not await tx.mark_rotated(digest, now):
                    raise _Reused  # used twice at once: the loser of the race counts as reuse
                try:
                    tokens = await self._issue_user_tokens(user, record.scope, record.family_id, tx)
                except InvalidArgument as exc:  # the user's roles no longer allow the scope
                    raise LoginRefused("TOKEN_REVOKED", "the account's roles changed; log in again") from exc
                await self.audit(
                    caller,
                    "TOKEN_REFRESHED",
                    target=user.user_id,
                    actor=user.user_id,
                    actor_type="user",
                    details={"family_id": record.family_id},
                    store=tx,
                )
        except _Reused:
            await self._reuse_detected(caller, record)
        return tokens

    async def _reuse_detected(self, caller: Caller, record: RefreshTokenRecord) -> NoReturn:
        revoked = await self._revoke_family(record.family_id)
        await self.audit(
            caller,
            "REFRESH_TOKEN_REUSE_DETECTED",
            success=False,
            actor=record.user_id,
            actor_type="user",
            target=record.user_id,
            details={"family_id": record.family_id, "access_tokens_revoked": revoked},
        )
        raise LoginRefused(
            "REFRESH_TOKEN_REUSED",
            "this refresh token was already used; every token of its login has been revoked",
        )

    async def _revoke_family(self, family_id: str) -> int:
        jtis = await self.store.revoke_families(now=self._now(), family_id=family_id)
        for jti, expires_at in jtis:
            await self.state.revoke(jti, expires_at.timestamp())
        return len(jtis)

    async def _revoke_user_sessions(self, user_id: str, keep_family: str | None = None) -> int:
        jtis = await self.store.revoke_families(now=self._now(), user_id=user_id, keep_family=keep_family)
        for jti, expires_at in jtis:
            await self.state.revoke(jti, expires_at.timestamp())
        return len(jtis)

    async def _revoke_subject_tokens(self, subject: str) -> None:
        """Tokens already issued to a deleted or disabled device/account stop working everywhere now."""
        now = self._clock()
        await self.state.revoke_subject(subject, now, now + self.settings.access_token_ttl_s)

    async def revoke(self, caller: Caller, token: str, *, hint: str = "") -> None:
        """Revoke an access token (its jti) or a refresh token (its family); unknown tokens are no error."""
        looks_like_jwt = token.count(".") == 2
        if (
            hint != "refresh"
            and looks_like_jwt
            and (await self._revoke_access_token(caller, token) or hint == "access")
        ):
            return
        record = await self.store.get_refresh_token(secret_digest(token))
        if record is None or record.revoked_at is not None:
            return
        revoked = await self._revoke_family(record.family_id)
        await self.audit(
            caller,
            "TOKEN_REVOKED",
            actor=record.user_id if caller.principal.kind == "anonymous" else None,
            actor_type="user" if caller.principal.kind == "anonymous" else None,
            target=record.user_id,
            details={
                "token_type": "refresh",
                "family_id": record.family_id,
                "access_tokens_revoked": revoked,
            },
        )

    async def _revoke_access_token(self, caller: Caller, token: str) -> bool:
        verifier = self._verifier()
        try:
            verified = await verifier.verify(token)
        except TokenRejected as exc:
            return exc.why in ("EXPIRED", "REVOKED")  # nothing left to do for these
        await self.state.revoke(verified.token_id, verified.expires_at)
        await self.audit(
            caller,
            "TOKEN_REVOKED",
            actor=verified.subject if caller.principal.kind == "anonymous" else None,
            actor_type=str(verified.claims.get("sub_type", ""))
            if caller.principal.kind == "anonymous"
            else None,
            target=verified.subject,
            details={"token_type": "access", "jti": verified.token_id},
        )
        return True

    def _verifier(self) -> JwtAuthenticator:
        if self.verifier is None:
            raise RuntimeError("the auth service's verifier is not set")
        return self.verifier

    async def exchange_client_credentials(
        self, caller: Caller, *, client_id: str, client_secret: str, scopes: Sequence[str] = ()
    ) -> IssuedTokens:
        """Client-credentials grant: a device's API key or a service account's secret → an access token."""
        source_locked = await self.state.source_lock_remaining(caller.source_ip)
        if source_locked:
            raise LoginRefused(
                "ACCOUNT_LOCKED",
                "too many failed attempts from this address; try again later",
                retry_delay_s=source_locked,
                metadata={"locked": "source"},
            )
        digest = secret_digest(client_secret)
        subject: TokenSubject | None = None
        kind = ""
        if client_secret.startswith(API_KEY_PREFIX):
            kind = "device"
            device = await self.store.get_device(client_id)
            if (
                device is not None
                and hmac.compare_digest(digest, device.api_key_hash)
                and not device.disabled
            ):
                subject = TokenSubject(device.device_id, "device", ("device",))
        elif client_secret.startswith(CLIENT_SECRET_PREFIX):
            kind = "service"
            account = await self.store.get_service_account(client_id)
            if (
                account is not None
                and hmac.compare_digest(digest, account.secret_hash)
                and not account.disabled
            ):
                subject = TokenSubject(account.service_account_id, "service", account.roles)
        if subject is None:
            await self.state.record_source_failure(caller.source_ip, self.source_lockout)
            await self.audit(
                caller,
                "CLIENT_CREDENTIALS_GRANT",
                success=False,
                actor=client_id,
                actor_type=kind,
                target=client_id,
                details={"reason": "invalid_client"},
            )
            raise LoginRefused("INVALID_CLIENT", "unknown client, wrong secret, or the client is disabled")
        try:
            scope = resolve_scope(subject.roles, scopes)
        except ScopeError as exc:
            raise InvalidArgument("scopes", str(exc)) from exc
        access = await self._access_token(subject, scope)
        now = self._now()
        if subject.subject_type == "device":
            await self.store.touch_device(subject.subject, now)
        else:
            await self.store.touch_service_account(subject.subject, now)
        await self.audit(
            caller,
            "CLIENT_CREDENTIALS_GRANT",
            actor=subject.subject,
            actor_type=subject.subject_type,
            target=subject.subject,
            details={"jti": access.token_id},
        )
        return IssuedTokens(
            access_token=access.token,
            expires_in_s=self.settings.access_token_ttl_s,
            scope=scope,
            subject=subject.subject,
            subject_type=subject.subject_type,
            roles=subject.roles,
        )

    async def introspect(
        self, token: str, *, required_permission: str = "", audience: str = ""
    ) -> Introspection:
        """Whether a token is valid now, its claims, and whether it grants ``required_permission``."""
        try:
            verified = await self._verifier().verify(token, audience=audience or None)
        except TokenRejected as exc:
            return Introspection(active=False, inactive_reason=exc.why)
        sub_type = verified.claims.get("sub_type", "user")
        if not await self._subject_enabled(str(sub_type), verified.subject):
            return Introspection(
                active=False, inactive_reason="SUBJECT_DISABLED", claims=verified.claims, kid=verified.kid
            )
        granted = permissions_for(verified.roles, verified.scope)
        return Introspection(
            active=True,
            claims=verified.claims,
            kid=verified.kid,
            permissions=granted,
            permission_granted=bool(required_permission) and required_permission in granted,
        )

    async def _subject_enabled(self, sub_type: str, subject: str) -> bool:
        if sub_type == "device":
            device = await self.store.get_device(subject)
            return device is not None and not device.disabled
        if sub_type == "service":
            account = await self.store.get_service_account(subject)
            return account is not None and not account.disabled
        user = await self.store.get_user(subject)
        return user is not None and not user.disabled

    # -- users -----------------------------------------------------------------------------------------------

    async def bootstrap_admin(self) -> User | None:
        """Create the first admin if no admin exists (ITSMESH_ADMIN_PASSWORD, or a one-time password)."""
        async with self.store.transaction() as tx:
            await tx.lock_bootstrap()
            if await tx.any_user_with_role("admin"):
                return None
            username = self.settings.admin_username
            if await tx.get_user_by_username(username) is not None:
                log.warning("no enabled admin exists, and the admin username is taken by another user")
                return None
            configured = self.settings.admin_password
            password = configured.get_secret_value() if configured is not None else secrets.token_urlsafe(18)
            password_hash = await asyncio.to_thread(passwords.hash_password, password)
            user = await tx.create_user(
                username=username, roles=("admin",), password_hash=password_hash, now=self._now()
            )
            await self.audit(
                SYSTEM,
                "ADMIN_BOOTSTRAPPED",
                target=user.user_id,
                details={"username": username, "password_source": "env" if configured else "generated"},
                store=tx,
            )
        if configured is None:
            self._hand_over_one_time_password(username, password)
        else:
            log.info("created the first admin from ITSMESH_ADMIN_PASSWORD", extra={"username": username})
        return user

    def _hand_over_one_time_password(self, username: str, password: str) -> None:
        """Show the generated admin password once: on a terminal, or in a 0600 file when stderr is a log."""
        if sys.stderr.isatty():
            # Shown once, on the terminal, never through the logger; the operator should change it.
            sys.stderr.write(
                f"\nitsmesh auth: created the first admin '{username}' with the one-time password\n\n"
                f"    {password}\n\nLog in and change it now; it is not shown again.\n\n"
            )
            sys.stderr.flush()
            log.warning("created the first admin with a one-time password shown on the terminal")
            return
        path = self.settings.data_dir / "auth" / "initial-admin-password"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{username}\n{password}\n")
        # Only the path is logged: stderr is a log file here, and secrets never go to logs.
        log.warning(
            "created the first admin with a one-time password; read it from the file, then delete it",
            extra={"username": username, "path": str(path)},
        )

    async def create_user(
        self,
        caller: Caller,
        *,
        username: str,
        password: str,
        roles: Sequence[str],
        email: str = "",
        display_name: str = "",
    ) -> User:
        """Create a user (roles and password already validated by the front)."""
        password_hash = await asyncio.to_thread(passwords.hash_password, password)
        async with self.store.transaction() as tx:
            user = await tx.create_user(
                username=username,
                roles=roles,
                password_hash=password_hash,
                email=email,
                display_name=display_name,
                now=self._now(),
            )
            await self.audit(
                caller,
                "USER_CREATED",
                target=user.user_id,
                details={"username": username, "roles": list(roles)},
                store=tx,
            )
        return user

    async def get_user(self, user_id: str) -> User:
        """One user, or NotFound."""
        user = await self.store.get_user(user_id)
        if user is None:
            raise NotFound("user", user_id)
        return user

    async def list_users(
        self, *, page_size: int, page_token: str, role: str | None, include_disabled: bool
    ) -> Page[User]:
        """Users ordered by username."""
        return await self.store.list_users(
            page_size=page_size, page_token=page_token, role=role, include_disabled=include_disabled
        )

    async def _require_another_admin(self, user: User, losing_admin: bool) -> None:
        if not (losing_admin and "admin" in user.roles and not user.disabled):
            return
        if not await self.store.any_user_with_role("admin", except_user=user.user_id):
            raise FailedPrecondition("this would leave no enabled admin", "LAST_ADMIN")

    async def update_user(self, caller: Caller, user_id: str, changes: UserChanges) -> User:
        """Change a user's details, roles or disabled flag; role changes are audited with old and new."""
        before = await self.get_user(user_id)
        losing_admin = (changes.roles is not None and "admin" not in changes.roles) or bool(changes.disabled)
        await self._require_another_admin(before, losing_admin)
        user = await self.store.update_user(user_id, changes, self._now())
        if user is None:
            raise NotFound("user", user_id)
        if changes.roles is not None and tuple(changes.roles) != before.roles:
            await self.audit(
                caller,
                "ROLES_CHANGED",
                target=user_id,
                details={"old_roles": list(before.roles), "new_roles": list(user.roles)},
            )
        other = {
            name: getattr(changes, name)
            for name in ("email", "display_name", "disabled")
            if getattr(changes, name) is not None
        }
        if other:
            await self.audit(caller, "USER_UPDATED", target=user_id, details={"fields": sorted(other)})
        if changes.disabled and not before.disabled:
            await self._revoke_user_sessions(user_id)
        return user

    async def delete_user(self, caller: Caller, user_id: str) -> None:
        """Delete a user and revoke their tokens."""
        user = await self.get_user(user_id)
        await self._require_another_admin(user, True)
        await self._revoke_user_sessions(user_id)
        if not await self.store.delete_user(user_id):
            raise NotFound("user", user_id)
        await self.audit(caller, "USER_DELETED", target=user_id, details={"username": user.username})

    async def change_password(
        self, caller: Caller, user_id: str, current_password: str, new_password: str
    ) -> None:
        """Change one's own password (with the current one) or, as an admin, another user's."""
        principal = caller.principal
        own = acts_on_self(principal, user_id)
        target_id = principal.subject if own else user_id
        if own and principal.kind != "user":
            raise FailedPrecondition("only users have passwords", "NOT_A_USER")
        if not own and not may_manage_other_users(principal):
            raise Forbidden("users:update", "changing another user's password needs users:update")
        user = await self.get_user(target_id)
        if own and not await asyncio.to_thread(
            passwords.verify_password, current_password, user.password_hash
        ):
            await self.audit(
                caller,
                "PASSWORD_CHANGED",
                success=False,
                target=user.user_id,
                details={"reason": "wrong_current_password"},
            )
            raise LoginRefused("INVALID_CREDENTIALS", "the current password is wrong")
        password_hash = await asyncio.to_thread(passwords.hash_password, new_password)
        await self.store.set_password(user.user_id, password_hash, self._now())
        session = principal.claims.get("sid") if own else None
        revoked = await self._revoke_user_sessions(
            user.user_id, keep_family=str(session) if session else None
        )
        await self.audit(
            caller,
            "PASSWORD_CHANGED",
            target=user.user_id,
            details={"by_admin": not own, "sessions_revoked": revoked},
        )

    async def unlock_user(self, caller: Caller, user_id: str) -> User:
        """Lift a lockout."""
        user = await self.store.unlock_user(user_id, self._now())
        if user is None:
            raise NotFound("user", user_id)
        await self.audit(caller, "ACCOUNT_UNLOCKED", target=user_id)
        return user

    # -- TOTP ------------------------------------------------------------------------------------------------

    def _calling_user_id(self, caller: Caller) -> str:
        if caller.principal.kind != "user":
            raise FailedPrecondition("only users can use MFA", "NOT_A_USER")
        return caller.principal.subject

    async def enroll_totp(self, caller: Caller) -> TotpEnrollment:
        """Start TOTP enrollment for the calling user."""
        user = await self.get_user(self._calling_user_id(caller))
        if user.mfa_enabled:
            raise FailedPrecondition(
                "MFA is already enabled; disable it first to enroll again", "MFA_ALREADY_ENABLED"
            )
        secret = totp.new_secret()
        expires_at = self._now() + TOTP_ENROLLMENT_TTL
        await self.store.set_totp_pending(
            user.user_id, self.box.seal(secret, f"totp-pending:{user.user_id}"), expires_at
        )
        uri = totp.otpauth_uri(secret, user.username, self.settings.totp_issuer)
        return TotpEnrollment(
            otpauth_uri=uri,
            qr_png=totp.qr_png(uri),
            secret_base32=totp.secret_base32(secret),
            expires_at=expires_at,
        )

    async def confirm_totp(self, caller: Caller, code: str) -> list[str]:
        """Enable MFA with a current code; returns the one-time recovery codes."""
        user = await self.get_user(self._calling_user_id(caller))
        now = self._now()
        if user.mfa_enabled:
            raise FailedPrecondition("MFA is already enabled", "MFA_ALREADY_ENABLED")
        if user.totp_pending_enc is None or user.totp_pending_until is None or user.totp_pending_until <= now:
            raise FailedPrecondition(
                "no TOTP enrollment is pending (or it expired); enroll again", "NO_PENDING_ENROLLMENT"
            )
        secret = self.box.open(user.totp_pending_enc, f"totp-pending:{user.user_id}")
        step = totp.match(secret, code, self._clock())
        if step is None or not await self.state.accept_totp_step(user.user_id, step):
            raise InvalidArgument("code", "does not match the authenticator's current code")
        codes = totp.new_recovery_codes()
        digests = [
            self.box.digest(totp.normalize_recovery_code(c), f"recovery:{user.user_id}") for c in codes
        ]
        async with self.store.transaction() as tx:
            await tx.enable_totp(user.user_id, self.box.seal(secret, f"totp:{user.user_id}"), digests, now)
            await self.audit(caller, "MFA_ENABLED", target=user.user_id, store=tx)
        return codes

    async def disable_totp(self, caller: Caller, user_id: str, code: str) -> None:
        """Disable MFA: one's own with a current code, another user's as an admin."""
        principal = caller.principal
        own = acts_on_self(principal, user_id)
        if own:
            user = await self.get_user(self._calling_user_id(caller))
            if not user.mfa_enabled:
                return
            if not code:
                raise InvalidArgument("code", "a current TOTP code is required to disable one's own MFA")
            if not await self._totp_matches(user, code):
                raise InvalidArgument("code", "does not match the authenticator's current code")
        else:
            if not may_manage_other_users(principal):
                raise Forbidden("users:update", "disabling another user's MFA needs users:update")
            user = await self.get_user(user_id)
            if not user.mfa_enabled:
                return
        async with self.store.transaction() as tx:
            await tx.disable_totp(user.user_id, self._now())
            await self.audit(
                caller, "MFA_DISABLED", target=user.user_id, details={"by_admin": not own}, store=tx
            )

    # -- devices ---------------------------------------------------------------------------------------------

    def _new_hmac_secret(self, device_id: str) -> tuple[str, bytes, bytes]:
        key_id = "hk_" + secrets.token_hex(8)
        secret = secrets.token_bytes(32)
        return key_id, secret, self.box.seal(secret, f"device_secret:{device_id}:{key_id}")

    async def register_device(
        self, caller: Caller, *, device_id: str, kind: DeviceKind, name: str, labels: Mapping[str, str]
    ) -> tuple[Device, DeviceCredentials]:
        """Register a device; its API key and HMAC secret are returned only here."""
        api_key = new_api_key()
        key_id, secret, sealed = self._new_hmac_secret(device_id)
        async with self.store.transaction() as tx:
            device = await tx.create_device(
                device_id=device_id,
                kind=kind,
                name=name,
                labels=labels,
                api_key_hash=secret_digest(api_key),
                api_key_prefix=visible_prefix(api_key),
                created_by=caller.principal.subject,
                hmac_key_id=key_id,
                hmac_secret_enc=sealed,
                now=self._now(),
            )
            await self.audit(
                caller,
                "DEVICE_REGISTERED",
                target=device_id,
                details={"kind": kind, "hmac_key_id": key_id},
                store=tx,
            )
        return device, DeviceCredentials(api_key=api_key, hmac_key_id=key_id, hmac_secret=secret)

    async def get_device(self, device_id: str) -> Device:
        """One device, or NotFound."""
        device = await self.store.get_device(device_id)
        if device is None:
            raise NotFound("device", device_id)
        return device

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
        return await self.store.list_devices(
            page_size=page_size,
            page_token=page_token,
            kind=kind,
            labels=labels,
            include_disabled=include_disabled,
        )

    async def update_device(self, caller: Caller, device_id: str, changes: DeviceChanges) -> Device:
        """Change a device's name, labels or disabled flag."""
        device = await self.store.update_device(device_id, changes, self._now())
        if device is None:
            raise NotFound("device", device_id)
        fields = sorted(n for n in ("name", "labels", "disabled") if getattr(changes, n) is not None)
        await self.audit(caller, "DEVICE_UPDATED", target=device_id, details={"fields": fields})
        if changes.disabled:
            await self._revoke_subject_tokens(device_id)
        return device

    async def delete_device(self, caller: Caller, device_id: str) -> None:
        """Delete a device with its credentials."""
        if not await self.store.delete_device(device_id):
            raise NotFound("device", device_id)
        await self._revoke_subject_tokens(device_id)
        await self.audit(caller, "DEVICE_DELETED", target=device_id)

    async def rotate_device_credentials(
        self,
        caller: Caller,
        device_id: str,
        *,
        rotate_api_key: bool,
        rotate_hmac_secret: bool,
        grace: timedelta | None,
    ) -> DeviceCredentials:
        """New API key and/or HMAC secret; the previous secret stays valid for ``grace`` (default 15 min)."""
        await self.get_device(device_id)
        now = self._now()
        api_key, key_id, secret = "", "", b""
        async with self.store.transaction() as tx:
            if rotate_api_key:
                api_key = new_api_key()
                await tx.set_device_api_key(device_id, secret_digest(api_key), visible_prefix(api_key), now)
            if rotate_hmac_secret:
                key_id, secret, sealed = self._new_hmac_secret(device_id)
                previous_until = now + (DEFAULT_SECRET_GRACE if grace is None else grace)
                await tx.add_device_secret(
                    device_id, key_id, sealed, now=now, previous_expires_at=previous_until
                )
            await self.audit(
                caller,
                "DEVICE_CREDENTIALS_ROTATED",
                target=device_id,
                details={"api_key": rotate_api_key, "hmac_secret": rotate_hmac_secret, "hmac_key_id": key_id},
                store=tx,
            )
        return DeviceCredentials(api_key=api_key, hmac_key_id=key_id, hmac_secret=secret)

    async def get_device_secret(self, caller: Caller, device_id: str, key_id: str) -> DeviceSecret:
        """A device's HMAC secret for signature checks (service callers only; every read is audited)."""
        device = await self.get_device(device_id)
        record = await self.store.get_device_secret(device_id, key_id or None)
        now = self._now()
        if record is None or (record.expires_at is not None and record.expires_at <= now):
            await self.audit(
                caller, "DEVICE_SECRET_READ", success=False, target=device_id, details={"key_id": key_id}
            )
            raise NotFound("device secret", f"{device_id}/{key_id or 'current'}")
        secret = self.box.open(record.secret_enc, f"device_secret:{device_id}:{record.key_id}")
        await self.audit(caller, "DEVICE_SECRET_READ", target=device_id, details={"key_id": record.key_id})
        return DeviceSecret(
            device_id=device_id,
            key_id=record.key_id,
            hmac_secret=secret,
            expires_at=record.expires_at,
            device_disabled=device.disabled,
        )

    # -- service accounts ------------------------------------------------------------------------------------

    async def create_service_account(
        self, caller: Caller, *, service_account_id: str, description: str, roles: Sequence[str]
    ) -> tuple[ServiceAccount, str]:
        """Create a service account; its client secret is returned only here."""
        secret = new_client_secret()
        async with self.store.transaction() as tx:
            account = await tx.create_service_account(
                service_account_id=service_account_id,
                description=description,
                roles=roles,
                secret_hash=secret_digest(secret),
                secret_prefix=visible_prefix(secret),
                now=self._now(),
            )
            await self.audit(
                caller,
                "SERVICE_ACCOUNT_CREATED",
                target=service_account_id,
                details={"roles": list(roles)},
                store=tx,
            )
        return account, secret

    async def provision_service_accounts(self) -> None:
        """Give each configured service an account and a credentials file it can read on this machine.

        An account whose file is gone (or a file whose account is gone) is replaced, so a wiped database or
        data directory heals on the next start; the secret exists only in the 0600 file.
        """
        for name in self.settings.provisioned_services:
            account_id = f"svc-{name}"
            path = credentials_path(self.settings.data_dir, name)
            existing = await self.store.get_service_account(account_id)
            if existing is not None and read_credentials(path) is not None:
                continue
            if existing is not None:
                await self.store.delete_service_account(account_id)
            _, secret = await self.create_service_account(
                SYSTEM,
                service_account_id=account_id,
                description=f"the {name} service (provisioned at start)",
                roles=("service",),
            )
            write_credentials(path, account_id, secret)
            log.info("provisioned a service account", extra={"account": account_id, "path": str(path)})

    async def list_service_accounts(self, *, page_size: int, page_token: str) -> Page[ServiceAccount]:
        """Service accounts ordered by id."""
        return await self.store.list_service_accounts(page_size=page_size, page_token=page_token)

    async def delete_service_account(self, caller: Caller, service_account_id: str) -> None:
        """Delete a service account."""
        if not await self.store.delete_service_account(service_account_id):
            raise NotFound("service account", service_account_id)
        await self._revoke_subject_tokens(service_account_id)
        await self.audit(caller, "SERVICE_ACCOUNT_DELETED", target=service_account_id)


class _Reused(Exception):
    """Two requests used the same refresh token at once; the loser treats it as reuse."""


class LocalJwksSource:
    """The auth service's own JWKS, read from its database instead of over HTTP."""

    def __init__(self, authority: Authority) -> None:
        self._authority = authority

    async def fetch(self) -> Mapping[str, Any]:
        # Fresh: this runs on an unknown kid, which may be a key another instance minted a moment ago.
        return await self._authority.jwks(fresh=True)

    async def aclose(self) -> None:
        return None
