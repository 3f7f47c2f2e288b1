"""TOTP against RFC 6238's own test vectors and an independent implementation written here."""

from __future__ import annotations

import base64
import hmac
from urllib.parse import parse_qs, urlsplit

import pytest

from services.auth import totp

RFC_SECRET = b"12345678901234567890"  # RFC 6238 Appendix B, SHA-1


def independent_code(secret: bytes, unix_time: float, digits: int = 6) -> str:
    """RFC 6238 written out again without the module: T = floor(t / 30), dynamic truncation of HMAC-SHA1."""
    counter = int(unix_time) // 30
    digest = hmac.digest(secret, counter.to_bytes(8, "big"), "sha1")
    offset = digest[19] & 0x0F
    binary = int.from_bytes(digest[offset : offset + 4], "big") & 0x7FFFFFFF
    return format(binary % 10**digits, f"0{digits}d")


@pytest.mark.parametrize(
    ("unix_time", "eight_digits"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_rfc_6238_vectors(unix_time, eight_digits):
    assert totp.hotp(RFC_SECRET, totp.step_at(unix_time), digits=8) == eight_digits
    assert totp.code_at(RFC_SECRET, unix_time) == eight_digits[-6:]
    assert independent_code(RFC_SECRET, unix_time, 8) == eight_digits


def test_codes_match_within_one_step_either_side_and_report_the_step():
    secret = totp.new_secret()
    now = 1_800_000_015.0
    step = totp.step_at(now)
    for offset in (-1, 0, 1):
        code = independent_code(secret, now + 30 * offset)
        assert totp.match(secret, code, now) == step + offset
    assert totp.match(secret, independent_code(secret, now + 60), now) is None
    assert totp.match(secret, independent_code(secret, now - 60), now) is None


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12a456", "١٢٣٤٥٦", " 12345"])
def test_malformed_codes_never_match(code):
    assert totp.match(RFC_SECRET, code, 59) is None


def test_the_otpauth_uri_carries_secret_issuer_and_parameters():
    secret = totp.new_secret()
    uri = totp.otpauth_uri(secret, "ana lyst@x", "itsmesh")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert parts.path == "/itsmesh%3Aana%20lyst%40x"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert base64.b32decode(query["secret"] + "=" * (-len(query["secret"]) % 8)) == secret
    assert query == {**query, "issuer": "itsmesh", "algorithm": "SHA1", "digits": "6", "period": "30"}
    assert len(secret) == 20


def test_recovery_codes_are_distinct_readable_and_normalise():
    codes = totp.new_recovery_codes()
    assert len(codes) == len(set(codes)) == 10
    for code in codes:
        assert len(code) == 11
        assert code[5] == "-"
        assert not set(code) & set("01ilo")
    assert totp.normalize_recovery_code(" ABCDE-fghjk ") == "abcdefghjk"
