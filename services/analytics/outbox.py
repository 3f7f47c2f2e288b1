"""Relays the alert outbox to the alert service's RaiseAlert through the mesh (breaker, retries).

Entries were written in the transaction that stored their violation or anomaly. Each round leases a few
due entries (so several instances never send the same one at once), raises them in order and marks the
delivered ones sent. The violation/anomaly id is the ``client_alert_id``, so a resend after a lost reply
is a no-op at the alert service. While the alert service is unreachable entries wait with backoff: an
outage delays alerts and loses none. Each alert is raised in the trace of the Kafka record that produced
its entry (the stored ``traceparent``), however late it is delivered.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate

from itsmesh.v1 import alert_pb2
from mesh.pg_pool import DATABASE_DOWN

log = logging.getLogger(__name__)

RAISE_TIMEOUT_S: Final = 5.0
LEASE_S: Final = 30.0
BASE_BACKOFF_S: Final = 0.5
# Worth trying again later; anything else is the request's fault and waits for the longest backoff.
_TRANSIENT: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.CANCELLED,
    }
)

_LEASE: Final = """
UPDATE analytics.alert_outbox SET next_attempt_at = now() + make_interval(secs => $2)
WHERE outbox_id IN (
    SELECT outbox_id FROM analytics.alert_outbox
    WHERE sent_at IS NULL AND next_attempt_at <= now()
    ORDER BY outbox_id LIMIT $1 FOR UPDATE SKIP LOCKED
)
RETURNING outbox_id, source_kind, source_id, request, attempts, traceparent
"""


@dataclass(frozen=True, slots=True)
class OutboxState:
    """Undelivered entries and the age of the oldest."""

    pending: int
    oldest_age_s: float


async def outbox_state(pool: asyncpg.Pool) -> OutboxState:
    """How far behind the relay is."""
    row = await pool.fetchrow(
        "SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS age "
        "FROM analytics.alert_outbox WHERE sent_at IS NULL"
    )
    assert row is not None
    return OutboxState(int(row["n"]), float(row["age"] or 0.0))


class OutboxRelay:
    """Delivers outbox entries with ``stub`` (an AlertService stub on the mesh client)."""

    def __init__(
        self, pool: asyncpg.Pool, stub: Any, *, batch_size: int = 100, backoff_max_s: float = 30.0
    ) -> None:
        self._pool = pool
        self._stub = stub
        self._batch_size = batch_size
        self._backoff_max_s = backoff_max_s
        self.delivered_total = 0
        self.failed_attempts_total = 0

    async def run(self, interval_s: float) -> None:
        """Relay until cancelled; a full round is followed by another at once."""
        while True:
            try:
                sent = await self.relay_once()
            except (asyncpg.PostgresError, *DATABASE_DOWN) as exc:
                log.warning("outbox relay cannot reach the database", extra={"error": str(exc)})
                sent = 0
            if sent < self._batch_size:
                await asyncio.sleep(interval_s)

    def _backoff(self, attempts: int) -> float:
        return float(min(self._backoff_max_s, BASE_BACKOFF_S * 2 ** min(attempts, 16)))

    async def relay_once(self) -> int:
        """One round: returns how many entries were delivered."""
        rows = await self._pool.fetch(_LEASE, self._batch_size, LEASE_S)
        delivered = 0
        ordered = sorted(rows, key=lambda r: r["outbox_id"])
        for index, row in enumerate(ordered):
            request = alert_pb2.RaiseAlertRequest.FromString(row["request"])
            try:
                await self._raise(request, row["traceparent"])
            except grpc.aio.AioRpcError as exc:
                self.failed_attempts_total += 1
                transient = exc.code() in _TRANSIENT
                delay = self._backoff(row["attempts"]) if transient else self._backoff_max_s
                log.log(
                    logging.INFO if transient else logging.ERROR,
                    "alert not raised; will retry",
                    extra={"source_id": row["source_id"], "code": exc.code().name, "retry_in_s": delay},
                )
                # An unreachable alert service fails the rest of the round too: put it all back.
                rest = ordered[index:] if transient else [row]
                await self._retry_later([r["outbox_id"] for r in rest], delay, exc.code().name)
                if transient:
                    break
                continue
            await self._pool.execute(
                "UPDATE analytics.alert_outbox SET sent_at = now(), attempts = attempts + 1, "
                "last_error = NULL WHERE outbox_id = $1",
                row["outbox_id"],
            )
            delivered += 1
        self.delivered_total += delivered
        return delivered

    async def _raise(self, request: alert_pb2.RaiseAlertRequest, traceparent: str | None) -> None:
        """RaiseAlert as a child of ``traceparent`` (the producing record's context), when there is one:
        the mesh client's span and the traceparent it sends continue that trace into the alert service."""
        if not traceparent:
            await self._stub.RaiseAlert(request, timeout=RAISE_TIMEOUT_S)
            return
        token = otel_context.attach(propagate.extract({"traceparent": traceparent}))
        try:
            await self._stub.RaiseAlert(request, timeout=RAISE_TIMEOUT_S)
        finally:
            otel_context.detach(token)

    async def _retry_later(self, outbox_ids: list[int], delay_s: float, error: str) -> None:
        await self._pool.execute(
            "UPDATE analytics.alert_outbox SET attempts = attempts + 1, last_error = $2, "
            "next_attempt_at = $3 WHERE outbox_id = ANY($1::bigint[])",
            outbox_ids,
            error,
            datetime.now(UTC) + timedelta(seconds=delay_s),
        )


async def prune(pool: asyncpg.Pool, keep_s: float) -> tuple[int, int]:
    """Forget processed event ids and delivered outbox rows older than ``keep_s``; returns both counts.

    Event ids need to outlive only the records Kafka can still deliver again, so ``keep_s`` should cover
    the topics' retention.
    """
    cutoff = datetime.now(UTC) - timedelta(seconds=keep_s)
    events = await pool.execute("DELETE FROM analytics.processed_events WHERE processed_at < $1", cutoff)
    sent = await pool.execute("DELETE FROM analytics.alert_outbox WHERE sent_at < $1", cutoff)
    return int(events.rsplit(" ", 1)[-1]), int(sent.rsplit(" ", 1)[-1])


async def prune_forever(pool: asyncpg.Pool, keep_s: float, interval_s: float = 3600.0) -> None:
    """``prune`` every ``interval_s`` until cancelled."""
    while True:
        try:
            events, sent = await prune(pool, keep_s)
            if events or sent:
                log.info("pruned", extra={"processed_events": events, "outbox_rows": sent})
        except (asyncpg.PostgresError, *DATABASE_DOWN) as exc:
            log.warning("prune failed", extra={"error": str(exc)})
        await asyncio.sleep(interval_s)
