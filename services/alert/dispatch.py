"""Which receivers an alert change notifies, decided without I/O from the routing configuration."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.alert.escalation import first_step
from services.alert.inhibition import FiringAlert, inhibited_by
from services.alert.routing import RoutingConfig

NOTIFY_FIRING = 1  # itsmesh.v1.NotificationType numbers
NOTIFY_ESCALATION = 3
NOTIFY_RESOLVED = 4
RECEIVER_TYPES = {"webhook": 1, "slack": 2, "email": 3, "kafka": 4}  # itsmesh.v1.ReceiverType numbers


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    """One notification to create: to ``receiver``, first attempt at ``due``."""

    receiver: str
    receiver_type: int
    notification_type: int
    group_key: str
    group_labels: Mapping[str, str]
    due: datetime


@dataclass(frozen=True, slots=True)
class Plan:
    """Deliveries to create, and why others were not (for the alert's flags and statistics)."""

    deliveries: list[PlannedDelivery] = field(default_factory=list)
    muted: bool = False
    inhibited_by: list[str] = field(default_factory=list)
    group_key: str = ""
    escalation_policy: str = ""
    next_escalation: datetime | None = None


def plan(
    config: RoutingConfig | None,
    alert: Mapping[str, Any],
    *,
    silenced: bool,
    firing: Iterable[FiringAlert],
    resolved: bool,
    now: datetime,
) -> Plan:
    """Deliveries for a newly firing (or resolved) alert.

    ``alert`` carries ``fingerprint`` and ``labels`` (the matcher labels, severity included). Silenced
    and inhibited alerts notify nobody; a route whose mute interval is active is skipped. A firing
    notification waits the route's group_wait; a resolution goes out at once.
    """
    if config is None:
        return Plan()
    labels: Mapping[str, str] = alert["labels"]
    matches = config.match(labels)
    group_key = matches[0].group_key if matches else ""
    inhibitors = inhibited_by(alert["fingerprint"], labels, firing, config.inhibit_rules)
    if silenced or inhibitors:
        return Plan(inhibited_by=inhibitors, group_key=group_key)
    deliveries: list[PlannedDelivery] = []
    muted = False
    policy_name, next_escalation = "", None
    for match in matches:
        if config.muted(match.route, now):
            muted = True
            continue
        receiver = config.receivers[match.route.receiver]
        wait = 0.0 if resolved else match.route.timing.group_wait_s
        deliveries.append(
            PlannedDelivery(
                receiver=receiver.name,
                receiver_type=RECEIVER_TYPES[receiver.type],
                notification_type=NOTIFY_RESOLVED if resolved else NOTIFY_FIRING,
                group_key=match.group_key,
                group_labels=match.group_labels,
                due=now + timedelta(seconds=wait),
            )
        )
        if match.route.escalation_policy and not policy_name and not resolved:
            # Tier 0 goes out with the route's notification; later tiers follow if nobody acknowledges.
            policy = config.escalation_policies[match.route.escalation_policy]
            step = first_step(policy, now)
            policy_name, next_escalation = policy.name, step.next_time
            planned = {d.receiver for d in deliveries}
            for name in step.receivers:
                if name not in planned:
                    receiver = config.receivers[name]
                    deliveries.append(
                        PlannedDelivery(
                            name,
                            RECEIVER_TYPES[receiver.type],
                            NOTIFY_FIRING,
                            match.group_key,
                            match.group_labels,
                            now + timedelta(seconds=policy.tiers[0].after_s),
                        )
                    )
    return Plan(deliveries, muted, [], group_key, policy_name, next_escalation)


def escalation_deliveries(
    config: RoutingConfig, receivers: Iterable[str], group_key: str, now: datetime
) -> list[PlannedDelivery]:
    """Escalation notifications to a tier's receivers (those still configured), due at once."""
    return [
        PlannedDelivery(
            name, RECEIVER_TYPES[config.receivers[name].type], NOTIFY_ESCALATION, group_key, {}, now
        )
        for name in receivers
        if name in config.receivers
    ]
