"""Label matchers and silence states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.alert.matchers import (
    Matcher,
    MatchType,
    SilenceState,
    all_match,
    matcher_violations,
    matches_empty,
    silence_state,
)

LABELS = {"kind": "camera_offline", "camera_id": "cam-17", "severity": "high"}


@pytest.mark.parametrize(
    ("matcher", "expected"),
    [
        (Matcher.create("kind", "camera_offline"), True),
        (Matcher.create("kind", "speeding"), False),
        (Matcher.create("kind", "speeding", MatchType.NOT_EQUAL), True),
        (Matcher.create("camera_id", "cam-1[0-9]", MatchType.REGEX), True),
        (Matcher.create("camera_id", "cam-1", MatchType.REGEX), False),  # anchored: no partial match
        (Matcher.create("camera_id", "cam-1", MatchType.NOT_REGEX), True),
        (Matcher.create("camera_id", "cam-.*", MatchType.NOT_REGEX), False),
        (Matcher.create("zone", ""), True),  # a missing label equals ""
        (Matcher.create("zone", "north"), False),
    ],
)
def test_matcher_decides_on_one_label(matcher, expected):
    assert matcher.matches(LABELS) is expected


def test_all_matchers_must_hold_and_an_empty_list_matches_everything():
    assert all_match([Matcher.create("kind", "camera_offline"), Matcher.create("severity", "high")], LABELS)
    assert not all_match(
        [Matcher.create("kind", "camera_offline"), Matcher.create("severity", "low")], LABELS
    )
    assert all_match([], LABELS)


def test_violations_name_the_field_of_each_bad_matcher():
    problems = matcher_violations(
        [("kind", "x", 1), ("1bad", "x", 1), ("camera_id", "cam-(", 3), ("zone", "x", 9)], "silence.matchers"
    )
    fields = [name for name, _ in problems]
    assert fields == ["silence.matchers[1].name", "silence.matchers[2].value", "silence.matchers[3].type"]
    assert "regular expression" in problems[1][1]


def test_matchers_that_match_a_missing_label_are_recognised():
    assert matches_empty(Matcher.create("kind", ".*", MatchType.REGEX))
    assert matches_empty(Matcher.create("kind", "x", MatchType.NOT_EQUAL))
    assert not matches_empty(Matcher.create("kind", "x"))


def test_silence_state_follows_its_window():
    start = datetime(2026, 1, 1, 2, tzinfo=UTC)
    end = start + timedelta(hours=2)
    assert silence_state(start, end, start - timedelta(seconds=1)) is SilenceState.PENDING
    assert silence_state(start, end, start) is SilenceState.ACTIVE
    assert silence_state(start, end, end - timedelta(microseconds=1)) is SilenceState.ACTIVE
    assert silence_state(start, end, end) is SilenceState.EXPIRED
