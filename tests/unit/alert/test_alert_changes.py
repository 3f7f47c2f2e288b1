"""The change feed behind WatchAlerts: per watcher, a change older than or equal to the last one passed on
for the same alert is dropped (duplicates from the change bus, changes that crossed between instances)."""

from __future__ import annotations

from itsmesh.v1 import alert_pb2
from services.alert.changes import ChangeFeed


def _change(alert_id: str, seconds: int, nanos: int = 0) -> alert_pb2.WatchAlertsResponse:
    change = alert_pb2.WatchAlertsResponse(change_type=alert_pb2.ALERT_CHANGE_TYPE_REPEATED)
    change.alert.alert_id = alert_id
    change.alert.update_time.seconds = seconds
    change.alert.update_time.nanos = nanos
    return change


def test_a_watcher_passes_each_change_of_an_alert_once_and_never_an_older_one():
    feed = ChangeFeed()
    with feed.subscribe() as subscription:
        for change in (
            _change("a", 10),
            _change("a", 10),
            _change("b", 5),
            _change("a", 9),
            _change("a", 10, 1000),
        ):
            feed.publish(change)
        passed = []
        while not subscription.queue.empty():
            change = subscription.queue.get_nowait()
            if subscription.fresh(change.alert):
                passed.append(
                    (change.alert.alert_id, change.alert.update_time.seconds, change.alert.update_time.nanos)
                )
    assert passed == [("a", 10, 0), ("b", 5, 0), ("a", 10, 1000)]


def test_watchers_judge_freshness_on_their_own():
    feed = ChangeFeed()
    with feed.subscribe() as first, feed.subscribe() as second:
        feed.publish(_change("a", 1))
        assert first.fresh(first.queue.get_nowait().alert)
        assert second.fresh(second.queue.get_nowait().alert)
