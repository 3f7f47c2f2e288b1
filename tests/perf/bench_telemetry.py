"""StreamTelemetry readings/s with every check, Kafka-acked, versus the same readings produced raw to Kafka.

Checked path: DEVICES devices each stream their pre-signed readings (batches of BATCH, within the credit
the server grants) over StreamTelemetry to one streaming instance, which checks shape and ranges, verifies
the HMAC-SHA256 signature (secret fetched from a real auth service, then cached), checks the clock, runs
the nonce / idempotency / rate-limit script in Redis, publishes every reading to telemetry.readings.v1
with acks=all and answers each with a result; a reading counts once its ACCEPTED result is back. The
device's signing is done before the clock starts: the figure is the server's.

Baseline: the very same readings as TelemetryReading events, produced straight to a topic by the same
``EventPublisher`` (acks=all, same linger and compression), DEVICES producers at once, each awaiting every
acknowledgement with the same number in flight: Kafka's cost without any of the checks.

The streaming instance runs in its own process, wired as in production (device tokens verified against
auth's JWKS, secrets read over gRPC with its own service token from ITSMESH_SERVICE_CLIENT_ID/SECRET);
the devices, auth and the raw producer share this process. Rounds alternate checked and raw, each with
fresh readings; the medians are reported. The target (≥ 5,000 readings/s) is per streaming process.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc

from infrastructure.embedded import InfraUrls
from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.edge.signing import new_nonce, sign_sample
from mesh.events import TELEMETRY_READINGS_TOPIC, EventPublisher, ensure_topics
from mesh.host import ServiceHost
from mesh.tokens import ServiceTokenSource
from services.auth.authority import SYSTEM
from services.streaming.config import StreamingSettings
from services.streaming.service import build
from services.streaming.telemetry_config import TelemetrySettings
from services.streaming.telemetry_ingest import reading_event_id
from tests.integration.auth_stack import running_stack
from tests.perf.results import BenchResult

DEVICES = 4
BATCH = 100
Status = streaming_pb2.TelemetryResultStatus


def _samples(
    device_id: str, secret: bytes, key_id: str, count: int, tag: str
) -> list[streaming_pb2.TelemetrySample]:
    samples = []
    now_ns = time.time_ns()
    for i in range(count):
        sample = streaming_pb2.TelemetrySample(
            device_id=device_id,
            sequence=i + 1,
            position=common_pb2.GeoPoint(latitude_deg=52.5 + i * 1e-5, longitude_deg=13.4, altitude_m=34.0),
            speed_kmh=50.0 + (i % 40),
            heading_deg=float(i % 360),
            horizontal_accuracy_m=3.0,
            measurements={"fuel_level_pct": 61.0},
            nonce=new_nonce(),
            idempotency_key=f"{tag}:{i + 1}",
        )
        sample.reading_time.FromNanoseconds(now_ns + i * 1000)
        sign_sample(sample, secret, key_id)
        samples.append(sample)
    return samples


async def _stream(address: str, token: str, samples: list[streaming_pb2.TelemetrySample]) -> int:
    """Stream ``samples`` within credit; the number accepted."""
    async with grpc.aio.insecure_channel(address) as channel:
        call: Any = streaming_pb2_grpc.StreamingServiceStub(channel).StreamTelemetry(
            metadata=(("authorization", f"Bearer {token}"),)
        )
        await call.write(
            streaming_pb2.StreamTelemetryRequest(
                open=streaming_pb2.OpenTelemetryStream(device_id=samples[0].device_id)
            )
        )
        opened = await call.read()
        credit = opened.opened.initial_credit
        granted = asyncio.Event()
        accepted = settled = 0

        async def read() -> None:
            nonlocal credit, accepted, settled
            while settled < len(samples):
                response = await call.read()
                assert response is not grpc.aio.EOF, "the stream ended early"
                for result in response.ack.results:
                    settled += 1
                    accepted += result.status == Status.TELEMETRY_RESULT_STATUS_ACCEPTED
                credit += response.ack.credit_grant
                granted.set()

        reader = asyncio.create_task(read())
        sent = 0
        while sent < len(samples):
            while credit < min(BATCH, len(samples) - sent):
                granted.clear()
                await granted.wait()
            chunk = samples[sent : sent + BATCH]
            credit -= len(chunk)
            await call.write(
                streaming_pb2.StreamTelemetryRequest(batch=streaming_pb2.TelemetryBatch(samples=chunk))
            )
            sent += len(chunk)
        await reader
        await call.done_writing()
        return accepted


async def _raw(publisher: EventPublisher, samples: list[streaming_pb2.TelemetrySample], window: int) -> None:
    """Produce the readings' events straight to Kafka, ``window`` acknowledgements in flight."""
    in_flight: list[Awaitable[None]] = []
    for sample in samples:
        event = events_pb2.TelemetryReading(
            event_id=reading_event_id(sample.device_id, sample.idempotency_key),
            device_id=sample.device_id,
            sequence=sample.sequence,
            reading_time=sample.reading_time,
            receive_time=sample.reading_time,
            position=sample.position,
            speed_kmh=sample.speed_kmh,
            heading_deg=sample.heading_deg,
            horizontal_accuracy_m=sample.horizontal_accuracy_m,
            measurements=sample.measurements,
            idempotency_key=sample.idempotency_key,
            instance_id="bench-raw",
        )
        in_flight.append(await publisher.publish(TELEMETRY_READINGS_TOPIC + ".raw", sample.device_id, event))
        if len(in_flight) >= window:
            for ack in in_flight:  # one by one, as the service does: no task per record
                await ack
            in_flight.clear()
    for ack in in_flight:
        await ack


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


