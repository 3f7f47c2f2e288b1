"""TOTP (RFC 6238 over RFC 4226 HOTP: HMAC-SHA1, 30 s steps, 6 digits) and recovery codes (no I/O).

``match`` accepts the current step and one step either side (clock drift) and returns the matched step
counter; the caller stores the last accepted counter per user and refuses counters not above it, which
makes every code single-use within its window (RFC 6238 §5.2). Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
import struct
from typing import Final
from urllib.parse import quote, urlencode

import segno

STEP_S: Final = 30
DIGITS: Final = 6
WINDOW_STEPS: Final = 1
SECRET_BYTES: Final = 20
"""160-bit secrets, the size RFC 4226 recommends for HMAC-SHA1."""
RECOVERY_CODE_COUNT: Final = 10
_RECOVERY_ALPHABET: Final = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i


def new_secret() -> bytes:
    """A fresh shared secret."""
    return secrets.token_bytes(SECRET_BYTES)


def secret_base32(secret: bytes) -> str:
    """The secret as authenticator apps take it: base32 without padding."""
    return base64.b32encode(secret).decode().rstrip("=")


def hotp(secret: bytes, counter: int, digits: int = DIGITS) -> str:
    """RFC 4226 HOTP value of ``counter``."""
    digest = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFF_FFFF
    return str(value % 10**digits).zfill(digits)


def step_at(unix_time: float) -> int:
    """The TOTP step counter at ``unix_time``."""
    return int(unix_time // STEP_S)


def code_at(secret: bytes, unix_time: float) -> str:
    """The TOTP code at ``unix_time``."""
    return hotp(secret, step_at(unix_time))


def is_well_formed(code: str) -> bool:
    """Whether ``code`` looks like a TOTP code (six ASCII digits)."""
    return len(code) == DIGITS and code.isascii() and code.isdigit()


def match(secret: bytes, code: str, now: float, window: int = WINDOW_STEPS) -> int | None:
    """The step counter whose code equals ``code`` within ±``window`` steps of ``now``, else None.

    Every candidate is compared (no early exit), so the time taken does not reveal which step matched.
    """
    if not is_well_formed(code):
        return None
    current = step_at(now)
    found: int | None = None
    for counter in range(current - window, current + window + 1):
        if hmac.compare_digest(hotp(secret, counter), code) and found is None:
            found = counter
    return found


def otpauth_uri(secret: bytes, account: str, issuer: str) -> str:
    """The ``otpauth://totp/…`` URI authenticator apps import (Google Authenticator key URI format)."""
    label = quote(f"{issuer}:{account}", safe="")
    query = urlencode(
        {
            "secret": secret_base32(secret),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": STEP_S,
        }
    )
    return f"otpauth://totp/{label}?{query}"


def new_recovery_codes(count: int = RECOVERY_CODE_COUNT) -> list[str]:
    """Fresh one-time recovery codes, ``xxxxx-xxxxx`` (about 50 bits each)."""
    return [
        "-".join("".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(5)) for _ in range(2))
        for _ in range(count)
    ]


def normalize_recovery_code(code: str) -> str:
    """A recovery code as stored: lower case, without spaces or dashes."""
    return "".join(ch for ch in code.lower() if ch.isalnum())


def qr_png(uri: str) -> bytes:
    """A QR code of ``uri`` as PNG bytes, for authenticator apps that scan rather than paste."""
    buffer = io.BytesIO()
    segno.make(uri, error="m").save(buffer, kind="png", scale=6, border=2)
    return buffer.getvalue()
