"""Secrets at rest: AES-GCM sealing bound to its context, keyed digests, and the development key file."""

from __future__ import annotations

import base64
import logging
import os
import stat

import pytest

from services.auth.encryption import SecretBox, SecretKeyError, decode_key, load_or_create_dev_key

KEY = bytes(range(32))


def test_a_sealed_secret_opens_only_with_the_same_key_and_context():
    box = SecretBox(KEY)
    sealed = box.seal(b"private key bytes", "signing_key:a")
    assert b"private key bytes" not in sealed
    assert box.open(sealed, "signing_key:a") == b"private key bytes"
    with pytest.raises(SecretKeyError, match="signing_key:b"):
        box.open(sealed, "signing_key:b")
    with pytest.raises(SecretKeyError, match="ITSMESH_AUTH_SECRET_KEY"):
        SecretBox(bytes(32)).open(sealed, "signing_key:a")
    with pytest.raises(SecretKeyError, match="format"):
        box.open(b"\x02" + sealed[1:], "signing_key:a")
    assert box.seal(b"x", "c") != box.seal(b"x", "c"), "a fresh nonce every time"


def test_digests_are_keyed_and_separated_by_purpose():
    box, other = SecretBox(KEY), SecretBox(bytes(32))
    assert box.digest("code", "recovery:u1") == box.digest("code", "recovery:u1")
    assert box.digest("code", "recovery:u1") != box.digest("code", "recovery:u2")
    assert box.digest("code", "recovery:u1") != other.digest("code", "recovery:u1")
    assert box.fingerprint != other.fingerprint
    assert len(box.fingerprint) == 16


def test_the_key_setting_is_base64_of_32_bytes():
    assert decode_key(base64.b64encode(KEY).decode()) == KEY
    assert decode_key(base64.urlsafe_b64encode(KEY).decode().rstrip("=")) == KEY
    with pytest.raises(SecretKeyError, match="32 bytes"):
        decode_key(base64.b64encode(b"short").decode())
    with pytest.raises(SecretKeyError, match="32 bytes"):
        SecretBox(b"short")


def test_the_development_key_is_created_once_private_and_its_path_logged_not_its_value(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        first = load_or_create_dev_key(tmp_path)
    path = tmp_path / "auth" / "secret.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_dev_key(tmp_path) == first
    text = caplog.text
    assert "generated the development secret key" in text
    assert path.read_text().strip() not in text
