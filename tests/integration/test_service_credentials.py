"""Services get their own accounts on one machine and send service tokens on their outgoing calls."""

from __future__ import annotations

import stat

import grpc
import pytest

from itsmesh.v1 import auth_pb2, auth_pb2_grpc
from mesh.credentials import ServiceCredentialSettings, credentials_path, service_interceptors
from services.auth.authority import SYSTEM
from tests.integration.auth_stack import running_stack, unique

pytestmark = pytest.mark.integration


async def test_provisioned_account_file_and_token(infra):
    name = unique("probe")
    async with running_stack(infra, with_services=False, provision_service_accounts=f"{name}, ") as stack:
        data_dir = stack.authority.settings.data_dir
        path = credentials_path(data_dir, name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        account = await stack.authority.store.get_service_account(f"svc-{name}")
        assert account is not None
        assert account.roles == ("service",)

        settings = ServiceCredentialSettings(auth_url=stack.auth_http)
        interceptors = service_interceptors(name, settings, data_dir=data_dir)
        device = unique("cam")
        await stack.authority.register_device(SYSTEM, device_id=device, kind="camera", name=device, labels={})
        async with grpc.aio.insecure_channel(stack.auth_grpc, interceptors=interceptors) as channel:
            # GetDeviceSecret is for the service role only: it succeeds only with the provisioned token.
            secret = await auth_pb2_grpc.AuthServiceStub(channel).GetDeviceSecret(
                auth_pb2.GetDeviceSecretRequest(device_id=device), timeout=10
            )
        assert secret.hmac_secret

        # A second start keeps the account and the file; a missing file gets a new account and secret.
        before = path.read_text()
        await stack.authority.provision_service_accounts()
        assert path.read_text() == before
        path.unlink()
        await stack.authority.provision_service_accounts()
        assert path.read_text() != before
        path.unlink()


async def test_no_credentials_sends_no_token(infra, tmp_path):
    async with running_stack(infra, with_services=False) as stack:
        settings = ServiceCredentialSettings(auth_url=stack.auth_http)
        interceptors = service_interceptors("nobody", settings, data_dir=tmp_path)
        async with grpc.aio.insecure_channel(stack.auth_grpc, interceptors=interceptors) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await auth_pb2_grpc.AuthServiceStub(channel).GetDeviceSecret(
                    auth_pb2.GetDeviceSecretRequest(device_id="any"), timeout=10
                )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
