"""The suppression checker: notifies held-back alerts once their silence, inhibition or mute interval ends.

``Notifier.recheck`` decides (with the pure ``dispatch.plan``); this adapter runs it every interval, or at
once when woken (an alert resolved, a silence was deleted or changed), and tells watchers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from itsmesh.v1 import alert_pb2
from services.alert.notifier import Notifier
from services.alert.routing_source import Clock
from services.alert.wakeup import Wakeup, stop_if_cancelled

log = logging.getLogger(__name__)


class SuppressionChecker:
    """Runs until cancelled; ``run_once`` rechecks now and says how many alerts changed."""

    def __init__(
        self,
        notifier: Notifier,
        clock: Clock,
        on_changed: Callable[[alert_pb2.Alert, datetime], None],
    ) -> None:
        self._notifier = notifier
        self._clock = clock
        self._on_changed = on_changed

    async def run(self, interval_s: float, wakeup: Wakeup) -> None:
        """Recheck every ``interval_s`` and whenever woken."""
        while True:
            wakeup.clear()
            try:
                await self.run_once()
            except Exception:  # a database hiccup must not end rechecking; the next round retries
                stop_if_cancelled()
                log.exception("suppression recheck failed")
            await wakeup.wait(interval_s)

    async def run_once(self) -> int:
        """Recheck the held-back alerts at the current time."""
        now = self._clock()
        changed = await self._notifier.recheck(now)
        for alert in changed:
            self._on_changed(alert, now)
        return len(changed)
