"""The mesh authenticator's shell with an in-memory JWKS: fetch rules, cache, revocation, permissions."""

from __future__ import annotations

import asyncio
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mesh.interceptors import PermissionDenied, Unauthenticated
from mesh.status import StatusError
from mesh.testing import FakeClock
from mesh.tokens import ANONYMOUS, JwtAuthenticator, RefetchBudget, TokenRejected
from services.auth.keys import public_jwk

ISSUER, AUDIENCE = "itsmesh-auth", "itsmesh"
GET_CAMERA = "/itsmesh.v1.StreamingService/GetCamera"
DELETE_CAMERA = "/itsmesh.v1.StreamingService/DeleteCamera"


class MemoryJwks:
    """A JWKS source whose keys a test changes, counting fetches; optionally failing or slow."""

    def __init__(self, *keys: rsa.RSAPrivateKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.failing = False
        self.delay_s = 0.0

    async def fetch(self):
        self.fetches += 1
        await asyncio.sleep(self.delay_s)
        if self.failing:
            raise OSError("connection refused")
        return {"keys": [public_jwk(k.public_key()) for k in self.keys]}

    async def aclose(self) -> None:
        return None


@pytest.fixture(scope="module")
def keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


def token(key, *, roles=("viewer",), jti="j1", exp_in=600) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u1",
        "roles": list(roles),
        "iat": now,
        "exp": now + exp_in,
        "jti": jti,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": public_jwk(key.public_key())["kid"]})


def md(value: str):
    return (("authorization", f"Bearer {value}"),)


def authenticator(source, **options) -> JwtAuthenticator:
    return JwtAuthenticator(source, issuer=ISSUER, audience=AUDIENCE, **options)


async def test_the_jwks_is_fetched_once_then_tokens_verify_locally_and_from_the_cache(keys):
    source = MemoryJwks(keys[0])
    auth = authenticator(source)
    for i in range(5):
        principal = await auth.authenticate(GET_CAMERA, md(token(keys[0], jti=f"j{i}")))
        assert principal.subject == "u1"
    same = token(keys[0], jti="again")
    assert await auth.authenticate(GET_CAMERA, md(same)) is await auth.authenticate(GET_CAMERA, md(same))
    assert source.fetches == 1


async def test_an_unknown_kid_refetches_and_concurrent_misses_share_one_fetch(keys):
    source = MemoryJwks(keys[0])
    auth = authenticator(source)
    await auth.authenticate(GET_CAMERA, md(token(keys[0])))
    source.keys.append(keys[1])  # a rotation at the auth service
    source.delay_s = 0.05
    results = await asyncio.gather(
        *(auth.authenticate(GET_CAMERA, md(token(keys[1], jti=f"n{i}"))) for i in range(10))
    )
    assert len(results) == 10
    assert source.fetches == 2


async def test_unknown_kids_beyond_the_budget_are_unavailable_with_retry_info(keys):
    clock = FakeClock(1000.0)
    source = MemoryJwks(keys[0])
    auth = authenticator(source, refetch_burst=2, min_refetch_interval_s=5.0, clock=clock.now)
    forged = token(keys[1])  # signed by a key the JWKS never lists
    for _ in range(2):
        with pytest.raises(TokenRejected) as unknown:
            await auth.verify(forged, now=time.time())
        assert unknown.value.why == "UNKNOWN_KEY"
    with pytest.raises(StatusError) as limited:
        await auth.verify(forged, now=time.time())
    assert limited.value.grpc_code is grpc.StatusCode.UNAVAILABLE
    assert limited.value.reason == "JWKS_REFETCH_LIMITED"
    assert limited.value.retry_delay_s == pytest.approx(5.0)
    assert source.fetches == 2
    clock.advance(5.0)
    with pytest.raises(TokenRejected):
        await auth.verify(forged, now=time.time())
    assert source.fetches == 3


def test_the_refetch_budget_refills_one_fetch_per_interval():
    budget = RefetchBudget(burst=3, interval_s=10)
    assert [budget.try_take(0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.wait_s() == pytest.approx(10)
    assert not budget.try_take(9.0)
    assert budget.try_take(10.0)
    assert [budget.try_take(100.0) for _ in range(3)] == [True, True, True]
    assert not budget.try_take(100.0), "never more than the burst"


async def test_an_unreachable_jwks_is_unavailable_not_a_bad_token(keys):
    source = MemoryJwks(keys[0])
    source.failing = True
    auth = authenticator(source)
    with pytest.raises(StatusError) as failed:
        await auth.authenticate(GET_CAMERA, md(token(keys[0])))
    assert (failed.value.grpc_code, failed.value.reason, failed.value.retriable) == (
        grpc.StatusCode.UNAVAILABLE,
        "JWKS_UNAVAILABLE",
        True,
    )


async def test_a_revoked_token_is_refused_even_from_the_cache(keys):
    auth = authenticator(MemoryJwks(keys[0]))
    value = token(keys[0], jti="to-revoke")
    await auth.authenticate(GET_CAMERA, md(value))
    auth.revoked.add("to-revoke", time.time() + 600)
    with pytest.raises(TokenRejected) as revoked:
        await auth.authenticate(GET_CAMERA, md(value))
    assert revoked.value.reason == "TOKEN_REVOKED"


async def test_the_method_permission_is_enforced_and_named(keys):
    auth = authenticator(MemoryJwks(keys[0]))
    viewer = md(token(keys[0], roles=("viewer",)))
    with pytest.raises(PermissionDenied) as denied:
        await auth.authenticate(DELETE_CAMERA, viewer)
    assert "cameras:delete" in denied.value.message
    with pytest.raises(PermissionDenied) as unmapped:
        await auth.authenticate("/itsmesh.v1.StreamingService/Nope", viewer)
    assert unmapped.value.reason == "METHOD_NOT_MAPPED"


async def test_public_methods_need_no_token_and_others_do(keys):
    auth = authenticator(MemoryJwks(keys[0]))
    assert await auth.authenticate("/itsmesh.v1.AuthService/Login", ()) is ANONYMOUS
    assert await auth.authorize_route("GET /.well-known/jwks.json", None) is ANONYMOUS
    with pytest.raises(Unauthenticated) as missing:
        await auth.authenticate(GET_CAMERA, ())
    assert missing.value.reason == "MISSING_CREDENTIALS"
    with pytest.raises(Unauthenticated):
        await auth.authorize_route("GET /audit", "Basic YTpi")
