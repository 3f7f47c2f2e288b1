"""Alert groups' notification timing (group_wait, group_interval, repeat_interval), decided without I/O.

Like Alertmanager: a new group waits ``group_wait`` so alerts arriving together go out together; after a
notification, a change in the group is sent at most every ``group_interval``; an unchanged group is
re-sent after ``repeat_interval``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from services.alert.routing import Timing


@dataclass(frozen=True, slots=True)
class GroupState:
    """When a group last notified and when it is next due; ``changed`` = something to tell since then."""

    next_notify: datetime
    last_notify: datetime | None = None
    changed: bool = True


def on_alert(state: GroupState | None, timing: Timing, now: datetime) -> GroupState:
    """A new or changed alert joined the group at ``now``."""
    if state is None:
        return GroupState(next_notify=now + timedelta(seconds=timing.group_wait_s))
    if state.last_notify is None:  # still in its group_wait: keep waiting for the first flush
        return replace(state, changed=True)
    soonest = state.last_notify + timedelta(seconds=timing.group_interval_s)
    return replace(state, next_notify=min(state.next_notify, max(soonest, now)), changed=True)


def is_due(state: GroupState, now: datetime) -> bool:
    """Whether the group should notify at ``now``."""
    return now >= state.next_notify


def on_notified(state: GroupState, timing: Timing, now: datetime) -> GroupState:
    """The group notified at ``now``: nothing new to tell; repeat after repeat_interval unless it changes."""
    return GroupState(
        next_notify=now + timedelta(seconds=timing.repeat_interval_s), last_notify=now, changed=False
    )
