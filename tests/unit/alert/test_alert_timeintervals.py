"""Recurring mute windows in a location's local time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.alert.timeintervals import (
    MONTHS,
    WEEKDAYS,
    MuteTimeInterval,
    TimeInterval,
    parse_clock,
    parse_names,
)

SUNDAY_NIGHT = TimeInterval(times=((120, 240),), weekdays=frozenset({6}), location="Europe/Berlin")


@pytest.mark.parametrize(
    ("utc", "inside"),
    [
        (datetime(2026, 1, 4, 1, 0, tzinfo=UTC), True),  # Sunday 02:00 in Berlin (UTC+1)
        (datetime(2026, 1, 4, 2, 59, tzinfo=UTC), True),
        (datetime(2026, 1, 4, 3, 0, tzinfo=UTC), False),  # 04:00 local: the end is exclusive
        (datetime(2026, 1, 4, 0, 59, tzinfo=UTC), False),
        (datetime(2026, 1, 5, 1, 30, tzinfo=UTC), False),  # Monday
        (datetime(2026, 7, 5, 0, 30, tzinfo=UTC), True),  # summer time: 02:30 local (UTC+2)
    ],
)
def test_sunday_maintenance_window_in_local_time(utc, inside):
    assert SUNDAY_NIGHT.contains(utc) is inside


def test_a_named_interval_is_active_when_any_window_is():
    weekday_lunch = TimeInterval(times=((720, 780),), weekdays=parse_names(["monday:friday"], WEEKDAYS, 0))
    mute = MuteTimeInterval("quiet", (SUNDAY_NIGHT, weekday_lunch))
    assert mute.active(datetime(2026, 1, 7, 12, 30, tzinfo=UTC))  # Wednesday lunch
    assert not mute.active(datetime(2026, 1, 10, 12, 30, tzinfo=UTC))  # Saturday


def test_months_and_days_of_month():
    december_first_week = TimeInterval(
        days_of_month=parse_names(["1:7"], tuple(str(d) for d in range(1, 32)), 1),
        months=parse_names(["december"], MONTHS, 1),
    )
    assert december_first_week.contains(datetime(2026, 12, 3, 10, tzinfo=UTC))
    assert not december_first_week.contains(datetime(2026, 12, 8, 10, tzinfo=UTC))
    assert not december_first_week.contains(datetime(2026, 11, 3, 10, tzinfo=UTC))


def test_parsing_rejects_nonsense():
    assert parse_clock("24:00") == 1440
    for bad in ("25:00", "2:5", "noon", "12:60"):
        with pytest.raises(ValueError, match="not"):
            parse_clock(bad)
    with pytest.raises(ValueError, match="ends before it starts"):
        parse_names(["friday:monday"], WEEKDAYS, 0)
    with pytest.raises(ValueError, match="is not one of"):
        parse_names(["funday"], WEEKDAYS, 0)
