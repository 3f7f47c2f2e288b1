"""Telemetry ingest (StreamTelemetry and SubmitTelemetry): checks, Redis guard, Kafka, results.

A batch of readings goes through, in order:

1. ``check_shape`` (required fields, character sets, ranges) and the device binding (every reading of
   a stream or call is for the one device the token or stream names → else DEVICE_MISMATCH);
2. the HMAC-SHA256 signature (``mesh.edge.signing``) under the device secret named by signing_key_id,
   fetched from auth and cached (unknown or disabled device → UNKNOWN_DEVICE);
3. ``check_clock`` (more than 300 s old or ahead → TIMESTAMP_STALE / TIMESTAMP_IN_FUTURE);
4. one Redis script for the batch (``TelemetryGuard``): accepted idempotency key → DUPLICATE, replayed
   nonce → NONCE_REPLAYED, full rate window → RATE_LIMITED, else the key is claimed;
5. accepted readings are published to telemetry.readings.v1 and rejected ones to telemetry.dlq.v1 (with
   the reason); only once Kafka acknowledged them all are the claims marked accepted and the results
   returned.

A batch runs as a task owned by ``TelemetryIngest``, not by the caller: a device that disconnects while
its readings are in flight leaves them to be finished, so a resend finds them accepted (duplicate) or
released, never half-published. The stream shell is ``telemetry_stream.TelemetryStreamCall``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2
from mesh.edge.signing import verify_sample
from mesh.events import TELEMETRY_DLQ_TOPIC, TELEMETRY_READINGS_TOPIC, EventPublisher, PublishError
from mesh.interceptors import current_principal
from mesh.status import StatusError, status_error
from services.streaming.event_ids import uuid5_text
from services.streaming.stats import RateMeter
from services.streaming.telemetry_checks import Rejection, check_clock, check_shape
from services.streaming.telemetry_config import TelemetrySettings
from services.streaming.telemetry_guard import Candidate, Decision, TelemetryGuard
from services.streaming.telemetry_secrets import DeviceKey, DeviceSecrets
from services.streaming.telemetry_stream import TelemetryStreamCall, TelemetryStreamState
from services.streaming.validation import ID_PATTERN

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Clock = Callable[[], float]
Reason = common_pb2.TelemetryRejectReason
Status = streaming_pb2.TelemetryResultStatus

READING_NAMESPACE: Final = uuid.UUID("2b0f7c7e-3c55-4a63-8f0e-7f5d0b1c9e42")
"""Namespace of deterministic reading event ids: uuid5(namespace, "device_id/idempotency_key")."""
MAX_DLQ_PAYLOAD_BYTES: Final = 64 * 1024
MAX_SUBMIT_SAMPLES: Final = 500
PENDING_POLL_S: Final = 0.02
PENDING_WAIT_S: Final = 5.0
RETRY_DELAY_S: Final = 1.0


_NAMESPACE_BYTES: Final = READING_NAMESPACE.bytes


def reading_event_id(device_id: str, idempotency_key: str) -> str:
    """The event id of a reading: the same for every publication of (device, idempotency key).

    Exactly ``str(uuid.uuid5(READING_NAMESPACE, "device_id/idempotency_key"))`` (RFC 4122 §4.3), computed
    without the UUID object: a quarter of the cost on the per-reading path.
    """
    return uuid5_text(_NAMESPACE_BYTES, f"{device_id}/{idempotency_key}")


@dataclass(slots=True)
class TelemetryTotals:
    """Reading counters of this instance since it started."""

    received: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0
    accepted_rate: RateMeter = field(default_factory=RateMeter)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends a batch: the device its readings must be for, and the credential rate-limited."""

    device_id: str
    credential: str
    stream_id: str = ""
    peer: str = ""


@dataclass(slots=True)
class _Batch:
    """A prepared batch: results so far, Kafka acknowledgements to wait for, claims to settle."""

    caller: Caller
    samples: Sequence[streaming_pb2.TelemetrySample]
    results: list[streaming_pb2.TelemetryResult]
    acks: list[Awaitable[None]] = field(default_factory=list)
    claimed: list[tuple[int, Candidate]] = field(default_factory=list)
    pending: list[tuple[int, Candidate]] = field(default_factory=list)
    claim: str = ""
    receive_time: timestamp_pb2.Timestamp = field(default_factory=timestamp_pb2.Timestamp)


