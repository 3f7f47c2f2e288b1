"""The delivery worker: sends deliveries concurrently, records every attempt, backs off.

Deliveries reach it two ways: handed over at once (``submit``) by the code that created them on this
instance, already leased to it, or claimed from PostgreSQL (those due for a retry, created while no worker
ran, or left by a stopped instance). The decisions (backoff, give-up) are in ``backoff.py``; this adapter
is the only place that sleeps or reads the latency clock. One slow or failing receiver never holds up the
others: every delivery is sent in its own task, each bounded by its receiver's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol

from services.alert.attempt_log import AttemptLog
from services.alert.backoff import Backoff
from services.alert.routing_source import Clock, RoutingSource
from services.alert.senders import OUTCOME_ERROR, OUTCOME_SUCCESS, AttemptResult, Senders
from services.alert.store import Attempt, DeliveryStore, DueDelivery
from services.alert.wakeup import Wakeup, stop_if_cancelled

log = logging.getLogger(__name__)

STATE_RETRYING = 2  # itsmesh.v1.DeliveryState numbers
STATE_SUCCEEDED = 3
STATE_FAILED = 4
BATCH = 64
MAX_IN_FLIGHT = 512
LEASE_S = 60.0


class DeliverySink(Protocol):
    """Takes deliveries created leased to this instance (``lease_s``) and sends them at once."""

    lease_s: float

    def submit(self, deliveries: Sequence[DueDelivery]) -> bool:
        """False when nobody is sending: they stay leased, then any worker claims them."""
        ...


class DeliveryWorker:
    """Runs until cancelled; ``submit`` hands it deliveries to send now, ``run_once`` does one claim round."""

    lease_s = LEASE_S
    """How long a delivery created for ``submit`` is leased to this instance (then anyone may claim it)."""

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
        self._log = AttemptLog(store)
        self._inflight: dict[asyncio.Task[None], uuid.UUID] = {}
        self._waiting: deque[DueDelivery] = deque()  # handed over while MAX_IN_FLIGHT were being sent
        self._unsent: list[uuid.UUID] = []  # cancelled before their attempt was recorded
        self._stopped = False

    def submit(self, deliveries: Sequence[DueDelivery]) -> bool:
        """Send deliveries this instance created leased to itself, without waiting for a claim round.

        False once the worker stopped: they stay leased and are claimed once the lease runs out.
        """
        if self._stopped:
            return False
        for delivery in deliveries:
            if len(self._inflight) < MAX_IN_FLIGHT:
                self._start(delivery)
            else:
                self._waiting.append(delivery)
        return True

    async def run(self, poll_interval_s: float, wakeup: Wakeup | None = None) -> None:
        """Deliver forever. Each delivery is sent in its own task, so a slow receiver holds up neither the
        others nor the next claim; sleeps (until woken) only when nothing was due."""
        wakeup = wakeup or Wakeup()
        try:
            while True:
                wakeup.clear()
                room = MAX_IN_FLIGHT - len(self._inflight) - len(self._waiting)
                due: list[DueDelivery] = []
                if room > 0:
                    mine = [*self._inflight.values(), *(d.delivery_id for d in self._waiting)]
                    try:
                        due = await self._store.claim_due(self._clock(), min(BATCH, room), LEASE_S, mine)
                    except Exception:  # a database hiccup must not end delivery; the next round retries
                        stop_if_cancelled()
                        log.exception("claiming deliveries failed")
                for delivery in due:
                    self._start(delivery)
                if not due:
                    await wakeup.wait(poll_interval_s)
        finally:
            await self._stop()

    async def run_once(self) -> int:
        """Claim what is due now and attempt each delivery concurrently; how many were attempted."""
        due = await self._store.claim_due(self._clock(), BATCH, LEASE_S)
        if due:
            await asyncio.gather(*(self._attempt(d) for d in due))
        return len(due)

    def _start(self, delivery: DueDelivery) -> None:
        task = asyncio.create_task(self._attempt(delivery))
        self._inflight[task] = delivery.delivery_id
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        if not self._stopped and self._waiting and len(self._inflight) < MAX_IN_FLIGHT:
            self._start(self._waiting.popleft())

    async def _stop(self) -> None:
        """Cancel the sends; record the attempts that finished; release the leases of the rest, so they are
        due at once for the next instance (a send cut off mid-way may so arrive twice, never zero times)."""
        self._stopped = True
        tasks = list(self._inflight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._log.drain()
        unsent = [*self._unsent, *(d.delivery_id for d in self._waiting)]
        self._unsent, self._waiting = [], deque()
        if unsent:
            try:
                await self._store.release(unsent, self._clock())
            except Exception:  # they are claimed when their lease runs out instead
                log.exception("releasing unsent deliveries failed", extra={"deliveries": len(unsent)})

    async def _attempt(self, delivery: DueDelivery) -> None:
        attempt: Attempt | None = None
        try:
            attempt = await self._send(delivery)
            await self._log.record(attempt)
        except asyncio.CancelledError:
            if attempt is None:
                self._unsent.append(delivery.delivery_id)
            raise
        except Exception:  # the attempt could not be recorded; the lease expires and it is retried
            log.exception("delivery attempt failed", extra={"delivery_id": str(delivery.delivery_id)})

    async def _send(self, delivery: DueDelivery) -> Attempt:
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
        return Attempt(
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
