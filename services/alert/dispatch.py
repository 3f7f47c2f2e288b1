"""Which groups and receivers a firing alert notifies, decided without I/O from the routing configuration."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.alert.escalation import first_step
from services.alert.inhibition import FiringAlert, inhibited_by
from services.alert.routing import RoutingConfig, Timing

NOTIFY_FIRING = 1  # itsmesh.v1.NotificationType numbers
NOTIFY_ESCALATION = 3
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
class GroupJoin:
    """A route the alert notifies through: the group it joins there, and that group's receiver and timing."""

    receiver: str
    receiver_type: int
    group_key: str
    group_labels: Mapping[str, str]
    timing: Timing


@dataclass(frozen=True, slots=True)
class Plan:
    """Groups to join, direct deliveries (escalation tier 0), and why nothing else was planned."""

    groups: list[GroupJoin] = field(default_factory=list)
    deliveries: list[PlannedDelivery] = field(default_factory=list)
    muted: bool = False
    inhibited_by: list[str] = field(default_factory=list)
    group_key: str = ""
    escalation_policy: str = ""
    next_escalation: datetime | None = None
    silenced: bool = False

    @property
    def suppressed(self) -> bool:
        """Whether some notification was held back (silenced, inhibited or a route muted)."""
        return self.muted or bool(self.inhibited_by) or self.silenced


def plan(
    config: RoutingConfig | None,
    alert: Mapping[str, Any],
    *,
    silenced: bool,
    firing: Iterable[FiringAlert],
    now: datetime,
    escalate: bool = True,
) -> Plan:
    """Where a firing alert goes.

    ``alert`` carries ``fingerprint`` and ``labels`` (the matcher labels, severity included). Silenced
    and inhibited alerts join no group; a route whose mute interval is active is skipped. Each matching
    route's group batches the alert with the others of the group (``grouping``); a route's escalation
    policy adds its tier 0 receivers as direct deliveries (``escalate`` = False leaves them out).
    """
    if config is None:
        return Plan()
    labels: Mapping[str, str] = alert["labels"]
    matches = config.match(labels)
    group_key = matches[0].group_key if matches else ""
    inhibitors = inhibited_by(alert["fingerprint"], labels, firing, config.inhibit_rules)
    if silenced or inhibitors:
        return Plan(inhibited_by=inhibitors, group_key=group_key, silenced=silenced)
    groups: list[GroupJoin] = []
    deliveries: list[PlannedDelivery] = []
    muted = False
    policy_name, next_escalation = "", None
    for match in matches:
        if config.muted(match.route, now):
            muted = True
            continue
        receiver = config.receivers[match.route.receiver]
        groups.append(
            GroupJoin(
                receiver.name,
                RECEIVER_TYPES[receiver.type],
                match.group_key,
                match.group_labels,
                match.route.timing,
            )
        )
        if match.route.escalation_policy and not policy_name and escalate:
            # Tier 0 goes out with the route's notification; later tiers follow if nobody acknowledges.
            policy = config.escalation_policies[match.route.escalation_policy]
            step = first_step(policy, now)
            policy_name, next_escalation = policy.name, step.next_time
            planned = {g.receiver for g in groups}
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
    return Plan(groups, deliveries, muted, [], group_key, policy_name, next_escalation)


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