def caller_for(device_id: str) -> Caller:
    """The caller of a batch for ``device_id`` as the current principal presents it."""
    principal = current_principal()
    # A device's API key is its client id, so a device token's subject names the key; a service or
    # gateway credential is limited across every device it submits for.
    credential = f"{principal.kind}:{principal.subject}" if principal is not None else f"device:{device_id}"
    return Caller(device_id=device_id, credential=credential)


def bound_device(requested: str) -> str:
    """The device a stream or call is for; PERMISSION_DENIED when a device token names another one."""
    principal = current_principal()
    if principal is not None and principal.kind == "device" and principal.subject != requested:
        raise status_error(
            grpc.StatusCode.PERMISSION_DENIED,
            f"this device token may not send telemetry for device {requested}",
            reason="DEVICE_MISMATCH",
        )
    return requested


class TelemetryIngest:
    """Checks, deduplicates, rate-limits and publishes telemetry readings for this instance."""

    def __init__(
        self,
        guard: TelemetryGuard,
        secrets: DeviceSecrets,
        publisher: EventPublisher,
        instance_id: str,
        draining: asyncio.Event,
        settings: TelemetrySettings | None = None,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.guard = guard
        self.secrets = secrets
        self._publisher = publisher
        self.instance_id = instance_id
        self.draining = draining
        """Set when the host shuts down: streams drain."""
        self.settings = settings or TelemetrySettings()
        self._clock = clock
        self.totals = TelemetryTotals()
        self.streams: dict[str, TelemetryStreamState] = {}
        self._tasks: set[asyncio.Task[list[streaming_pb2.TelemetryResult]]] = set()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for batches still being published, so their claims end settled."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    def fill_status(self, status: streaming_pb2.IngestStatus) -> None:
        """Add this instance's telemetry streams and counters to a GetIngestStatus answer."""
        totals = self.totals
        status.telemetry_streams = len(self.streams)
        status.readings_accepted_total = totals.accepted
        status.readings_rejected_total = totals.rejected
        status.readings_duplicate_total = totals.duplicate
        status.readings_per_second = totals.accepted_rate.rate(time.monotonic())

    def stream_infos(self) -> list[streaming_pb2.StreamInfo]:
        """The open telemetry streams of this instance, for ListStreams."""
        infos = []
        for state in list(self.streams.values()):
            info = streaming_pb2.StreamInfo(
                stream_id=state.stream_id,
                kind=streaming_pb2.STREAM_KIND_TELEMETRY,
                source_id=state.device_id,
                peer=state.peer,
                items_received=state.received,
                items_accepted=state.accepted,
                items_rejected=state.rejected,
                items_duplicate=state.duplicate,
                items_in_flight=state.in_flight,
                credit_available=state.credit,
                client_version=state.client_version,
                instance_id=self.instance_id,
            )
            info.open_time.FromDatetime(state.open_time)
            if state.last_message_time is not None:
                info.last_message_time.FromDatetime(state.last_message_time)
            infos.append(info)
        return infos

    # --- one batch ----------------------------------------------------------------------------------

    async def process(
        self, caller: Caller, samples: Sequence[streaming_pb2.TelemetrySample]
    ) -> list[streaming_pb2.TelemetryResult]:
        """Results of ``samples`` in order, once every accepted or rejected one is durably in Kafka."""
        return await asyncio.shield(await self.start(caller, samples))

    async def start(
        self, caller: Caller, samples: Sequence[streaming_pb2.TelemetrySample]
    ) -> asyncio.Task[list[streaming_pb2.TelemetryResult]]:
        """Check and hand ``samples`` to Kafka; returns once they are queued for Kafka (so the next batch
        keeps their order), with the task (owned here) that completes their results.

        The whole batch runs in that task, never in the caller's: a caller cancelled mid-batch (its
        device disconnected) leaves the claims it made in Redis to be settled, not stuck "pending".
        """
        queued = asyncio.get_running_loop().create_future()
        task = self._spawn(self._run_batch(caller, samples, queued))
        await asyncio.shield(queued)
        if task.done():
            task.result()  # raises what stopped the batch before it reached Kafka
        return task

    async def _run_batch(
        self,
        caller: Caller,
        samples: Sequence[streaming_pb2.TelemetrySample],
        queued: asyncio.Future[None],
    ) -> list[streaming_pb2.TelemetryResult]:
        try:
            batch = await self._prepare(caller, samples)
        finally:
            queued.set_result(None)
        return await self._complete(batch)

    def _spawn(
        self, work: Coroutine[Any, Any, list[streaming_pb2.TelemetryResult]]
    ) -> asyncio.Task[list[streaming_pb2.TelemetryResult]]:
        task = asyncio.create_task(work, name="telemetry-complete")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[list[streaming_pb2.TelemetryResult]]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # the awaiting stream reports it; a stream that went away must not leak it

    async def _prepare(self, caller: Caller, samples: Sequence[streaming_pb2.TelemetrySample]) -> _Batch:
        now = self._clock()
        self.totals.received += len(samples)
        results = [
            streaming_pb2.TelemetryResult(sequence=s.sequence, idempotency_key=s.idempotency_key)
            for s in samples
        ]
        batch = _Batch(caller, samples, results, claim=uuid.uuid4().hex)
        batch.receive_time.FromNanoseconds(round(now * 1e9))
        survivors: list[int] = []
        for index, sample in enumerate(samples):
            rejection = check_shape(sample)
            if rejection is None and sample.device_id != caller.device_id:
                rejection = Rejection(
                    Reason.TELEMETRY_REJECT_REASON_DEVICE_MISMATCH,
                    f"device_id {sample.device_id} is not the device {caller.device_id} of this "
                    "stream or token",
                    "device_id",
                )
            if rejection is not None:
                await self._reject(batch, index, rejection)
            else:
                survivors.append(index)
        candidates: list[tuple[int, Candidate]] = []
        for index in survivors:
            sample = samples[index]
            rejection = await self._verify(sample)
            if rejection is None:
                rejection = check_clock(sample, now)
            if rejection is not None:
                await self._reject(batch, index, rejection)
            else:
                candidates.append((index, Candidate(sample.device_id, sample.nonce, sample.idempotency_key)))
        await self._decide(batch, candidates, now)
        return batch

    async def _verify(self, sample: streaming_pb2.TelemetrySample) -> Rejection | None:
        key = await self.secrets.lookup(sample.device_id, sample.signing_key_id)
        if not isinstance(key, DeviceKey) or key.disabled:
            which = f"secret {sample.signing_key_id}" if sample.signing_key_id else "device"
            return Rejection(
                Reason.TELEMETRY_REJECT_REASON_UNKNOWN_DEVICE,
                f"no valid {which} for device {sample.device_id} (unknown, disabled or expired)",
                "signing_key_id" if sample.signing_key_id else "device_id",
            )
        if verify_sample(sample, key.secret):
            return None
        if not sample.signing_key_id:
            # The cached current secret may have been rotated since: ask auth once more.
            fresh = await self.secrets.lookup(sample.device_id, "", fresh=True)
            if isinstance(fresh, DeviceKey) and verify_sample(sample, fresh.secret):
                return None
        return Rejection(
            Reason.TELEMETRY_REJECT_REASON_BAD_SIGNATURE,
            "signature does not match the canonical encoding under the device's secret",
            "signature",
        )

    async def _decide(self, batch: _Batch, candidates: list[tuple[int, Candidate]], now: float) -> None:
        caller = batch.caller
        try:
            decisions = await self.guard.decide(
                caller.device_id, caller.credential, [c for _, c in candidates], batch.claim, now
            )
        except Exception as exc:
            raise _redis_unavailable(exc) from exc
        for (index, candidate), decision in zip(candidates, decisions, strict=True):
            result = batch.results[index]
            if decision is Decision.OK:
                batch.claimed.append((index, candidate))
                batch.acks.append(await self._publish_reading(batch, index))
            elif decision is Decision.DUPLICATE:
                result.status = Status.TELEMETRY_RESULT_STATUS_DUPLICATE
            elif decision is Decision.PENDING:
                batch.pending.append((index, candidate))
            elif decision is Decision.REPLAY:
                rejection = Rejection(
                    Reason.TELEMETRY_REJECT_REASON_NONCE_REPLAYED,
                    f"nonce already used by this device within {self.guard.settings.nonce_ttl_s} s",
                    "nonce",
                )
                await self._reject(batch, index, rejection)
            else:
                retry_after = self.guard.retry_after_s(now)
                limit = self.guard.settings.rate_limit_per_minute
                rejection = Rejection(
                    Reason.TELEMETRY_REJECT_REASON_RATE_LIMITED,
                    f"more than {limit} readings per minute for this device or credential; "
                    f"retry after {retry_after:.1f} s",
                )
                await self._reject(batch, index, rejection)
                result.retry_after.CopyFrom(_duration(retry_after))

    async def _publish_reading(self, batch: _Batch, index: int) -> Awaitable[None]:
        sample, caller = batch.samples[index], batch.caller
        event = events_pb2.TelemetryReading(
            event_id=reading_event_id(sample.device_id, sample.idempotency_key),
            device_id=sample.device_id,
            sequence=sample.sequence,
            speed_kmh=sample.speed_kmh,
            heading_deg=sample.heading_deg,
            horizontal_accuracy_m=sample.horizontal_accuracy_m,
            idempotency_key=sample.idempotency_key,
            stream_id=caller.stream_id,
            instance_id=self.instance_id,
        )
        # Message fields copied one by one: half the cost of passing them to the constructor (measured).
        event.reading_time.CopyFrom(sample.reading_time)
        event.receive_time.CopyFrom(batch.receive_time)
        event.position.CopyFrom(sample.position)
        if sample.measurements:
            event.measurements.update(sample.measurements)
        return await self._send(TELEMETRY_READINGS_TOPIC, sample.device_id, event)

    async def _reject(self, batch: _Batch, index: int, rejection: Rejection) -> None:
        sample, caller = batch.samples[index], batch.caller
        result = batch.results[index]
        result.status = Status.TELEMETRY_RESULT_STATUS_REJECTED
        result.reject_reason = rejection.reason
        result.field = rejection.field
        result.detail = rejection.detail
        payload = sample.SerializeToString()
        letter = events_pb2.DeadLetter(
            event_id=str(uuid.uuid4()),
            source=events_pb2.DEAD_LETTER_SOURCE_TELEMETRY_READING,
            source_id=sample.device_id if ID_PATTERN.match(sample.device_id) else caller.device_id,
            sequence=sample.sequence,
            telemetry_reject_reason=rejection.reason,
            reason_detail=rejection.detail,
            field=rejection.field,
            payload=payload[:MAX_DLQ_PAYLOAD_BYTES],
            payload_type=streaming_pb2.TelemetrySample.DESCRIPTOR.full_name,
            payload_truncated=len(payload) > MAX_DLQ_PAYLOAD_BYTES,
            payload_size_bytes=len(payload),
            stream_id=caller.stream_id,
            peer=caller.peer,
            instance_id=self.instance_id,
        )
        letter.reject_time.FromDatetime(datetime.now(UTC))
        batch.acks.append(await self._send(TELEMETRY_DLQ_TOPIC, letter.source_id, letter))

    async def _send(self, topic: str, key: str, message: Any) -> Awaitable[None]:
        try:
            return await self._publisher.publish(topic, key, message)
        except PublishError as exc:
            raise _kafka_unavailable(exc) from exc

    async def _complete(self, batch: _Batch) -> list[streaming_pb2.TelemetryResult]:
        claimed = [candidate for _, candidate in batch.claimed]
        failure: PublishError | None = None
        try:
            # Awaited one by one, every one of them even after a failure: no task per record (gather
            # would make one each), and no acknowledgement left unretrieved.
            for ack in batch.acks:
                try:
                    await ack
                except PublishError as exc:
                    failure = failure or exc
        except BaseException:
            await self._release(claimed, batch.claim)
            raise
        if failure is not None:
            await self._release(claimed, batch.claim)
            raise _kafka_unavailable(failure) from failure
        try:
            await self.guard.mark_accepted(
                [self.guard.idempotency_key(c.device_id, c.idempotency_key) for c in claimed]
            )
        except Exception as exc:
            # In Kafka but not remembered: a resend would be published again (consumers dedupe on
            # the deterministic event id). Report it rather than ack silently.
            raise _redis_unavailable(exc) from exc
        for index, _ in batch.claimed:
            batch.results[index].status = Status.TELEMETRY_RESULT_STATUS_ACCEPTED
        for index, candidate in batch.pending:
            await self._resolve_pending(batch, index, candidate)
        totals, now = self.totals, time.monotonic()
        for result in batch.results:
            if result.status == Status.TELEMETRY_RESULT_STATUS_ACCEPTED:
                totals.accepted += 1
                totals.accepted_rate.record(now)
            elif result.status == Status.TELEMETRY_RESULT_STATUS_DUPLICATE:
                totals.duplicate += 1
            else:
                totals.rejected += 1
        return batch.results

    async def _release(self, claimed: list[Candidate], claim: str) -> None:
        try:
            await self.guard.release(claimed, claim)
        except Exception:  # the claims then expire by themselves (pending TTL)
            log.warning("telemetry claims not released", exc_info=True)

    async def _resolve_pending(self, batch: _Batch, index: int, candidate: Candidate) -> None:
        """Another transmission of this key was being published: wait for its outcome."""
        key = self.guard.idempotency_key(candidate.device_id, candidate.idempotency_key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PENDING_WAIT_S
        while loop.time() < deadline:
            state = await self.guard.state(key)
            if state == b"a":
                batch.results[index].status = Status.TELEMETRY_RESULT_STATUS_DUPLICATE
                return
            if state is None:  # the other transmission failed: publish this one
                retry = await self.start(batch.caller, [batch.samples[index]])
                batch.results[index].CopyFrom((await retry)[0])
                return
            await asyncio.sleep(PENDING_POLL_S)
        raise status_error(
            grpc.StatusCode.UNAVAILABLE,
            f"reading {candidate.idempotency_key} is still being published by another stream",
            retry_delay_s=RETRY_DELAY_S,
        )

    # --- SubmitTelemetry ----------------------------------------------------------------------------

    async def submit(
        self, request: streaming_pb2.SubmitTelemetryRequest, context: Context
    ) -> streaming_pb2.SubmitTelemetryResponse:
        """Serve one SubmitTelemetry call; raises StatusError for call-level failures."""
        samples = request.samples
        if not 1 <= len(samples) <= MAX_SUBMIT_SAMPLES:
            raise status_error(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"send 1 to {MAX_SUBMIT_SAMPLES} readings",
                field_violations={"samples": f"{len(samples)} readings; 1 to {MAX_SUBMIT_SAMPLES}"},
            )
        principal = current_principal()
        requested = principal.subject if principal is not None and principal.kind == "device" else ""
        device_id = bound_device(requested or samples[0].device_id)
        caller = caller_for(device_id)
        caller = Caller(caller.device_id, caller.credential, "", context.peer() or "")
        now = self._clock()
        try:
            limited = await self.guard.limited(caller.device_id, caller.credential, now)
        except Exception as exc:
            raise _redis_unavailable(exc) from exc
        if limited:
            retry_after = self.guard.retry_after_s(now)
            raise status_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"telemetry rate limit of {self.guard.settings.rate_limit_per_minute} readings per "
                f"minute reached; retry after {retry_after:.1f} s",
                reason="RATE_LIMITED",
                retry_delay_s=retry_after,
            )
        return streaming_pb2.SubmitTelemetryResponse(results=await self.process(caller, samples))

    # --- StreamTelemetry ----------------------------------------------------------------------------

    async def serve(
        self, requests: AsyncIterator[streaming_pb2.StreamTelemetryRequest], context: Context
    ) -> None:
        """Run one StreamTelemetry call to its end; raises StatusError for the stream errors."""
        iterator = aiter(requests)
        first = await anext(iterator, None)
        if first is None or first.WhichOneof("message") != "open":
            raise status_error(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message of a telemetry stream must be `open`",
                field_violations={"open": "required as the first message"},
            )
        device_id = first.open.device_id
        if not ID_PATTERN.match(device_id):
            raise status_error(
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid open.device_id",
                field_violations={"open.device_id": "1-63 characters of [a-z0-9._-]"},
            )
        bound_device(device_id)
        if self.draining.is_set():
            raise status_error(
                grpc.StatusCode.UNAVAILABLE, "this instance is shutting down", retry_delay_s=RETRY_DELAY_S
            )
        stream_id = str(uuid.uuid4())
        base = caller_for(device_id)
        caller = Caller(device_id, base.credential, stream_id, context.peer() or "")
        state = TelemetryStreamState(
            stream_id=stream_id,
            device_id=device_id,
            peer=caller.peer,
            client_version=first.open.client_version,
            open_time=datetime.now(UTC),
            credit=self.settings.stream_window,
        )
        self.streams[stream_id] = state
        try:
            await TelemetryStreamCall(self, caller, state, context).run(iterator)
        finally:
            del self.streams[stream_id]


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def _kafka_unavailable(exc: Exception) -> StatusError:
    return status_error(
        grpc.StatusCode.UNAVAILABLE,
        f"Kafka did not acknowledge: {exc}; resend the unsettled readings",
        retry_delay_s=RETRY_DELAY_S,
    )


def _redis_unavailable(exc: Exception) -> StatusError:
    return status_error(
        grpc.StatusCode.UNAVAILABLE,
        f"Redis is unavailable ({type(exc).__name__}); resend the unsettled readings",
        retry_delay_s=RETRY_DELAY_S,
    )
