"""Devices and service accounts: credentials shown once, client-credentials grant, the HMAC secret RPC."""

from __future__ import annotations

import asyncio
import base64
import time

import grpc
import pytest
from google.protobuf import field_mask_pb2

from itsmesh.v1 import alert_pb2, alert_pb2_grpc, auth_pb2, auth_pb2_grpc, streaming_pb2, streaming_pb2_grpc
from mesh.interceptors import BearerTokenInterceptor, Unauthenticated
from mesh.tokens import ServiceTokenSource
from services.auth.authority import SYSTEM
from services.auth.model import AuditQuery
from tests.integration.auth_stack import (
    bearer,
    expect_rpc_error,
    http_client,
    running_stack,
    unique,
    user_token,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def stack(infra):
    async with running_stack(infra) as running:
        yield running


@pytest.fixture(scope="module")
async def admin(stack) -> str:
    return await user_token(stack, "admin")


@pytest.fixture(scope="module")
async def service_token(stack, admin) -> str:
    """A token of a new service account, obtained with the client-credentials grant over REST."""
    async with http_client(stack) as client:
        created = await client.post(
            "/service-accounts",
            json={"service_account_id": unique("streaming"), "description": "verifies telemetry"},
            headers={"authorization": f"Bearer {admin}"},
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["service_account"]["roles"] == ["service"]
        secret = body["client_secret"]
        assert body["service_account"]["secret_prefix"] == secret[:12]
        token = await client.post(
            "/auth/token",
            data={"grant_type": "client_credentials"},
            auth=(body["service_account"]["service_account_id"], secret),
        )
    assert token.status_code == 200, token.text
    assert token.json()["roles"] == ["service"]
    assert "refresh_token" not in token.json()
    return token.json()["access_token"]


async def _register(stack, admin: str, device_id: str) -> auth_pb2.RegisterDeviceResponse:
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        return await stub.RegisterDevice(
            auth_pb2.RegisterDeviceRequest(
                device=auth_pb2.Device(
                    device_id=device_id,
                    kind=auth_pb2.DEVICE_KIND_CAMERA,
                    name="A4 km 12.3",
                    labels={"site": "a4"},
                )
            ),
            metadata=bearer(admin),
            timeout=5,
        )


async def _exchange(stack, client_id: str, secret: str) -> auth_pb2.TokenResponse:
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        return await stub.ExchangeClientCredentials(
            auth_pb2.ExchangeClientCredentialsRequest(client_id=client_id, client_secret=secret), timeout=5
        )


async def test_a_registered_device_exchanges_its_api_key_for_a_device_token_that_streams_only(
    stack, admin, pg
):
    device_id = unique("cam")
    registered = await _register(stack, admin, device_id)
    credentials = registered.credentials
    assert credentials.api_key.startswith("imk_")
    assert len(credentials.hmac_secret) == 32
    assert registered.device.api_key_prefix == credentials.api_key[:12]
    assert registered.device.hmac_key_id == credentials.hmac_key_id

    # the API key is stored hashed and the HMAC secret sealed: neither appears in the database
    row = await pg.fetchrow("SELECT * FROM auth.devices WHERE device_id = $1", device_id)
    assert credentials.api_key not in str(dict(row))
    secret_row = await pg.fetchrow(
        "SELECT secret_enc FROM auth.device_secrets WHERE device_id = $1", device_id
    )
    assert credentials.hmac_secret not in bytes(secret_row["secret_enc"])

    reply = await _exchange(stack, device_id, credentials.api_key)
    assert list(reply.roles) == [auth_pb2.ROLE_DEVICE]
    assert reply.subject == device_id
    assert not reply.refresh_token
    async with http_client(stack) as client:
        form = await client.post(
            "/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": device_id,
                "client_secret": credentials.api_key,
            },
        )
        assert form.status_code == 200
        wrong = await client.post(
            "/auth/token",
            data={"grant_type": "client_credentials", "client_id": device_id, "client_secret": "imk_wrong"},
        )
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"

    async with grpc.aio.insecure_channel(stack.address("streaming")) as channel:
        stub = streaming_pb2_grpc.StreamingServiceStub(channel)
        stream = stub.StreamTelemetry(iter(()), metadata=bearer(reply.access_token), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in stream:
                pass
        # authorized: the stream gets as far as the handler, which wants an `open` message first
        assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        denied = await expect_rpc_error(
            stub.GetCamera(
                streaming_pb2.GetCameraRequest(camera_id=device_id), metadata=bearer(reply.access_token)
            )
        )
    assert (denied.code, denied.metadata["permission"]) == (grpc.StatusCode.PERMISSION_DENIED, "cameras:read")

    events = await stack.authority.store.list_audit_events(AuditQuery(target=device_id, page_size=20))
    actions = [(e.action, e.success) for e in events.items]
    assert ("DEVICE_REGISTERED", True) in actions
    assert actions.count(("CLIENT_CREDENTIALS_GRANT", True)) == 2
    assert ("CLIENT_CREDENTIALS_GRANT", False) in actions


async def test_only_services_read_device_secrets_and_every_read_is_audited(stack, admin, service_token):
    device_id = unique("gps")
    credentials = (await _register(stack, admin, device_id)).credentials
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        secret = await stub.GetDeviceSecret(
            auth_pb2.GetDeviceSecretRequest(device_id=device_id), metadata=bearer(service_token), timeout=5
        )
        assert (secret.key_id, secret.hmac_secret) == (credentials.hmac_key_id, credentials.hmac_secret)
        assert not secret.HasField("expire_time")
        denied = await expect_rpc_error(
            stub.GetDeviceSecret(auth_pb2.GetDeviceSecretRequest(device_id=device_id), metadata=bearer(admin))
        )
        assert (denied.code, denied.metadata["permission"]) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "device_secrets:read",
        )

        # a rotated secret: the new one is current, the old one stays readable for the grace period
        rotated = await stub.RotateDeviceCredentials(
            auth_pb2.RotateDeviceCredentialsRequest(
                device_id=device_id, rotate_hmac_secret=True, rotate_api_key=True
            ),
            metadata=bearer(admin),
            timeout=5,
        )
        current = await stub.GetDeviceSecret(
            auth_pb2.GetDeviceSecretRequest(device_id=device_id), metadata=bearer(service_token), timeout=5
        )
        previous = await stub.GetDeviceSecret(
            auth_pb2.GetDeviceSecretRequest(device_id=device_id, key_id=credentials.hmac_key_id),
            metadata=bearer(service_token),
            timeout=5,
        )
    assert current.hmac_secret == rotated.hmac_secret != credentials.hmac_secret
    assert previous.hmac_secret == credentials.hmac_secret
    assert 14 * 60 < previous.expire_time.ToSeconds() - time.time() <= 15 * 60
    old_key = await expect_rpc_error(_exchange(stack, device_id, credentials.api_key))
    assert old_key.reason == "INVALID_CLIENT", "a rotated API key stops working at once"
    assert (await _exchange(stack, device_id, rotated.api_key)).access_token

    async with http_client(stack) as client:
        over_rest = await client.get(
            f"/devices/{device_id}/secret", headers={"authorization": f"Bearer {service_token}"}
        )
    assert base64.b64decode(over_rest.json()["hmac_secret"]) == rotated.hmac_secret
    reads = await stack.authority.store.list_audit_events(
        AuditQuery(target=device_id, actions=("DEVICE_SECRET_READ",), page_size=20)
    )
    assert len(reads.items) == 4
    assert {e.actor_type for e in reads.items} == {"service"}


async def test_a_disabled_or_deleted_device_gets_no_token(stack, admin):
    device_id = unique("cam")
    api_key = (await _register(stack, admin, device_id)).credentials.api_key
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        await stub.UpdateDevice(
            auth_pb2.UpdateDeviceRequest(
                device=auth_pb2.Device(device_id=device_id, disabled=True),
                update_mask=field_mask_pb2.FieldMask(paths=["disabled"]),
            ),
            metadata=bearer(admin),
            timeout=5,
        )
        assert (await expect_rpc_error(_exchange(stack, device_id, api_key))).reason == "INVALID_CLIENT"
        await stub.DeleteDevice(
            auth_pb2.DeleteDeviceRequest(device_id=device_id), metadata=bearer(admin), timeout=5
        )
        gone = await expect_rpc_error(
            stub.GetDevice(auth_pb2.GetDeviceRequest(device_id=device_id), metadata=bearer(admin), timeout=5)
        )
    assert gone.code == grpc.StatusCode.NOT_FOUND


async def test_registering_a_taken_device_id_is_already_exists_and_bad_input_names_the_field(stack, admin):
    device_id = unique("cam")
    await _register(stack, admin, device_id)
    taken = await expect_rpc_error(_register(stack, admin, device_id))
    assert taken.code == grpc.StatusCode.ALREADY_EXISTS
    bad = await expect_rpc_error(_register(stack, admin, "Bad Id!"))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.field_violations[0][0] == "device.device_id"


async def test_a_service_token_reaches_what_services_need(stack, service_token):
    async with grpc.aio.insecure_channel(stack.address("streaming")) as channel:
        stub = streaming_pb2_grpc.StreamingServiceStub(channel)
        reply = await stub.ListCameras(
            streaming_pb2.ListCamerasRequest(), metadata=bearer(service_token), timeout=5
        )
    assert reply.total_size >= 0


async def test_a_service_calls_another_with_a_service_token_from_its_client_credentials(stack):
    account, secret = await stack.authority.create_service_account(
        SYSTEM, service_account_id=unique("analytics"), description="raises alerts", roles=("service",)
    )
    source = ServiceTokenSource(stack.auth_http, account.service_account_id, secret)
    interceptors = [BearerTokenInterceptor(source)]
    async with grpc.aio.insecure_channel(stack.address("alert"), interceptors=interceptors) as channel:
        stub = alert_pb2_grpc.AlertServiceStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.RaiseAlert(alert_pb2.RaiseAlertRequest(), timeout=5)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, "authorized, then validated"
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.CreateSilence(alert_pb2.CreateSilenceRequest(), timeout=5)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    grants = await stack.authority.store.list_audit_events(
        AuditQuery(target=account.service_account_id, actions=("CLIENT_CREDENTIALS_GRANT",), page_size=10)
    )
    assert len(grants.items) == 1, "one token served every call"
    bad = ServiceTokenSource(stack.auth_http, account.service_account_id, "ims_not-the-secret")
    with pytest.raises(Unauthenticated, match="refused"):
        await bad()


async def test_tokens_already_issued_to_a_deleted_device_stop_working_at_once(stack, admin):
    device_id = unique("cam")
    api_key = (await _register(stack, admin, device_id)).credentials.api_key
    token = (await _exchange(stack, device_id, api_key)).access_token

    async def submit() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(stack.address("streaming")) as channel:
            call = streaming_pb2_grpc.StreamingServiceStub(channel).SubmitTelemetry(
                streaming_pb2.SubmitTelemetryRequest(), metadata=bearer(token), timeout=5
            )
            return (await expect_rpc_error(call)).code

    # Authorized (the empty request itself is then refused or unhandled, which is not the point here).
    assert await submit() != grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        await auth_pb2_grpc.AuthServiceStub(channel).DeleteDevice(
            auth_pb2.DeleteDeviceRequest(device_id=device_id), metadata=bearer(admin), timeout=5
        )
    deadline = time.monotonic() + 3.0
    while (code := await submit()) != grpc.StatusCode.UNAUTHENTICATED:
        assert time.monotonic() < deadline, f"the deleted device's token still gets {code.name}"
        await asyncio.sleep(0.05)

    # A device registered again under the same id gets tokens that work.
    api_key = (await _register(stack, admin, device_id)).credentials.api_key
    await asyncio.sleep(1.1)  # iat has one-second resolution; the new token must postdate the revocation
    token = (await _exchange(stack, device_id, api_key)).access_token
    assert await submit() != grpc.StatusCode.UNAUTHENTICATED
