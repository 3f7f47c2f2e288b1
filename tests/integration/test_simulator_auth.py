"""The simulator against real auth and a streaming service verifying its tokens: it creates its own
operator user once (with the first admin's password), registers cameras and devices, streams frames and
signed telemetry with device credentials, and later runs log in from its credentials file alone."""

from __future__ import annotations

import asyncio
import stat

import pytest

from itsmesh.v1 import events_pb2
from mesh.credentials import read_credentials
from mesh.events import TELEMETRY_READINGS_TOPIC
from services.simulator.access import SimulatorAuthError
from services.simulator.config import SimulatorSettings
from services.simulator.driver import RunTarget, Simulation
from services.simulator.plan import SimulationOptions, build_plan
from services.simulator.truth import read_truth
from tests.integration.auth_stack import PASSWORD, create_user, running_stack, unique
from tests.integration.streaming_host import records, telemetry_host

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def stack(infra):
    async with running_stack(infra, with_services=False) as running:
        yield running


@pytest.fixture(scope="module")
async def host(infra, stack):
    async with telemetry_host(infra, stack) as running:
        yield running


async def test_first_run_creates_the_user_and_streams_as_each_device(
    infra, stack, host, kafka_bootstrap, tmp_path
):
    admin, _ = await create_user(stack.authority, "admin")
    common = {
        "streaming_address": f"127.0.0.1:{host.grpc_port}",
        "auth_address": stack.auth_grpc,
        "auth_url": stack.auth_http,
        "data_dir": tmp_path,
        "username": unique("sim"),
    }
    first = SimulatorSettings(**common, admin_username=admin, admin_password=PASSWORD)
    options = SimulationOptions(
        cameras=1, devices=2, fps=5.0, duration_s=4.0, readings_per_second=2.0, seed=21, prefix=unique("t")
    )
    plan = build_plan(options)
    progress = await Simulation(plan, RunTarget(first), truth_path=tmp_path / "truth.jsonl").run(
        asyncio.Event()
    )

    assert read_credentials(first.credentials_file) is not None
    assert stat.S_IMODE(first.credentials_file.stat().st_mode) == 0o600
    kinds = {
        d.device_id: d.kind
        for d in (
            await stack.authority.list_devices(
                page_size=1000,
                page_token="",
                kind=None,
                labels={"source": "simulator"},
                include_disabled=False,
            )
        ).items
        if d.device_id.startswith(options.prefix)
    }
    assert kinds == {
        plan.cameras[0].camera_id: "camera",
        **{d.device_id: "telemetry_unit" for d in plan.fleet.devices},
    }
    for source in progress.sources:
        assert source.error == ""
        assert source.counters.acked == source.planned > 0
        assert source.counters.rejected == 0

    run = read_truth(tmp_path / "truth.jsonl")[0]
    device = plan.fleet.devices[0]
    found = await records(
        kafka_bootstrap, TELEMETRY_READINGS_TOPIC, device.device_id, lambda found: len(found) >= 8
    )
    readings = [events_pb2.TelemetryReading.FromString(r.value) for r in found]
    expected = {run["sequence_base"] + r.sequence: r for r in plan.fleet.readings(device)}
    for reading in readings:
        truth = expected[reading.sequence]
        assert reading.position.latitude_deg == pytest.approx(truth.latitude_deg, abs=1e-7)
        assert reading.speed_kmh == pytest.approx(truth.speed_kmh, abs=1e-3)

    # Later runs need no admin: the user's own password comes from the file.
    later = SimulatorSettings(**common)
    again = await Simulation(
        build_plan(SimulationOptions(cameras=1, devices=1, fps=5.0, duration_s=2.0, prefix=options.prefix)),
        RunTarget(later),
        truth_path=None,
    ).run(asyncio.Event())
    assert all(s.counters.acked == s.planned for s in again.sources)

    # Duplicates and disorder go out on a raw stream, still as the camera with its own device token.
    raw = await Simulation(
        build_plan(
            SimulationOptions(
                cameras=1,
                devices=0,
                fps=10.0,
                duration_s=2.0,
                duplicate_rate=0.2,
                out_of_order_rate=0.2,
                prefix=options.prefix,
            )
        ),
        RunTarget(later),
        truth_path=None,
    ).run(asyncio.Event())
    assert raw.transport == "raw StreamFrames"
    counters = raw.sources[0].counters
    assert counters.acked > 0
    assert counters.buffered == 0
    assert raw.sources[0].error == ""


async def test_without_any_password_the_error_says_what_to_set(stack, host, tmp_path):
    settings = SimulatorSettings(
        streaming_address=f"127.0.0.1:{host.grpc_port}",
        auth_address=stack.auth_grpc,
        auth_url=stack.auth_http,
        data_dir=tmp_path,
        username=unique("sim"),
    )
    plan = build_plan(SimulationOptions(cameras=1, devices=0, duration_s=1.0, prefix=unique("t")))
    with pytest.raises(SimulatorAuthError, match="ITSMESH_SIMULATOR_PASSWORD"):
        await Simulation(plan, RunTarget(settings), truth_path=None).run(asyncio.Event())
    assert read_credentials(settings.credentials_file) is None
