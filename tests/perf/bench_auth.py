"""Token verification in the auth interceptor's authenticator versus a bare PyJWT ``jwt.decode``.

Measured in one process with the same RS256 key, claims and token sizes: ``jwt.decode`` with a loaded public
key (the baseline), ``JwtAuthenticator.authenticate`` on tokens it has not seen (cold: bearer parsing, JOSE
header, kid lookup, RS256 signature, claims, revocation check, permissions, authorize, cache insert) and on
a token it has seen (cached: one BLAKE2b digest and an LRU lookup, plus the revocation check and authorize).
The JWKS comes from an in-memory source and is fetched once; the run asserts no further fetch happened,
i.e. nothing on the measured path touches the network.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from infrastructure.embedded import InfraUrls
from mesh.permissions import ROLE_PERMISSIONS, default_scope
from mesh.tokens import JwtAuthenticator
from services.auth.keys import public_jwk
from tests.perf.results import BenchResult

ISSUER, AUDIENCE = "itsmesh-auth", "itsmesh"
METHOD = "/itsmesh.v1.StreamingService/GetCamera"


class _StaticJwks:
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document

    async def fetch(self) -> Mapping[str, Any]:
        return self.document

    async def aclose(self) -> None:
        return None


def _tokens(key: rsa.RSAPrivateKey, kid: str, count: int) -> list[str]:
    now = int(time.time())
    scope = default_scope(["operator"])
    return [
        jwt.encode(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": str(uuid.uuid4()),
                "sub_type": "user",
                "username": "operator-1",
                "roles": ["operator"],
                "scope": scope,
                "iat": now,
                "nbf": now,
                "exp": now + 900,
                "jti": uuid.uuid4().hex,
                "sid": str(uuid.uuid4()),
            },
            key,
            algorithm="RS256",
            headers={"kid": kid, "typ": "at+jwt"},
        )
        for _ in range(count)
    ]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def run(quick: bool, urls: InfraUrls) -> list[BenchResult]:
    """Alternate baseline, cold and cached rounds so machine noise hits all three alike (urls: unused)."""
    del urls  # pure CPU: no server is involved, on purpose
    count = 400 if quick else 2000
    rounds = 3 if quick else 5
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = public_jwk(key.public_key())
    public = key.public_key()
    tokens = await asyncio.to_thread(_tokens, key, jwk["kid"], count * rounds + 1)
    authenticator = JwtAuthenticator(
        _StaticJwks({"keys": [jwk]}), issuer=ISSUER, audience=AUDIENCE, cache_size=count * rounds + 8
    )
    hot = tokens.pop()
    hot_metadata = (("authorization", f"Bearer {hot}"),)
    principal = await authenticator.authenticate(METHOD, hot_metadata)  # warms up and fetches the JWKS once
    assert principal.permissions == ROLE_PERMISSIONS["operator"]

    bare_us, cold_us, cached_us = [], [], []
    for round_no in range(rounds):
        batch = tokens[round_no * count : (round_no + 1) * count]
        metadata = [(("authorization", f"Bearer {t}"),) for t in batch]

        started = time.perf_counter()
        for token in batch:
            jwt.decode(token, public, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)
        bare_us.append((time.perf_counter() - started) / count * 1e6)

        started = time.perf_counter()
        for entry in metadata:
            await authenticator.authenticate(METHOD, entry)
        cold_us.append((time.perf_counter() - started) / count * 1e6)

        repeats = count * 10
        started = time.perf_counter()
        for _ in range(repeats):
            await authenticator.authenticate(METHOD, hot_metadata)
        cached_us.append((time.perf_counter() - started) / repeats * 1e6)

    if authenticator.jwks_fetches != 1:
        raise AssertionError(f"the JWKS was fetched {authenticator.jwks_fetches} times; expected once")
    bare, cold, cached = _median(bare_us), _median(cold_us), _median(cached_us)
    return [
        BenchResult(
            name="auth_verify_cold_us",
            value=cold,
            unit="µs/call",
            baseline=bare,
            baseline_name="bare jwt.decode RS256",
            target="ratio ≤ 1.2",
        ),
        BenchResult(
            name="auth_verify_cached_us",
            value=cached,
            unit="µs/call",
            baseline=bare,
            baseline_name="bare jwt.decode RS256",
            target="≤ 10 µs",
        ),
        BenchResult(
            name="auth_validations_per_s",
            value=1e6 / cold,
            unit="validations/s",
            baseline=1e6 / bare,
            baseline_name="bare jwt.decode RS256",
            target="≥ 20,000/s per core",
        ),
    ]
