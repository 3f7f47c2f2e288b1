"""Telemetry ingest against real auth, Redis and the broker: every reject path with its reason and DLQ
record, duplicates, rate limits and the device binding of tokens."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest

from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.edge.signing import new_nonce, sign_sample
from mesh.events import TELEMETRY_DLQ_TOPIC, TELEMETRY_READINGS_TOPIC
from mesh.status import status_details
from mesh.tokens import ServiceTokenSource
from services.auth.authority import SYSTEM
from services.auth.model import DeviceCredentials
from services.streaming.telemetry_config import TelemetrySettings
from services.streaming.telemetry_ingest import reading_event_id
from tests.integration.auth_stack import bearer, running_stack, user_token
from tests.integration.streaming_host import now_stamp, records, settle, telemetry_host

pytestmark = pytest.mark.integration

Reason = common_pb2.TelemetryRejectReason
Status = streaming_pb2.TelemetryResultStatus
RATE_LIMIT = 20


@pytest.fixture(scope="module")
async def stack(infra):
    async with running_stack(infra, with_services=False) as running:
        yield running


@pytest.fixture(scope="module")
async def host(infra, stack):
    async with telemetry_host(infra, stack, TelemetrySettings(rate_limit_per_minute=RATE_LIMIT)) as running:
        yield running


@pytest.fixture
async def client(host):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
        yield streaming_pb2_grpc.StreamingServiceStub(channel)


class Device:
    """A registered telemetry unit with its credentials and a device token."""

    def __init__(self, device_id: str, credentials: DeviceCredentials, token: str) -> None:
        self.device_id = device_id
        self.credentials = credentials
        self.token = token
        self.sequence = 0

    @property
    def metadata(self):
        return bearer(self.token)

    def sample(self, *, sign: bool = True, offset_s: float = 0.0, **fields) -> streaming_pb2.TelemetrySample:
        self.sequence += 1
        values = {
            "device_id": self.device_id,
            "sequence": self.sequence,
            "reading_time": now_stamp(offset_s),
            "position": common_pb2.GeoPoint(latitude_deg=52.52, longitude_deg=13.405, altitude_m=34.0),
            "speed_kmh": 48.5,
            "heading_deg": 90.0,
            "horizontal_accuracy_m": 3.5,
            "measurements": {"fuel_level_pct": 61.0},
            "nonce": new_nonce(),
            "idempotency_key": f"r-{uuid.uuid4().hex}",
            **fields,
        }
        sample = streaming_pb2.TelemetrySample(**values)
        if sign:
            sign_sample(sample, self.credentials.hmac_secret, self.credentials.hmac_key_id)
        return sample


async def _device(stack) -> Device:
    device_id = f"gps-{uuid.uuid4().hex[:10]}"
    _, credentials = await stack.authority.register_device(
        SYSTEM, device_id=device_id, kind="telemetry_unit", name=device_id, labels={}
    )
    token = await ServiceTokenSource(stack.auth_http, device_id, credentials.api_key)()
    return Device(device_id, credentials, token)


async def _submit(client, device: Device, *samples) -> list[streaming_pb2.TelemetryResult]:
    reply = await client.SubmitTelemetry(
        streaming_pb2.SubmitTelemetryRequest(samples=samples), metadata=device.metadata, timeout=15
    )
    return list(reply.results)


async def _dead_letters(bootstrap: str, device_id: str, count: int) -> list[events_pb2.DeadLetter]:
    found = await records(bootstrap, TELEMETRY_DLQ_TOPIC, device_id, lambda f: len(f) >= count)
    return [events_pb2.DeadLetter.FromString(r.value) for r in found]


async def _readings(bootstrap: str, device_id: str, count: int) -> list[events_pb2.TelemetryReading]:
    found = await records(bootstrap, TELEMETRY_READINGS_TOPIC, device_id, lambda f: len(f) >= count)
    return [events_pb2.TelemetryReading.FromString(r.value) for r in found]


async def _stream(client, device: Device, *requests) -> list[streaming_pb2.StreamTelemetryResponse]:
    call = client.StreamTelemetry(metadata=device.metadata, timeout=20)
    await call.write(
        streaming_pb2.StreamTelemetryRequest(
            open=streaming_pb2.OpenTelemetryStream(device_id=device.device_id)
        )
    )
    for request in requests:
        await call.write(request)
    await call.done_writing()
    return [response async for response in call]


async def test_signed_readings_stream_in_are_acked_after_kafka(client, stack, kafka_bootstrap):
    device = await _device(stack)
    samples = [device.sample() for _ in range(3)]
    responses = await _stream(
        client,
        device,
        streaming_pb2.StreamTelemetryRequest(sample=samples[0]),
        streaming_pb2.StreamTelemetryRequest(batch=streaming_pb2.TelemetryBatch(samples=samples[1:])),
    )
    opened = responses[0].opened
    assert opened.initial_credit > 0
    assert opened.max_clock_skew.seconds == 300
    results = [r for response in responses[1:] for r in response.ack.results]
    assert [(r.sequence, r.status) for r in results] == [
        (s.sequence, Status.TELEMETRY_RESULT_STATUS_ACCEPTED) for s in samples
    ]
    assert sum(response.ack.credit_grant for response in responses[1:]) == 3
    readings = await _readings(kafka_bootstrap, device.device_id, 3)
    assert sorted(r.sequence for r in readings) == [s.sequence for s in samples]
    first = next(r for r in readings if r.sequence == samples[0].sequence)
    assert first.event_id == reading_event_id(device.device_id, samples[0].idempotency_key)
    assert (first.position.latitude_deg, first.speed_kmh, dict(first.measurements)) == (
        52.52,
        48.5,
        {"fuel_level_pct": 61.0},
    )
    assert first.stream_id == opened.stream_id


async def test_a_bad_signature_is_rejected_with_its_reason_and_dead_lettered(client, stack, kafka_bootstrap):
    device = await _device(stack)
    tampered = device.sample()
    tampered.speed_kmh = 12.0  # changed after signing
    unsigned_key = device.sample(sign=False)
    unsigned_key.signature = b"\x00" * 32
    results = await _submit(client, device, tampered, unsigned_key)
    assert [(r.status, r.reject_reason, r.field) for r in results] == [
        (Status.TELEMETRY_RESULT_STATUS_REJECTED, Reason.TELEMETRY_REJECT_REASON_BAD_SIGNATURE, "signature")
    ] * 2
    letters = await _dead_letters(kafka_bootstrap, device.device_id, 2)
    assert {letter.telemetry_reject_reason for letter in letters} == {
        Reason.TELEMETRY_REJECT_REASON_BAD_SIGNATURE
    }
    letter = next(letter for letter in letters if letter.sequence == tampered.sequence)
    assert letter.source == events_pb2.DEAD_LETTER_SOURCE_TELEMETRY_READING
    assert streaming_pb2.TelemetrySample.FromString(letter.payload) == tampered
    assert letter.payload_type == "itsmesh.v1.TelemetrySample"


async def test_stale_and_future_timestamps_are_rejected_beyond_300_s(client, stack, kafka_bootstrap):
    device = await _device(stack)
    stale, future, fine = (
        device.sample(offset_s=-400),
        device.sample(offset_s=400),
        device.sample(offset_s=-250),
    )
    results = await _submit(client, device, stale, future, fine)
    assert [(r.status, r.reject_reason) for r in results] == [
        (Status.TELEMETRY_RESULT_STATUS_REJECTED, Reason.TELEMETRY_REJECT_REASON_TIMESTAMP_STALE),
        (Status.TELEMETRY_RESULT_STATUS_REJECTED, Reason.TELEMETRY_REJECT_REASON_TIMESTAMP_IN_FUTURE),
        (Status.TELEMETRY_RESULT_STATUS_ACCEPTED, Reason.TELEMETRY_REJECT_REASON_UNSPECIFIED),
    ]
    assert results[0].field == "reading_time"
    assert "old" in results[0].detail
    letters = await _dead_letters(kafka_bootstrap, device.device_id, 2)
    assert {(letter.sequence, letter.telemetry_reject_reason) for letter in letters} == {
        (stale.sequence, Reason.TELEMETRY_REJECT_REASON_TIMESTAMP_STALE),
        (future.sequence, Reason.TELEMETRY_REJECT_REASON_TIMESTAMP_IN_FUTURE),
    }


async def test_a_replayed_nonce_is_rejected_and_dead_lettered(client, stack, kafka_bootstrap):
    device = await _device(stack)
    first = device.sample()
    replay = device.sample(nonce=first.nonce)  # another reading, correctly signed, reusing the nonce
    assert [r.status for r in await _submit(client, device, first)] == [
        Status.TELEMETRY_RESULT_STATUS_ACCEPTED
    ]
    (result,) = await _submit(client, device, replay)
    assert (result.status, result.reject_reason, result.field) == (
        Status.TELEMETRY_RESULT_STATUS_REJECTED,
        Reason.TELEMETRY_REJECT_REASON_NONCE_REPLAYED,
        "nonce",
    )
    (letter,) = await _dead_letters(kafka_bootstrap, device.device_id, 1)
    assert (letter.sequence, letter.telemetry_reject_reason) == (
        replay.sequence,
        Reason.TELEMETRY_REJECT_REASON_NONCE_REPLAYED,
    )


async def test_a_resent_reading_is_a_duplicate_ack_and_published_once(client, stack, kafka_bootstrap):
    device = await _device(stack)
    original = device.sample()
    resend = streaming_pb2.TelemetrySample()
    resend.CopyFrom(original)
    resend.nonce = new_nonce()  # what the edge client does: same reading and key, new transmission
    sign_sample(resend, device.credentials.hmac_secret, device.credentials.hmac_key_id)
    assert [r.status for r in await _submit(client, device, original)] == [
        Status.TELEMETRY_RESULT_STATUS_ACCEPTED
    ]
    (again,) = await _submit(client, device, resend)
    assert (again.status, again.idempotency_key) == (
        Status.TELEMETRY_RESULT_STATUS_DUPLICATE,
        original.idempotency_key,
    )
    same_nonce = await _submit(
        client, device, original
    )  # even the identical bytes: a duplicate, not an error
    assert [r.status for r in same_nonce] == [Status.TELEMETRY_RESULT_STATUS_DUPLICATE]
    await _readings(kafka_bootstrap, device.device_id, 1)
    await settle()
    found = await records(
        kafka_bootstrap, TELEMETRY_READINGS_TOPIC, device.device_id, lambda f: False, timeout=2
    )
    assert len(found) == 1
    assert (
        dict(found[0].headers)["event-id"]
        == reading_event_id(device.device_id, original.idempotency_key).encode()
    )


@pytest.mark.parametrize(
    ("fields", "reason", "field"),
    [
        (
            {"position": common_pb2.GeoPoint(latitude_deg=91.0, longitude_deg=0.0)},
            "FIELD_OUT_OF_RANGE",
            "position.latitude_deg",
        ),
        (
            {"position": common_pb2.GeoPoint(latitude_deg=0.0, longitude_deg=-180.5)},
            "FIELD_OUT_OF_RANGE",
            "position.longitude_deg",
        ),
        ({"speed_kmh": -1.0}, "FIELD_OUT_OF_RANGE", "speed_kmh"),
        ({"speed_kmh": 401.0}, "FIELD_OUT_OF_RANGE", "speed_kmh"),
        ({"heading_deg": 360.0}, "FIELD_OUT_OF_RANGE", "heading_deg"),
        ({"horizontal_accuracy_m": -0.1}, "FIELD_OUT_OF_RANGE", "horizontal_accuracy_m"),
        ({"measurements": {"Bad-Name": 1.0}}, "FIELD_OUT_OF_RANGE", "measurements[Bad-Name]"),
        ({"nonce": ""}, "MISSING_FIELD", "nonce"),
        ({"nonce": "short"}, "FIELD_OUT_OF_RANGE", "nonce"),
        ({"idempotency_key": ""}, "MISSING_FIELD", "idempotency_key"),
    ],
)
async def test_out_of_range_and_missing_fields_are_rejected_naming_the_field(
    client, stack, kafka_bootstrap, fields, reason, field
):
    device = await _device(stack)
    sample = device.sample(**fields)
    (result,) = await _submit(client, device, sample)
    expected = Reason.Value(f"TELEMETRY_REJECT_REASON_{reason}")
    assert (result.status, result.reject_reason, result.field) == (
        Status.TELEMETRY_RESULT_STATUS_REJECTED,
        expected,
        field,
    )
    (letter,) = await _dead_letters(kafka_bootstrap, device.device_id, 1)
    assert (letter.telemetry_reject_reason, letter.field) == (expected, field)


async def test_a_missing_reading_time_and_position_are_named(client, stack):
    device = await _device(stack)
    no_time = device.sample()
    no_time.ClearField("reading_time")
    no_position = device.sample()
    no_position.ClearField("position")
    results = await _submit(client, device, no_time, no_position)
    assert [(r.reject_reason, r.field) for r in results] == [
        (Reason.TELEMETRY_REJECT_REASON_MISSING_FIELD, "reading_time"),
        (Reason.TELEMETRY_REJECT_REASON_MISSING_FIELD, "position"),
    ]


async def test_the_rate_limit_rejects_past_the_window_then_refuses_calls_with_retry_info(
    client, stack, kafka_bootstrap
):
    device = await _device(stack)
    samples = [device.sample() for _ in range(RATE_LIMIT + 5)]
    batches = [samples[i : i + 10] for i in range(0, len(samples), 10)]
    responses = await _stream(
        client,
        device,
        *(
            streaming_pb2.StreamTelemetryRequest(batch=streaming_pb2.TelemetryBatch(samples=b))
            for b in batches
        ),
    )
    results = [r for response in responses[1:] for r in response.ack.results]
    accepted = [r for r in results if r.status == Status.TELEMETRY_RESULT_STATUS_ACCEPTED]
    limited = [r for r in results if r.reject_reason == Reason.TELEMETRY_REJECT_REASON_RATE_LIMITED]
    assert (len(accepted), len(limited)) == (RATE_LIMIT, 5)
    assert all(0 < r.retry_after.ToNanoseconds() <= 60e9 for r in limited)
    letters = await _dead_letters(kafka_bootstrap, device.device_id, 5)
    assert sorted(letter.sequence for letter in letters) == sorted(r.sequence for r in limited)
    assert {letter.telemetry_reject_reason for letter in letters} == {
        Reason.TELEMETRY_REJECT_REASON_RATE_LIMITED
    }
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _submit(client, device, device.sample())
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.reason == "RATE_LIMITED"
    assert details.retry_delay_s is not None
    assert 0 < details.retry_delay_s <= 60


async def test_a_device_token_sends_only_its_own_readings(client, stack, kafka_bootstrap):
    device, other = await _device(stack), await _device(stack)
    call = client.StreamTelemetry(metadata=device.metadata, timeout=10)
    await call.write(
        streaming_pb2.StreamTelemetryRequest(
            open=streaming_pb2.OpenTelemetryStream(device_id=other.device_id)
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await call.read()
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    foreign = other.sample()  # correctly signed by the other device, sent with this device's token
    results = await _submit(client, device, device.sample(), foreign)
    assert [(r.status, r.reject_reason, r.field) for r in results] == [
        (Status.TELEMETRY_RESULT_STATUS_ACCEPTED, Reason.TELEMETRY_REJECT_REASON_UNSPECIFIED, ""),
        (
            Status.TELEMETRY_RESULT_STATUS_REJECTED,
            Reason.TELEMETRY_REJECT_REASON_DEVICE_MISMATCH,
            "device_id",
        ),
    ]
    (letter,) = await _dead_letters(kafka_bootstrap, other.device_id, 1)
    assert letter.telemetry_reject_reason == Reason.TELEMETRY_REJECT_REASON_DEVICE_MISMATCH


async def test_after_rotation_both_the_new_and_the_previous_secret_verify(client, stack):
    device = await _device(stack)
    old = device.credentials
    assert [r.status for r in await _submit(client, device, device.sample())] == [
        Status.TELEMETRY_RESULT_STATUS_ACCEPTED
    ]
    rotated = await stack.authority.rotate_device_credentials(
        SYSTEM,
        device.device_id,
        rotate_api_key=False,
        rotate_hmac_secret=True,
        grace=timedelta(minutes=5),
    )
    by_old = device.sample()  # still signed with the previous secret and its key id
    device.credentials = DeviceCredentials(old.api_key, rotated.hmac_key_id, rotated.hmac_secret)
    by_new = device.sample()
    unnamed = device.sample(sign=False)
    sign_sample(unnamed, rotated.hmac_secret)  # no key id: the current secret, fetched again
    results = await _submit(client, device, by_old, by_new, unnamed)
    assert [r.status for r in results] == [Status.TELEMETRY_RESULT_STATUS_ACCEPTED] * 3
    forged = device.sample(sign=False)
    sign_sample(forged, b"\x01" * 32, rotated.hmac_key_id)
    (result,) = await _submit(client, device, forged)
    assert result.reject_reason == Reason.TELEMETRY_REJECT_REASON_BAD_SIGNATURE


async def test_a_stream_must_open_first_and_respect_credit(client, stack):
    device = await _device(stack)
    call = client.StreamTelemetry(metadata=device.metadata, timeout=10)
    await call.write(streaming_pb2.StreamTelemetryRequest(sample=device.sample()))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    details = status_details(refused.value)
    assert (details.code, details.field_violations[0][0]) == (grpc.StatusCode.INVALID_ARGUMENT, "open")


async def test_ingest_status_counts_readings_of_this_instance(client, stack):
    device = await _device(stack)
    await _submit(client, device, device.sample(), device.sample(offset_s=-1000))
    admin = await user_token(stack, "admin")
    status = await client.GetIngestStatus(streaming_pb2.GetIngestStatusRequest(), metadata=bearer(admin))
    assert status.readings_accepted_total >= 1
    assert status.readings_rejected_total >= 1
    assert status.readings_per_second > 0


async def test_open_telemetry_streams_are_listed_with_their_counters(client, stack):
    device = await _device(stack)
    admin = await user_token(stack, "admin")
    call = client.StreamTelemetry(metadata=device.metadata, timeout=20)
    await call.write(
        streaming_pb2.StreamTelemetryRequest(
            open=streaming_pb2.OpenTelemetryStream(device_id=device.device_id, client_version="test/1")
        )
    )
    opened = (await call.read()).opened
    await call.write(streaming_pb2.StreamTelemetryRequest(sample=device.sample()))
    ack = (await call.read()).ack
    assert [r.status for r in ack.results] == [Status.TELEMETRY_RESULT_STATUS_ACCEPTED]
    listed = await client.ListStreams(
        streaming_pb2.ListStreamsRequest(kind=streaming_pb2.STREAM_KIND_TELEMETRY), metadata=bearer(admin)
    )
    (info,) = [s for s in listed.streams if s.stream_id == opened.stream_id]
    assert (info.kind, info.source_id, info.client_version) == (
        streaming_pb2.STREAM_KIND_TELEMETRY,
        device.device_id,
        "test/1",
    )
    assert (info.items_received, info.items_accepted, info.items_in_flight) == (1, 1, 0)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
