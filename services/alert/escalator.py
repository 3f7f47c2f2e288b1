"""The escalation worker: notifies the next tier of alerts nobody acknowledged in time.

``escalation.next_step`` decides; this adapter polls for due alerts, stores the escalation deliveries
(the delivery worker sends them) and moves the alert's tier and next escalation time.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from itsmesh.v1 import alert_pb2
from services.alert.dispatch import escalation_deliveries
from services.alert.escalation import next_step
from services.alert.notifier import alert_payload
from services.alert.routing_source import Clock, RoutingSource
from services.alert.store import AlertStore, DeliveryStore

log = logging.getLogger(__name__)

BATCH = 100


class Escalator:
    """Runs until cancelled; ``run_once`` escalates what is due now and says how many alerts moved."""

    def __init__(
        self,
        alerts: AlertStore,
        deliveries: DeliveryStore,
        routing: RoutingSource,
        clock: Clock,
        on_escalated: Callable[[alert_pb2.Alert, datetime], None] | None = None,
    ) -> None:
        self._on_escalated = on_escalated
        self._alerts = alerts
        self._deliveries = deliveries
        self._routing = routing
        self._clock = clock

    async def run(self, poll_interval_s: float) -> None:
        """Escalate forever, checking every ``poll_interval_s``."""
        while True:
            try:
                await self.run_once()
            except Exception:  # a database hiccup must not end escalation; the next round retries
                log.exception("escalation round failed")
            await asyncio.sleep(poll_interval_s)

    async def run_once(self) -> int:
        """One round: every due alert moves one tier (or stops escalating when its policy is gone)."""
        now = self._clock()
        loaded = self._routing.loaded
        moved = 0
        for alert, policy_name in await self._alerts.due_escalations(now, BATCH):
            policy = loaded.config.escalation_policies.get(policy_name) if loaded is not None else None
            alert_id = uuid.UUID(alert.alert_id)
            fired_at = alert.first_seen_time.ToDatetime(tzinfo=now.tzinfo)
            step = next_step(policy, alert.escalation_level, fired_at, now) if policy is not None else None
            if loaded is None or policy is None or step is None:
                # the policy is gone (or has no further tier): the alert stops escalating
                await self._deliveries.create(
                    alert_id,
                    "",
                    [],
                    [],
                    now,
                    escalation_level=alert.escalation_level,
                    escalation_policy=policy_name,
                    next_escalation=None,
                )
                continue
            planned = escalation_deliveries(loaded.config, step.receivers, alert.group_key, now)
            payloads = [
                {
                    "receiver": p.receiver,
                    "notification_type": "escalation",
                    "group_key": p.group_key,
                    "escalation_level": step.level,
                    "alerts": [alert_payload(alert)],
                }
                for p in planned
            ]
            await self._deliveries.create(
                alert_id,
                "",
                planned,
                payloads,
                now,
                escalation_level=step.level,
                escalation_policy=policy_name,
                next_escalation=step.next_time,
            )
            log.info("alert escalated", extra={"alert_id": alert.alert_id, "level": step.level})
            if self._on_escalated is not None:  # re-read: watchers order changes by update_time
                self._on_escalated(await self._alerts.get_alert(alert_id, now, deliveries=False), now)
            moved += 1
        return moved