async def _spawn_instance(
    urls: InfraUrls, stack: Any, port_file: Path, settings: TelemetrySettings
) -> tuple[asyncio.subprocess.Process, str]:
    """A streaming instance in its own process, wired as in production: it verifies device tokens against
    auth's JWKS and reads device secrets over gRPC with its own service account's token."""
    account, secret = await stack.authority.create_service_account(
        SYSTEM,
        service_account_id=f"svc-bench-{uuid.uuid4().hex[:6]}",
        description="bench",
        roles=("service",),
    )
    env = {
        **os.environ,
        "DATABASE_URL": urls.database_url,
        "REDIS_URL": urls.redis_url,
        "KAFKA_BOOTSTRAP_SERVERS": urls.kafka_bootstrap_servers,
        "ITSMESH_AUTH_URL": stack.auth_http,
        "ITSMESH_SERVICE_CLIENT_ID": account.service_account_id,
        "ITSMESH_SERVICE_CLIENT_SECRET": secret,
        "ITSMESH_TELEMETRY_AUTH_GRPC_ADDRESS": stack.auth_grpc,
        "ITSMESH_TELEMETRY_RATE_LIMIT_PER_MINUTE": str(settings.rate_limit_per_minute),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.perf.bench_telemetry",
        "--instance",
        str(port_file),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(60):
        while not port_file.exists() or not port_file.read_text().endswith("\n"):
            assert process.returncode is None, "the instance exited"
            await asyncio.sleep(0.1)
    return process, f"127.0.0.1:{port_file.read_text().strip()}"


async def run(quick: bool, urls: InfraUrls) -> list[BenchResult]:
    per_device = 2_500 if quick else 10_000
    rounds = 2 if quick else 3
    await ensure_topics(
        urls.kafka_bootstrap_servers, {TELEMETRY_READINGS_TOPIC: 6, TELEMETRY_READINGS_TOPIC + ".raw": 6}
    )
    settings = TelemetrySettings(rate_limit_per_minute=100_000_000)
    checked: list[float] = []
    raw: list[float] = []
    async with running_stack(urls, with_services=False) as stack:
        with tempfile.TemporaryDirectory(prefix="itsmesh-bench-ports-") as ports:
            process, address = await _spawn_instance(urls, stack, Path(ports) / "streaming.port", settings)
        try:
            devices = []
            for _ in range(DEVICES):
                device_id = f"bench-gps-{uuid.uuid4().hex[:8]}"
                _, credentials = await stack.authority.register_device(
                    SYSTEM, device_id=device_id, kind="telemetry_unit", name=device_id, labels={}
                )
                token = await ServiceTokenSource(stack.auth_http, device_id, credentials.api_key)()
                devices.append((device_id, credentials, token))
            # Warm-up: secrets cached, connections open, the Redis scripts loaded.
            for device_id, credentials, token in devices:
                warm = _samples(device_id, credentials.hmac_secret, credentials.hmac_key_id, 1, "warm")
                await _stream(address, token, warm)
            async with EventPublisher(urls.kafka_bootstrap_servers) as publisher:
                for round_number in range(rounds):
                    batches = [
                        _samples(
                            device_id,
                            credentials.hmac_secret,
                            credentials.hmac_key_id,
                            per_device,
                            f"r{round_number}",
                        )
                        for device_id, credentials, _ in devices
                    ]
                    started = time.perf_counter()
                    accepted = await asyncio.gather(
                        *(
                            _stream(address, token, samples)
                            for (_, _, token), samples in zip(devices, batches, strict=True)
                        )
                    )
                    checked.append(DEVICES * per_device / (time.perf_counter() - started))
                    assert sum(accepted) == DEVICES * per_device, f"only {sum(accepted)} accepted"
                    started = time.perf_counter()
                    await asyncio.gather(
                        *(_raw(publisher, samples, settings.stream_window) for samples in batches)
                    )
                    raw.append(DEVICES * per_device / (time.perf_counter() - started))
        finally:
            assert process.stdin is not None
            process.stdin.close()
            await process.wait()
    return [
        BenchResult(
            name="telemetry readings/s (signature, clock, nonce, idempotency, rate limit; Kafka-acked)",
            value=_median(checked),
            unit="readings/s",
            baseline=_median(raw),
            baseline_name="same readings produced raw to Kafka, acks=all",
            target=">= 5,000 readings/s per process",
        )
    ]


async def _serve_instance() -> None:
    """The --instance mode: serve until stdin closes (everything else from the environment)."""
    settings = StreamingSettings(
        bind_host="127.0.0.1", grpc_port=0, register_in_discovery=False, metrics_port=None
    )
    host = ServiceHost(build(settings))
    await host.start()
    try:
        servicer: Any = host.spec.grpc_services[0].servicer
        while not servicer.ingest._publisher.started:
            await asyncio.sleep(0.05)
        Path(sys.argv[-1]).write_text(f"{host.grpc_port}\n")
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await host.stop()


if __name__ == "__main__":
    asyncio.run(_serve_instance())  # the --instance mode _spawn_instance starts; run() is called by run.py
