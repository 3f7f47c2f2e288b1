"""Alert identity: the fingerprint of the identifying labels, which deduplicates raises."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping


def fingerprint(labels: Mapping[str, str]) -> str:
    """SHA-256 (hex) of the labels sorted by name; equal label sets give equal fingerprints.

    The encoding is JSON of ``[[name, value], ...]`` so that no choice of names or values can make two
    different label sets collide (a plain ``name=value`` join could).
    """
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
