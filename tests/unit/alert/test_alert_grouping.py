"""Group notification timing with a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.alert.grouping import (
    NOTIFIED_FIRING,
    STATUS_ACKNOWLEDGED,
    STATUS_FIRING,
    STATUS_RESOLVED,
    GroupState,
    Member,
    flush,
    is_due,
    on_alert,
    on_notified,
)
from services.alert.routing import Timing

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMING = Timing(group_wait_s=30, group_interval_s=300, repeat_interval_s=3600)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_new_group_waits_group_wait_and_batches_what_arrives_meanwhile():
    state = on_alert(None, TIMING, at(0))
    assert not is_due(state, at(29))
    state = on_alert(state, TIMING, at(10))
    assert state.next_notify == at(30)  # a second alert does not push the first flush back
    assert is_due(state, at(30))


def test_no_group_wait_notifies_at_once():
    state = on_alert(None, Timing(group_wait_s=0), at(0))
    assert is_due(state, at(0))


def test_after_a_notification_changes_wait_for_group_interval():
    state = on_notified(on_alert(None, TIMING, at(0)), TIMING, at(30))
    assert not state.changed
    state = on_alert(state, TIMING, at(40))
    assert state.changed
    assert state.next_notify == at(330)
    assert not is_due(state, at(329))


def test_an_unchanged_group_repeats_after_repeat_interval():
    state = on_notified(on_alert(None, TIMING, at(0)), TIMING, at(30))
    assert state.next_notify == at(3630)


def test_a_change_long_after_the_last_notification_goes_out_at_once():
    state = on_notified(on_alert(None, TIMING, at(0)), TIMING, at(30))
    state = on_alert(state, TIMING, at(1000))
    assert state.next_notify == at(1000)


FIRING, ACKED, RESOLVED = STATUS_FIRING, STATUS_ACKNOWLEDGED, STATUS_RESOLVED


def test_the_first_flush_sends_every_open_alert_of_the_group_in_one_notification():
    state = on_alert(None, TIMING, at(0))
    members = [Member("a", FIRING, False), Member("b", FIRING, False), Member("c", FIRING, True)]
    decided = flush(state, TIMING, members, at(30))
    assert (decided.notification, decided.send) == ("firing", ("a", "b"))
    assert decided.notified == {"a": NOTIFIED_FIRING, "b": NOTIFIED_FIRING}
    assert decided.leave == ("c",)  # suppressed and never told: rejoins when its suppression ends
    assert decided.state == GroupState(next_notify=at(30 + 3600), last_notify=at(30), changed=False)


def test_a_change_after_a_notification_goes_out_in_the_next_batch_with_the_resolution():
    state = GroupState(next_notify=at(300), last_notify=at(0), changed=True)
    members = [
        Member("a", RESOLVED, False, NOTIFIED_FIRING),
        Member("b", FIRING, False, NOTIFIED_FIRING),
        Member("c", FIRING, False),
    ]
    decided = flush(state, TIMING, members, at(300))
    assert (decided.notification, decided.send) == ("firing", ("b", "c", "a"))
    assert decided.leave == ("a",)


def test_when_everything_resolved_the_resolution_goes_out_and_the_group_ends():
    state = GroupState(next_notify=at(300), last_notify=at(0), changed=True)
    decided = flush(state, TIMING, [Member("a", RESOLVED, False, NOTIFIED_FIRING)], at(300))
    assert (decided.notification, decided.send, decided.state) == ("resolved", ("a",), None)


def test_an_unchanged_group_repeats_after_repeat_interval_only():
    members = [Member("a", FIRING, False, NOTIFIED_FIRING)]
    early = flush(GroupState(next_notify=at(100), last_notify=at(0), changed=True), TIMING, members, at(100))
    assert early.notification == ""
    assert early.state is not None
    assert early.state.next_notify == at(3600)
    due = flush(early.state, TIMING, members, at(3600))
    assert (due.notification, due.send) == ("repeat", ("a",))


def test_a_fully_acknowledged_group_is_not_repeated():
    members = [Member("a", ACKED, False, NOTIFIED_FIRING)]
    decided = flush(GroupState(next_notify=at(3600), last_notify=at(0)), TIMING, members, at(3600))
    assert decided.notification == ""


def test_a_resolution_never_notified_ends_the_group_silently():
    decided = flush(on_alert(None, TIMING, at(0)), TIMING, [Member("a", RESOLVED, False)], at(30))
    assert (decided.notification, decided.leave, decided.state) == ("", ("a",), None)
