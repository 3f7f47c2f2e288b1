"""Alert groups' notification timing (group_wait, group_interval, repeat_interval), decided without I/O.

Like Alertmanager: a new group waits ``group_wait`` so alerts arriving together go out together; after a
notification, a change in the group is sent at most every ``group_interval``; an unchanged group is
re-sent after ``repeat_interval``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


NOTIFIED_NONE = 0  # what a group last told about one of its alerts
NOTIFIED_FIRING = 1

STATUS_FIRING = 1  # itsmesh.v1.AlertStatus numbers
STATUS_ACKNOWLEDGED = 2
STATUS_RESOLVED = 3


@dataclass(frozen=True, slots=True)
class Member:
    """An alert of a group as the flush sees it: its status now, whether it is suppressed now, and what
    the group told about it last."""

    alert_id: str
    status: int
    suppressed: bool
    notified: int = NOTIFIED_NONE


@dataclass(frozen=True, slots=True)
class Flush:
    """What a due group does: send one notification of ``send`` (``notification`` = firing, resolved or
    repeat; empty = nothing to send), remember ``notified``, let ``leave`` go, and continue with
    ``state`` (None = the group ends)."""

    notification: str
    send: tuple[str, ...]
    notified: Mapping[str, int]
    leave: tuple[str, ...]
    state: GroupState | None


def flush(state: GroupState, timing: Timing, members: Sequence[Member], now: datetime) -> Flush:
    """Decide a due group's notification, as Alertmanager does for one aggregation group.

    Every open, unsuppressed alert goes out together with the resolutions not told yet; an unchanged
    group is repeated (unless every open alert is acknowledged: somebody is on it). Resolved alerts and
    suppressed ones never notified leave the group (the latter rejoin when their suppression ends).
    """
    firing = [m for m in members if m.status != STATUS_RESOLVED and not m.suppressed]
    resolved = [m for m in members if m.status == STATUS_RESOLVED and m.notified == NOTIFIED_FIRING]
    leave = tuple(
        m.alert_id
        for m in members
        if m.status == STATUS_RESOLVED or (m.suppressed and m.notified == NOTIFIED_NONE)
    )
    staying = [m for m in members if m.alert_id not in leave]
    changed = bool(resolved) or any(m.notified != NOTIFIED_FIRING for m in firing)
    all_acknowledged = all(m.status == STATUS_ACKNOWLEDGED for m in firing)
    if changed and firing:
        notification = "firing"
    elif changed:
        notification = "resolved"
    elif firing and not all_acknowledged and _repeat_due(state, timing, now):
        notification = "repeat"
    else:
        notification = ""
    send = tuple(m.alert_id for m in (*firing, *resolved)) if notification else ()
    notified = {m.alert_id: NOTIFIED_FIRING for m in firing} if notification else {}
    if not staying:
        next_state = None
    elif notification:
        next_state = on_notified(state, timing, now)
    else:  # nothing to tell now: look again when a repeat is due (a change brings it forward)
        repeat_at = (state.last_notify or now) + timedelta(seconds=timing.repeat_interval_s)
        next_state = replace(state, next_notify=max(repeat_at, now), changed=False)
    return Flush(notification, send, notified, leave, next_state)


def _repeat_due(state: GroupState, timing: Timing, now: datetime) -> bool:
    if state.last_notify is None:
        return True
    return now >= state.last_notify + timedelta(seconds=timing.repeat_interval_s)
