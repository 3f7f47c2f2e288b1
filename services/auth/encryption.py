"""Secrets at rest: AES-256-GCM sealing and keyed digests under one deployment key.

Private signing keys, TOTP secrets and device HMAC secrets are stored sealed; recovery codes as keyed
HMACs (so a copy of the database alone does not allow guessing them offline). Both derive their own subkey
from the deployment key with HKDF, so the key is never used for two purposes. Each ciphertext is bound to
what it protects (``context``, e.g. ``"signing_key:<kid>"``) as associated data: a sealed value copied onto
another row does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

KEY_BYTES: Final = 32
_VERSION: Final = b"\x01"
_NONCE_BYTES: Final = 12


class SecretKeyError(Exception):
    """The deployment key is malformed, or is not the key that sealed a stored secret."""


def _subkey(master: bytes, purpose: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"itsmesh-auth/" + purpose
    ).derive(master)


class SecretBox:
    """Seals and opens secrets, and computes keyed digests, under the deployment key."""

    __slots__ = ("_aead", "_fingerprint", "_mac_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"the auth secret key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(_subkey(key, b"seal"))
        self._mac_key = _subkey(key, b"digest")
        self._fingerprint = hashlib.sha256(_subkey(key, b"fingerprint")).hexdigest()[:16]

    @property
    def fingerprint(self) -> str:
        """A non-secret id of the key, to tell in logs which key is in use."""
        return self._fingerprint

    def seal(self, plaintext: bytes, context: str) -> bytes:
        """``plaintext`` encrypted and authenticated, bound to ``context``."""
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        """The plaintext of ``seal(plaintext, context)``; raises ``SecretKeyError`` if it does not open."""
        if len(sealed) < 1 + _NONCE_BYTES or sealed[:1] != _VERSION:
            raise SecretKeyError(f"sealed value for {context} has an unknown format")
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, context.encode())
        except InvalidTag as exc:
            raise SecretKeyError(
                f"cannot decrypt {context}: ITSMESH_AUTH_SECRET_KEY is not the key it was sealed with"
            ) from exc

    def digest(self, value: str, purpose: str) -> str:
        """HMAC-SHA256 of ``value`` for ``purpose``, hex; compare with ``hmac.compare_digest``."""
        return hmac.new(self._mac_key, f"{purpose}\x00{value}".encode(), hashlib.sha256).hexdigest()


def decode_key(text: str) -> bytes:
    """The 32 key bytes of a base64 (standard or url-safe) string."""
    try:
        key = base64.urlsafe_b64decode(text.strip().replace("+", "-").replace("/", "_") + "==")
    except (binascii.Error, ValueError) as exc:
        raise SecretKeyError("ITSMESH_AUTH_SECRET_KEY is not base64") from exc
    if len(key) != KEY_BYTES:
        raise SecretKeyError(f"ITSMESH_AUTH_SECRET_KEY must decode to {KEY_BYTES} bytes, not {len(key)}")
    return key


def load_or_create_dev_key(data_dir: Path) -> bytes:
    """The development key under ``data_dir/auth/secret.key``, created (mode 0600) if missing.

    Logs where it is (never the key): production sets ITSMESH_AUTH_SECRET_KEY instead.
    """
    path = data_dir / "auth" / "secret.key"
    created = False
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        encoded = base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another instance created it first
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(encoded + "\n")
            created = True
    log.warning(
        "ITSMESH_AUTH_SECRET_KEY is not set: %s the development secret key; set the variable in production",
        "generated" if created else "using",
        extra={"path": str(path)},
    )
    return decode_key(path.read_text())
