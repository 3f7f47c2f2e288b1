"""The group flusher: sends each due alert group's batch as one notification (a delivery the delivery
worker sends). ``grouping.flush`` decides; this adapter polls, or is woken when a group is due at once.
(A group due the moment an alert joins it notifies where it is joined; this handles the timed ones.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from services.alert.delivery import DeliverySink
from services.alert.group_store import Flushed, FlushNow, GroupStore
from services.alert.grouping import flush
from services.alert.notifier import group_payload
from services.alert.routing_source import Clock
from services.alert.wakeup import Wakeup, stop_if_cancelled

log = logging.getLogger(__name__)

BATCH = 32


class GroupFlusher:
    """Runs until cancelled; ``run_once`` flushes what is due now and says how many groups it looked at.

    Notifications go to ``sink`` at once when there is one; otherwise ``on_delivery`` wakes the worker.
    """

    def __init__(
        self,
        groups: GroupStore,
        clock: Clock,
        on_delivery: Callable[[], None],
        sink: DeliverySink | None = None,
    ) -> None:
        self._groups = groups
        self._clock = clock
        self._on_delivery = on_delivery
        self._sink = sink

    async def run(self, poll_interval_s: float, wakeup: Wakeup) -> None:
        """Flush forever; sleeps (until woken) only when nothing was due."""
        while True:
            wakeup.clear()
            try:
                found = await self.run_once()
            except Exception:  # a database hiccup must not end flushing; the next round retries
                stop_if_cancelled()
                log.exception("group flush round failed")
                found = 0
            if found == 0:
                await wakeup.wait(poll_interval_s)

    async def run_once(self) -> int:
        """Flush every group due now, concurrently (each in its own transaction)."""
        now = self._clock()
        keys = await self._groups.due(now, BATCH)
        if not keys:
            return 0
        how = FlushNow(
            lambda state, timing, members: flush(state, timing, members, now),
            group_payload,
            self._sink.lease_s if self._sink is not None else None,
        )
        results = await asyncio.gather(
            *(self._groups.flush(key, now, how) for key in keys), return_exceptions=True
        )
        flushed: list[Flushed] = []
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, BaseException):  # that group stays due and is tried again next round
                log.error("group flush failed", exc_info=result, extra={"group_key": key})
            elif result is not None:
                flushed.append(result)
        handed = [f.delivery for f in flushed if f.delivery is not None]
        if handed and self._sink is not None:
            self._sink.submit(handed)
        if any(f.notified and f.delivery is None for f in flushed):
            self._on_delivery()
        return len(keys)
