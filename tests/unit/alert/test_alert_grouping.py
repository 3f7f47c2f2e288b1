"""Group notification timing with a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.alert.grouping import is_due, on_alert, on_notified
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
