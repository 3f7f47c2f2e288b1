"""Settings of the auth service; env vars are prefixed ITSMESH_AUTH_ (infrastructure URLs are shared)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from mesh.tokens import AuthClientSettings


class AuthSettings(AuthClientSettings):
    """Typed configuration of one auth instance."""

    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_AUTH_", extra="ignore", frozen=True, validate_by_name=True
    )

    grpc_port: int = 50054
    http_port: int | None = 8000
    secret_key: SecretStr | None = Field(
        None,
        description="Base64 of 32 random bytes that encrypts private keys and device/TOTP secrets at rest; "
        "unset = a development key generated under the data directory.",
    )
    admin_username: str = Field("admin", description="Username of the admin created at first start.")
    admin_password: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("ITSMESH_ADMIN_PASSWORD", "ITSMESH_AUTH_ADMIN_PASSWORD"),
        description="Password of the admin created at first start; unset = a one-time password printed once.",
    )
    access_token_ttl_s: int = Field(600, ge=300, le=900, description="Lifetime of access tokens (5-15 min).")
    refresh_token_ttl_s: int = Field(
        7 * 86400, ge=300, description="Lifetime of a refresh token; every use issues a new one."
    )
    signing_key_bits: int = Field(2048, description="RSA key size of new signing keys (2048, 3072 or 4096).")
    key_rotation_interval_s: float = Field(
        30 * 86400, ge=0, description="Rotate the signing key when it is this old; 0 = only on request."
    )
    lockout_threshold: int = Field(5, ge=1, description="Failed logins in a row that lock an account.")
    lockout_duration_s: float = Field(
        900, gt=0, description="First lockout; each further run of failures doubles it (at most 24 h)."
    )
    lockout_ip_threshold: int = Field(
        5, ge=1, description="Failed logins from one source address within the lockout window that lock it."
    )
    totp_issuer: str = Field("itsmesh", description="Issuer shown by authenticator apps.")
    provision_service_accounts: str = Field(
        "",
        description="Comma-separated service names that get a service account and a 0600 credentials file "
        "under DATA_DIR/credentials/ at start (`itsmesh up` sets it; production passes secrets instead).",
    )

    @property
    def provisioned_services(self) -> tuple[str, ...]:
        """The names in ``provision_service_accounts``."""
        return tuple(name.strip() for name in self.provision_service_accounts.split(",") if name.strip())

    @field_validator("require_auth")
    @classmethod
    def _auth_is_always_required(cls, value: bool) -> bool:
        # The auth service needs to know its callers (MFA enrollment, password changes, admin routes).
        if not value:
            raise ValueError(
                "the auth service always requires authentication; ITSMESH_AUTH_REQUIRE_AUTH=false"
            )
        return value

    @field_validator("signing_key_bits")
    @classmethod
    def _known_key_size(cls, value: int) -> int:
        if value not in (2048, 3072, 4096):
            raise ValueError("signing_key_bits must be 2048, 3072 or 4096")
        return value
