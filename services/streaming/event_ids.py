"""Deterministic event ids: the same publication of the same item always carries the same id."""

from __future__ import annotations

import hashlib


def uuid5_text(namespace: bytes, name: str) -> str:
    """Exactly ``str(uuid.uuid5(UUID(bytes=namespace), name))`` (RFC 4122 §4.3), computed without the UUID
    object: a quarter of the cost on the per-item paths of ingest."""
    raw = bytearray(hashlib.sha1(namespace + name.encode(), usedforsecurity=False).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
