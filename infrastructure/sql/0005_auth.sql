-- Identity and access (auth service, DESIGN §6). Secrets never appear in clear: passwords are argon2id
-- hashes, API keys / client secrets / refresh tokens are SHA-256 digests of high-entropy values, recovery
-- codes are keyed HMACs, and private keys, TOTP and HMAC secrets are AES-256-GCM ciphertexts.

CREATE TABLE IF NOT EXISTS auth.signing_keys (
    kid              text        PRIMARY KEY,                  -- RFC 7638 thumbprint of the public key
    alg              text        NOT NULL DEFAULT 'RS256',
    state            text        NOT NULL CHECK (state IN ('active', 'verify_only', 'retired')),
    private_key_enc  bytea       NOT NULL,                     -- PKCS#8 DER, encrypted
    public_jwk       jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    deactivated_at   timestamptz,                              -- when it stopped signing
    retire_at        timestamptz                               -- when it leaves the JWKS
);
-- At most one key signs at a time.
CREATE UNIQUE INDEX IF NOT EXISTS signing_keys_one_active ON auth.signing_keys ((true)) WHERE state = 'active';

CREATE TABLE IF NOT EXISTS auth.users (
    user_id               uuid        PRIMARY KEY,
    username              text        NOT NULL UNIQUE,
    email                 text        NOT NULL DEFAULT '',
    display_name          text        NOT NULL DEFAULT '',
    roles                 text[]      NOT NULL,
    disabled              boolean     NOT NULL DEFAULT false,
    password_hash         text        NOT NULL,
    password_changed_at   timestamptz NOT NULL DEFAULT now(),
    mfa_enabled           boolean     NOT NULL DEFAULT false,
    totp_secret_enc       bytea,
    totp_pending_enc      bytea,                              -- enrollment awaiting ConfirmTotp
    totp_pending_until    timestamptz,
    failed_login_count    integer     NOT NULL DEFAULT 0,
    locked_until          timestamptz,
    last_login_at         timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS auth.recovery_codes (
    user_id    uuid        NOT NULL REFERENCES auth.users (user_id) ON DELETE CASCADE,
    code_hmac  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz,
    PRIMARY KEY (user_id, code_hmac)
);

-- One row per refresh token ever issued; a family is one login's chain of rotations.
CREATE TABLE IF NOT EXISTS auth.refresh_tokens (
    token_hash         text        PRIMARY KEY,
    family_id          uuid        NOT NULL,
    user_id            uuid        NOT NULL REFERENCES auth.users (user_id) ON DELETE CASCADE,
    scope              text,                                   -- NULL = everything the roles allow
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    rotated_at         timestamptz,                            -- set when exchanged for a successor
    revoked_at         timestamptz,
    access_jti         text        NOT NULL,                   -- the access token issued with it
    access_expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON auth.refresh_tokens (family_id);
CREATE INDEX IF NOT EXISTS refresh_tokens_user ON auth.refresh_tokens (user_id);

CREATE TABLE IF NOT EXISTS auth.devices (
    device_id        text        PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('camera', 'telemetry_unit')),
    name             text        NOT NULL,
    labels           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    disabled         boolean     NOT NULL DEFAULT false,
    api_key_hash     text        NOT NULL,
    api_key_prefix   text        NOT NULL,
    created_by       text        NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_token_at    timestamptz
);

CREATE TABLE IF NOT EXISTS auth.device_secrets (
    device_id   text        NOT NULL REFERENCES auth.devices (device_id) ON DELETE CASCADE,
    key_id      text        NOT NULL,
    secret_enc  bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,                                   -- NULL = the current secret
    PRIMARY KEY (device_id, key_id)
);

CREATE TABLE IF NOT EXISTS auth.service_accounts (
    service_account_id  text        PRIMARY KEY,
    description         text        NOT NULL DEFAULT '',
    roles               text[]      NOT NULL,
    disabled            boolean     NOT NULL DEFAULT false,
    secret_hash         text        NOT NULL,
    secret_prefix       text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_token_at       timestamptz
);

CREATE TABLE IF NOT EXISTS auth.audit_events (
    audit_event_id  uuid        PRIMARY KEY,
    event_time      timestamptz NOT NULL DEFAULT now(),
    action          text        NOT NULL,
    success         boolean     NOT NULL,
    actor           text        NOT NULL DEFAULT '',
    actor_type      text        NOT NULL DEFAULT '',
    target          text        NOT NULL DEFAULT '',
    source_ip       text        NOT NULL DEFAULT '',
    user_agent      text        NOT NULL DEFAULT '',
    trace_id        text        NOT NULL DEFAULT '',
    details         jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS audit_events_time ON auth.audit_events (event_time DESC, audit_event_id DESC);
CREATE INDEX IF NOT EXISTS audit_events_actor ON auth.audit_events (actor, event_time DESC);
CREATE INDEX IF NOT EXISTS audit_events_target ON auth.audit_events (target, event_time DESC);
