"""The routing configuration: parsing, validation errors naming the path, and matching with continue."""

from __future__ import annotations

import json

import pytest
import yaml

from services.alert.matchers import MatchType
from services.alert.routing import RoutingConfigError, parse, parse_duration, parse_matcher

CONFIG = {
    "receivers": [
        {"name": "ops", "webhook": {"url": "http://ops.example/hook", "secret": "s3cret", "timeout": "5s"}},
        {"name": "oncall", "slack": {"url": "https://hooks.slack.example/T/B/xyz"}},
        {"name": "bus", "kafka": {"topic": "alerts.notifications.v1"}},
    ],
    "route": {
        "receiver": "ops",
        "group_by": ["kind"],
        "group_wait": "30s",
        "routes": [
            {
                "matchers": ['kind=~"camera_.*"'],
                "receiver": "bus",
                "continue": True,
                "group_by": ["camera_id"],
            },
            {"matchers": ['severity="critical"'], "receiver": "oncall", "group_wait": 0},
            {"matchers": ['kind="speeding"'], "receiver": "bus"},
        ],
    },
    "inhibit_rules": [
        {
            "source_matchers": ['kind="camera_offline"'],
            "target_matchers": ['kind="camera_quality_degraded"'],
            "equal": ["camera_id"],
        }
    ],
    "mute_time_intervals": [
        {
            "name": "sunday-maintenance",
            "time_intervals": [
                {"weekdays": ["sunday"], "times": [{"start_time": "02:00", "end_time": "04:00"}]}
            ],
        }
    ],
}


def _text(data: object) -> str:
    return json.dumps(data, indent=2)


def test_a_valid_config_parses_and_counts_its_routes():
    config = parse(_text(CONFIG))
    assert config.root.count() == 4
    assert set(config.receivers) == {"ops", "oncall", "bus"}
    assert config.receivers["ops"].target == "http://ops.example/hook"
    assert len(config.config_hash) == 64


def test_continue_lets_an_alert_match_later_siblings_too():
    config = parse(_text(CONFIG))
    matches = config.match({"kind": "camera_offline", "camera_id": "c1", "severity": "critical"})
    assert [m.route.receiver for m in matches] == ["bus", "oncall"]
    assert matches[0].group_labels == {"camera_id": "c1"}
    assert matches[1].group_labels == {"kind": "camera_offline"}  # group_by inherited from the root
    assert matches[1].route.timing.group_wait_s == 0


def test_without_continue_the_first_matching_sibling_wins_and_no_match_falls_back_to_the_parent():
    config = parse(_text(CONFIG))
    first = config.match({"kind": "speeding", "severity": "critical"})
    assert [m.route.receiver for m in first] == ["oncall"]
    fallback = config.match({"kind": "wrong_way", "severity": "low"})
    assert [m.route.path for m in fallback] == ["route"]


def test_group_keys_separate_routes_and_label_values():
    config = parse(_text(CONFIG))
    a = config.match({"kind": "camera_offline", "camera_id": "c1"})[0]
    b = config.match({"kind": "camera_offline", "camera_id": "c2"})[0]
    assert a.group_key != b.group_key
    assert a.group_key.startswith("route.routes[0]:")


def test_every_problem_is_reported_with_its_path():
    bad = json.loads(json.dumps(CONFIG))
    bad["route"]["routes"][1]["receiver"] = "nobody"
    bad["route"]["routes"][2]["matchers"] = ['kind=~"("']
    bad["route"]["routes"][0]["group_wait"] = "soon"
    bad["route"]["routes"][0]["mute_time_intervals"] = ["never-defined"]
    bad["receivers"][0]["webhook"]["url"] = "ftp://x"
    bad["mute_time_intervals"][0]["time_intervals"][0]["weekdays"] = ["funday"]
    with pytest.raises(RoutingConfigError) as caught:
        parse(_text(bad))
    where = {w for w, _ in caught.value.problems}
    assert where == {
        "route.routes[1].receiver",
        "route.routes[2].matchers[0]",
        "route.routes[0].group_wait",
        "route.routes[0].mute_time_intervals[0]",
        "receivers[0].webhook.url",
        "mute_time_intervals[0].time_intervals[0].weekdays",
    }


def test_a_syntax_error_names_line_and_column():
    with pytest.raises(RoutingConfigError) as caught:
        parse('{\n  "route": {\n    "receiver": "ops",,\n  }\n}')
    where, why = caught.value.problems[0]
    assert where == "line 3, column 23"
    assert why


def test_unknown_keys_and_a_missing_root_are_errors():
    with pytest.raises(RoutingConfigError) as caught:
        parse(_text({"receivers": [], "rout": {}}))
    assert {w for w, _ in caught.value.problems} == {"(document).rout", "route"}


def test_redacted_text_hides_secrets():
    text = parse(_text(CONFIG)).redacted_text()
    assert "s3cret" not in text
    assert "xyz" not in text  # a Slack webhook URL is itself a secret
    assert "http://ops.example/hook" in text


@pytest.mark.parametrize(
    ("value", "seconds"), [(30, 30.0), ("30s", 30.0), ("5m", 300.0), ("4h", 14400.0), ("250ms", 0.25)]
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "-5s", -1, True])
def test_bad_durations(value):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_matcher_syntax():
    assert parse_matcher('camera_id=~"cam-1.*"').type is MatchType.REGEX
    assert parse_matcher("kind!=speeding").type is MatchType.NOT_EQUAL
    assert parse_matcher({"name": "kind", "value": "x", "type": "!~"}).type is MatchType.NOT_REGEX
    with pytest.raises(ValueError, match="not a matcher"):
        parse_matcher("no operator here")


def test_a_yaml_routing_file_means_the_same_as_its_json_form():
    as_yaml = yaml.safe_dump(CONFIG, sort_keys=False)
    assert not as_yaml.lstrip().startswith("{")
    from_yaml, from_json = parse(as_yaml), parse(_text(CONFIG))
    assert set(from_yaml.receivers) == set(from_json.receivers)
    labels = {"camera_id": "c1", "kind": "camera_offline", "severity": "critical"}
    assert [m.route.path for m in from_yaml.match(labels)] == [m.route.path for m in from_json.match(labels)]


def test_a_yaml_syntax_error_names_line_and_column():
    with pytest.raises(RoutingConfigError) as caught:
        parse("route:\n  receiver: ops\n  routes: [unclosed\n")
    assert caught.value.problems[0][0].startswith("line ")
