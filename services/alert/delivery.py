"""The delivery worker: claims due deliveries, sends them concurrently, records every attempt, backs off.

The decisions (backoff, give-up) are in ``backoff.py``; this adapter is the only place that sleeps or
reads the latency clock. One slow or failing receiver never holds up the others: every claimed delivery
is sent in its own task, each bounded by its receiver's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from datetime import datetime, timedelta

from services.alert.backoff import Backoff
from services.alert.routing_source import Clock, RoutingSource
from services.alert.senders import OUTCOME_ERROR, OUTCOME_SUCCESS, AttemptResult, Senders
from services.alert.store import DeliveryStore, DueDelivery
from services.alert.wakeup import Wakeup, stop_if_cancelled

log = logging.getLogger(__name__)

STATE_RETRYING = 2  # itsmesh.v1.DeliveryState numbers
STATE_SUCCEEDED = 3
STATE_FAILED = 4
BATCH = 64
MAX_IN_FLIGHT = 512
LEASE_S = 60.0


class DeliveryWorker:
    """Runs until cancelled; ``run_once`` does one round (claim, send, record) and says how many it sent."""

    def __init__(
        self,
        store: DeliveryStore,
        routing: RoutingSource,
        senders: Senders,
        backoff: Backoff,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._routing = routing
        self._senders = senders
        self._backoff = backoff
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography

    async def run(self, poll_interval_s: float, wakeup: Wakeup | None = None) -> None:
        """Deliver forever. Each claimed delivery is sent in its own task, so a slow receiver holds up
        neither the others nor the next claim; sleeps (until woken) only when nothing was due."""
        wakeup = wakeup or Wakeup()
        inflight: dict[asyncio.Task[None], uuid.UUID] = {}
        try:
            while True:
                wakeup.clear()
                room = MAX_IN_FLIGHT - len(inflight)
                due: list[DueDelivery] = []
                if room > 0:
                    try:
                        due = await self._store.claim_due(
                            self._clock(), min(BATCH, room), LEASE_S, list(inflight.values())
                        )
                    except Exception:  # a database hiccup must not end delivery; the next round retries
                        stop_if_cancelled()
                        log.exception("claiming deliveries failed")
                for delivery in due:
                    task = asyncio.create_task(self._attempt_logged(delivery))
                    inflight[task] = delivery.delivery_id
                    task.add_done_callback(lambda done: inflight.pop(done, None))
                if not due:
                    await wakeup.wait(poll_interval_s)
        finally:
            for task in inflight:
                task.cancel()
            # cancelled mid-send: the lease runs out and the delivery is attempted again (nothing lost)
            await asyncio.gather(*inflight, return_exceptions=True)

    async def run_once(self) -> int:
        """Claim what is due now and attempt each delivery concurrently; how many were attempted."""
        due = await self._store.claim_due(self._clock(), BATCH, LEASE_S)
        if due:
            await asyncio.gather(*(self._attempt(d) for d in due))
        return len(due)

    async def _attempt_logged(self, delivery: DueDelivery) -> None:
        try:
            await self._attempt(delivery)
        except Exception:  # the attempt could not be recorded; the lease expires and it is retried
            log.exception("delivery attempt failed", extra={"delivery_id": str(delivery.delivery_id)})

    async def _attempt(self, delivery: DueDelivery) -> None:
        attempt_time = self._clock()
        started = time.perf_counter()
        loaded = self._routing.loaded
        receiver = loaded.config.receivers.get(delivery.receiver) if loaded is not None else None
        if receiver is None:
            result = AttemptResult(OUTCOME_ERROR, error=f"receiver {delivery.receiver!r} is not configured")
        else:
            try:
                result = await self._senders.send(receiver, delivery.payload)
            except Exception as exc:  # a sender bug is recorded as a failed attempt, not lost
                log.exception("sender failed", extra={"receiver": delivery.receiver})
                result = AttemptResult(OUTCOME_ERROR, error=f"{type(exc).__name__}: {exc}")
        latency_ms = (time.perf_counter() - started) * 1000
        attempts = delivery.attempts + 1
        next_time: datetime | None = None
        if result.outcome == OUTCOME_SUCCESS:
            state = STATE_SUCCEEDED
        elif receiver is None or self._backoff.gives_up(attempts):
            state = STATE_FAILED
        else:
            state = STATE_RETRYING
            next_time = attempt_time + timedelta(seconds=self._backoff.delay(attempts, self._rng))
        await self._store.record_attempt(
            delivery.delivery_id,
            attempts,
            attempt_time,
            result.outcome,
            latency_ms,
            result.http_status_code,
            result.error,
            state,
            next_time,
        )
