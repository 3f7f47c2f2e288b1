"""Password hashing with argon2id (PHC string format, as argon2-cffi writes it) and the password policy.

Parameters follow the OWASP password storage recommendation for argon2id: 19 MiB, 2 passes, 1 lane
(≈ 50 ms per hash here). Hashing and verifying are CPU-bound; the adapters run them in a worker thread.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Final

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

MIN_LENGTH: Final = 12
MAX_LENGTH: Final = 1024
_MEMORY_KIB: Final = 19 * 1024
_ITERATIONS: Final = 2
_LANES: Final = 1


def password_problem(password: str) -> str | None:
    """Why ``password`` is not acceptable, or None if it is."""
    if len(password) < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters"
    if password.strip() != password:
        return "must not start or end with white space"
    return None


def hash_password(password: str) -> str:
    """An argon2id PHC string (``$argon2id$v=19$m=…,t=…,p=…$salt$hash``) for ``password``."""
    kdf = Argon2id(
        salt=os.urandom(16), length=32, iterations=_ITERATIONS, lanes=_LANES, memory_cost=_MEMORY_KIB
    )
    return kdf.derive_phc_encoded(password.encode())


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches the PHC string ``encoded`` (constant time in the digest)."""
    try:
        Argon2id.verify_phc_encoded(password.encode(), encoded)
    except (InvalidKey, ValueError):
        return False
    return True


@cache
def _dummy_hash() -> str:
    return hash_password("itsmesh-no-such-user")


def burn_verification(password: str) -> None:
    """Spend the time a real verification takes, so unknown usernames answer as slowly as known ones."""
    verify_password(password, _dummy_hash())
