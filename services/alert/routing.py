"""The routing configuration: route tree, receivers, inhibition rules, mute intervals, escalation policies.

Parsed and validated in one pass (every problem named by its path, e.g. ``route.routes[1].receiver``);
the asyncio shell only reads files and swaps the result in. The file is YAML (read with the safe loader;
JSON, being YAML too, reads as well).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from services.alert.matchers import LABEL_NAME, Matcher, MatchType, all_match
from services.alert.timeintervals import (
    MONTHS,
    WEEKDAYS,
    MuteTimeInterval,
    TimeInterval,
    parse_clock,
    parse_names,
)

RECEIVER_TYPES = ("webhook", "slack", "email", "kafka")
_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*$')
_OPERATORS = {
    "=": MatchType.EQUAL,
    "!=": MatchType.NOT_EQUAL,
    "=~": MatchType.REGEX,
    "!~": MatchType.NOT_REGEX,
}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class RoutingConfigError(ValueError):
    """An invalid configuration; ``problems`` are ``(where, why)`` pairs, ``where`` a path or a line."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{where}: {why}" for where, why in self.problems))


@dataclass(frozen=True, slots=True)
class Timing:
    """When a group notifies: first after group_wait, changes every group_interval, repeats."""

    group_wait_s: float = 30.0
    group_interval_s: float = 300.0
    repeat_interval_s: float = 14400.0


@dataclass(frozen=True, slots=True)
class Route:
    """A node of the route tree; unset values are inherited from the parent when parsed."""

    path: str
    receiver: str
    matchers: tuple[Matcher, ...]
    group_by: tuple[str, ...]
    timing: Timing
    continue_matching: bool = False
    mute_time_intervals: tuple[str, ...] = ()
    escalation_policy: str = ""
    routes: tuple[Route, ...] = ()

    def count(self) -> int:
        """Routes in this subtree, itself included."""
        return 1 + sum(child.count() for child in self.routes)


@dataclass(frozen=True, slots=True)
class Receiver:
    """Where notifications go; ``settings`` are the type's own keys (url, secret, topic, to, ...)."""

    name: str
    type: str
    settings: Mapping[str, Any]

    @property
    def target(self) -> str:
        """Where it points, without secrets."""
        for key in ("url", "topic", "to"):
            if key in self.settings:
                value = self.settings[key]
                if key == "url":
                    return str(value).split("?", 1)[0]
                return ", ".join(value) if isinstance(value, list) else str(value)
        return ""

    @property
    def max_alerts(self) -> int:
        """Most alerts one notification carries (the rest are counted in ``truncated_alerts``); 0 = all."""
        return int(self.settings.get("max_alerts", 0))


@dataclass(frozen=True, slots=True)
class InhibitRule:
    """Suppresses alerts matching ``target`` while one matching ``source`` fires with ``equal`` labels."""

    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EscalationTier:
    """Receivers notified once the alert has been firing unacknowledged for ``after_s``."""

    after_s: float
    receivers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """Tiers in order of ``after_s``; with ``repeat`` the last tier is notified again every its gap."""

    name: str
    tiers: tuple[EscalationTier, ...]
    repeat: bool = False


@dataclass(frozen=True, slots=True)
class Match:
    """A route an alert matched, and the key of the group it joins there."""

    route: Route
    group_key: str
    group_labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """A validated configuration."""

    root: Route
    receivers: Mapping[str, Receiver]
    inhibit_rules: tuple[InhibitRule, ...] = ()
    mute_time_intervals: Mapping[str, MuteTimeInterval] = field(default_factory=dict)
    escalation_policies: Mapping[str, EscalationPolicy] = field(default_factory=dict)
    text: str = ""

    @property
    def config_hash(self) -> str:
        """SHA-256 (hex) of the text it was parsed from."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def match(self, labels: Mapping[str, str]) -> list[Match]:
        """The routes ``labels`` end up on (depth first; siblings after a match only with ``continue``)."""
        found: list[Match] = []
        _walk(self.root, labels, found)
        return found

    def muted(self, route: Route, now: datetime) -> bool:
        """Whether one of the route's mute time intervals is active at ``now``."""
        return any(self.mute_time_intervals[name].active(now) for name in route.mute_time_intervals)

    def redacted_text(self) -> str:
        """The configuration text with receiver secrets replaced by ``<secret>``."""
        data = _load(self.text)
        for receiver in data.get("receivers", []):
            for settings in receiver.values():
                if isinstance(settings, dict):
                    for key in ("secret", "password", "url"):
                        if key in settings and (key != "url" or receiver.get("slack") is settings):
                            settings[key] = "<secret>"
        return json.dumps(data, indent=2, sort_keys=True)


def _walk(route: Route, labels: Mapping[str, str], found: list[Match]) -> bool:
    if not all_match(route.matchers, labels):
        return False
    matched_child = False
    for child in route.routes:
        if _walk(child, labels, found):
            matched_child = True
            if not child.continue_matching:
                break
    if not matched_child:
        if "..." in route.group_by:
            group_labels = dict(labels)
        else:
            group_labels = {name: labels.get(name, "") for name in route.group_by}
        key = f"{route.path}:{json.dumps(sorted(group_labels.items()), separators=(',', ':'))}"
        found.append(Match(route, key, group_labels))
    return True


# --- parsing -------------------------------------------------------------------------------------------


def _load(text: str) -> Any:
    """YAML (JSON is valid YAML too), read with the safe loader: a routing file never builds objects."""
    return yaml.safe_load(text) if text.strip() else {}


def parse(text: str) -> RoutingConfig:
    """Parse and validate a configuration; raises ``RoutingConfigError`` naming every problem."""
    try:
        data = _load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "file"
        raise RoutingConfigError([(where, str(getattr(exc, "problem", None) or exc))]) from exc
    parser = _Parser()
    config = parser.config(data, text)
    if parser.problems or config is None:
        raise RoutingConfigError(parser.problems)
    return config


def parse_duration(value: object) -> float:
    """Seconds of ``30``, ``"30s"``, ``"5m"``, ``"4h"``, ``"1d"``, ``"250ms"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 4h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if match is None:
            raise ValueError(f"{value!r} is not a duration like 30s, 5m, 4h")
        seconds = float(match[1]) * _UNIT_S[match[2]]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_matcher(value: object) -> Matcher:
    """``kind="speeding"``, ``camera_id=~"cam-1.*"``, ``kind!=x`` or {"name", "value", "type"}."""
    if isinstance(value, dict):
        type_name = str(value.get("type", "=")).lower()
        kinds = {**_OPERATORS, "equal": 1, "not_equal": 2, "regex": 3, "not_regex": 4}
        if type_name not in kinds or not isinstance(value.get("name"), str):
            raise ValueError("a matcher object needs a name, a value and a type (=, !=, =~, !~)")
        name, raw, kind = value["name"], str(value.get("value", "")), MatchType(kinds[type_name])
    else:
        match = _MATCHER.match(str(value))
        if match is None:
            raise ValueError(f'{value!r} is not a matcher like kind="speeding" or camera_id=~"cam-1.*"')
        name, kind, raw = match[1], _OPERATORS[match[2]], match[3]
    if not LABEL_NAME.match(name):
        raise ValueError(f"{name!r} is not a label name")
    try:
        return Matcher.create(name, raw, kind)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {raw!r}: {exc}") from exc


class _Parser:
    """Collects problems instead of stopping at the first, so one reload reports them all."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def fail(self, where: str, why: str) -> None:
        self.problems.append((where, why))

    def keys(self, data: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        for key in sorted(set(data) - allowed):
            self.fail(f"{where}.{key}", "unknown key (allowed: " + ", ".join(sorted(allowed)) + ")")

    def obj(self, value: object, where: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        self.fail(where, "must be an object")
        return {}

    def items(self, value: object, where: str) -> list[Any]:
        if value is None:
            return []
        if isinstance(value, list):
            return value
        self.fail(where, "must be a list")
        return []

    def matchers(self, value: object, where: str) -> tuple[Matcher, ...]:
        found: list[Matcher] = []
        for i, item in enumerate(self.items(value, where)):
            try:
                found.append(parse_matcher(item))
            except ValueError as exc:
                self.fail(f"{where}[{i}]", str(exc))
        return tuple(found)

    def duration(self, data: Mapping[str, Any], key: str, where: str, default: float) -> float:
        if key not in data:
            return default
        try:
            return parse_duration(data[key])
        except ValueError as exc:
            self.fail(f"{where}.{key}", str(exc))
            return default

    def config(self, data: object, text: str) -> RoutingConfig | None:
        top = self.obj(data, "(document)")
        allowed = {"route", "receivers", "inhibit_rules", "mute_time_intervals", "escalation_policies"}
        self.keys(top, "(document)", allowed)
        receivers = self.receivers(top.get("receivers"))
        intervals = self.mute_intervals(top.get("mute_time_intervals"))
        policies = self.policies(top.get("escalation_policies"), receivers)
        if "route" not in top:
            self.fail("route", "required: the root route")
            return None
        root = self.route(top["route"], "route", None, receivers, intervals, policies)
        rules = tuple(
            rule
            for i, item in enumerate(self.items(top.get("inhibit_rules"), "inhibit_rules"))
            if (rule := self.inhibit_rule(item, f"inhibit_rules[{i}]")) is not None
        )
        if root is None:
            return None
        return RoutingConfig(root, receivers, rules, intervals, policies, text)

    def receivers(self, value: object) -> dict[str, Receiver]:
        found: dict[str, Receiver] = {}
        for i, item in enumerate(self.items(value, "receivers")):
            where = f"receivers[{i}]"
            data = self.obj(item, where)
            name = data.get("name")
            if not isinstance(name, str) or not name:
                self.fail(f"{where}.name", "required")
                continue
            if name in found:
                self.fail(f"{where}.name", f"receiver {name!r} is defined twice")
            self.keys(data, where, {"name", *RECEIVER_TYPES})
            kinds = [kind for kind in RECEIVER_TYPES if kind in data]
            if len(kinds) != 1:
                self.fail(where, "needs exactly one of " + ", ".join(RECEIVER_TYPES))
                continue
            settings = self.obj(data[kinds[0]], f"{where}.{kinds[0]}")
            self.receiver_settings(kinds[0], settings, f"{where}.{kinds[0]}")
            found[name] = Receiver(name, kinds[0], settings)
        return found

    def receiver_settings(self, kind: str, settings: Mapping[str, Any], where: str) -> None:
        required = {"webhook": ("url",), "slack": ("url",), "email": ("to", "host"), "kafka": ()}[kind]
        for key in required:
            if not settings.get(key):
                self.fail(f"{where}.{key}", "required")
        url = settings.get("url")
        if url is not None and not str(url).startswith(("http://", "https://")):
            self.fail(f"{where}.url", "must be an http:// or https:// URL")
        if "timeout" in settings:
            self.duration(settings, "timeout", where, 0)
        limit = settings.get("max_alerts", 0)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            self.fail(f"{where}.max_alerts", "must be a whole number ≥ 0 (0 = no limit)")
        if kind == "email":
            self.email_settings(settings, where)

    def email_settings(self, settings: Mapping[str, Any], where: str) -> None:
        allowed = {"host", "port", "starttls", "tls", "from", "to", "username", "password_env"}
        self.keys(settings, where, allowed | {"timeout", "verify_certs", "password", "max_alerts"})
        if "password" in settings:
            self.fail(
                f"{where}.password",
                "never in the file: name the environment variable holding it in password_env",
            )
        port = settings.get("port", 25)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            self.fail(f"{where}.port", "must be a port number 1-65535")
        for flag in ("starttls", "tls", "verify_certs"):
            if flag in settings and not isinstance(settings[flag], bool):
                self.fail(f"{where}.{flag}", "must be true or false")
        if settings.get("starttls") and settings.get("tls"):
            self.fail(f"{where}.tls", "choose one of starttls (upgrade) and tls (implicit TLS)")
        if not settings.get("from"):
            self.fail(f"{where}.from", "required: the sender address")
        to = settings.get("to")
        if to is not None and not isinstance(to, str | list):
            self.fail(f"{where}.to", "an address or a list of addresses")
        env = settings.get("password_env")
        if env is not None and not (isinstance(env, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env)):
            self.fail(f"{where}.password_env", "the name of an environment variable")
        if env is not None and not settings.get("username"):
            self.fail(f"{where}.username", "required with password_env")

    def mute_intervals(self, value: object) -> dict[str, MuteTimeInterval]:
        found: dict[str, MuteTimeInterval] = {}
        for i, item in enumerate(self.items(value, "mute_time_intervals")):
            where = f"mute_time_intervals[{i}]"
            data = self.obj(item, where)
            self.keys(data, where, {"name", "time_intervals"})
            name = data.get("name")
            if not isinstance(name, str) or not name:
                self.fail(f"{where}.name", "required")
                continue
            windows = [
                self.time_interval(window, f"{where}.time_intervals[{j}]")
                for j, window in enumerate(self.items(data.get("time_intervals"), f"{where}.time_intervals"))
            ]
            found[name] = MuteTimeInterval(name, tuple(windows))
        return found

    def time_interval(self, value: object, where: str) -> TimeInterval:
        data = self.obj(value, where)
        self.keys(data, where, {"times", "weekdays", "days_of_month", "months", "location"})
        times: list[tuple[int, int]] = []
        for i, item in enumerate(self.items(data.get("times"), f"{where}.times")):
            span = self.obj(item, f"{where}.times[{i}]")
            try:
                start, end = parse_clock(str(span.get("start_time"))), parse_clock(str(span.get("end_time")))
            except ValueError as exc:
                self.fail(f"{where}.times[{i}]", str(exc))
                continue
            if end <= start:
                self.fail(f"{where}.times[{i}].end_time", "must be after start_time")
            times.append((start, end))
        sets: dict[str, frozenset[int]] = {}
        for key, names, first in (
            ("weekdays", WEEKDAYS, 0),
            ("days_of_month", tuple(str(d) for d in range(1, 32)), 1),
            ("months", MONTHS, 1),
        ):
            try:
                sets[key] = parse_names(self.items(data.get(key), f"{where}.{key}"), names, first)
            except ValueError as exc:
                self.fail(f"{where}.{key}", str(exc))
                sets[key] = frozenset()
        location = str(data.get("location", "UTC"))
        try:
            ZoneInfo(location)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(f"{where}.location", f"unknown time zone {location!r}")
            location = "UTC"
        return TimeInterval(tuple(times), sets["weekdays"], sets["days_of_month"], sets["months"], location)

    def policies(self, value: object, receivers: Mapping[str, Receiver]) -> dict[str, EscalationPolicy]:
        found: dict[str, EscalationPolicy] = {}
        for i, item in enumerate(self.items(value, "escalation_policies")):
            where = f"escalation_policies[{i}]"
            data = self.obj(item, where)
            self.keys(data, where, {"name", "tiers", "repeat"})
            name = data.get("name")
            if not isinstance(name, str) or not name:
                self.fail(f"{where}.name", "required")
                continue
            tiers: list[EscalationTier] = []
            for j, tier in enumerate(self.items(data.get("tiers"), f"{where}.tiers")):
                tier_where = f"{where}.tiers[{j}]"
                tier_data = self.obj(tier, tier_where)
                self.keys(tier_data, tier_where, {"after", "receivers"})
                names = tuple(
                    str(r) for r in self.items(tier_data.get("receivers"), f"{tier_where}.receivers")
                )
                if not names:
                    self.fail(f"{tier_where}.receivers", "at least one receiver")
                for r in names:
                    if r not in receivers:
                        self.fail(f"{tier_where}.receivers", f"unknown receiver {r!r}")
                after = self.duration(tier_data, "after", tier_where, 0.0)
                if tiers and after <= tiers[-1].after_s:
                    self.fail(f"{tier_where}.after", "must be later than the previous tier")
                tiers.append(EscalationTier(after, names))
            if not tiers:
                self.fail(f"{where}.tiers", "at least one tier")
            found[name] = EscalationPolicy(name, tuple(tiers), bool(data.get("repeat", False)))
        return found

    def route(
        self,
        value: object,
        where: str,
        parent: Route | None,
        receivers: Mapping[str, Receiver],
        intervals: Mapping[str, MuteTimeInterval],
        policies: Mapping[str, EscalationPolicy],
    ) -> Route | None:
        data = self.obj(value, where)
        allowed = {
            "receiver",
            "matchers",
            "group_by",
            "group_wait",
            "group_interval",
            "repeat_interval",
            "continue",
            "mute_time_intervals",
            "escalation_policy",
            "routes",
        }
        self.keys(data, where, allowed)
        if parent is None and data.get("matchers"):
            self.fail(f"{where}.matchers", "the root route matches every alert and takes no matchers")
        receiver = data.get("receiver", parent.receiver if parent else None)
        if not isinstance(receiver, str) or not receiver:
            self.fail(f"{where}.receiver", "required on the root route")
            receiver = ""
        elif receiver not in receivers:
            self.fail(f"{where}.receiver", f"unknown receiver {receiver!r}")
        inherited = parent.timing if parent else Timing()
        timing = Timing(
            self.duration(data, "group_wait", where, inherited.group_wait_s),
            self.duration(data, "group_interval", where, inherited.group_interval_s),
            self.duration(data, "repeat_interval", where, inherited.repeat_interval_s),
        )
        group_by = tuple(str(v) for v in self.items(data.get("group_by"), f"{where}.group_by")) or (
            parent.group_by if parent else ()
        )
        for i, name in enumerate(group_by):
            if name != "..." and not LABEL_NAME.match(name):
                self.fail(f"{where}.group_by[{i}]", f"{name!r} is not a label name")
        mutes = tuple(
            str(v) for v in self.items(data.get("mute_time_intervals"), f"{where}.mute_time_intervals")
        )
        for i, name in enumerate(mutes):
            if name not in intervals:
                self.fail(f"{where}.mute_time_intervals[{i}]", f"unknown mute time interval {name!r}")
        policy = data.get("escalation_policy", parent.escalation_policy if parent else "")
        if policy and policy not in policies:
            self.fail(f"{where}.escalation_policy", f"unknown escalation policy {policy!r}")
        if "continue" in data and not isinstance(data["continue"], bool):
            self.fail(f"{where}.continue", "must be true or false")
        node = Route(
            path=where,
            receiver=receiver,
            matchers=self.matchers(data.get("matchers"), f"{where}.matchers"),
            group_by=group_by,
            timing=timing,
            continue_matching=bool(data.get("continue", False)),
            mute_time_intervals=mutes,
            escalation_policy=str(policy or ""),
        )
        children = tuple(
            child
            for i, item in enumerate(self.items(data.get("routes"), f"{where}.routes"))
            if (child := self.route(item, f"{where}.routes[{i}]", node, receivers, intervals, policies))
            is not None
        )
        return Route(
            node.path,
            node.receiver,
            node.matchers,
            node.group_by,
            node.timing,
            node.continue_matching,
            node.mute_time_intervals,
            node.escalation_policy,
            children,
        )

    def inhibit_rule(self, value: object, where: str) -> InhibitRule | None:
        data = self.obj(value, where)
        self.keys(data, where, {"source_matchers", "target_matchers", "equal"})
        source = self.matchers(data.get("source_matchers"), f"{where}.source_matchers")
        target = self.matchers(data.get("target_matchers"), f"{where}.target_matchers")
        if not source:
            self.fail(f"{where}.source_matchers", "at least one matcher")
        if not target:
            self.fail(f"{where}.target_matchers", "at least one matcher")
        equal = tuple(str(v) for v in self.items(data.get("equal"), f"{where}.equal"))
        for i, name in enumerate(equal):
            if not LABEL_NAME.match(name):
                self.fail(f"{where}.equal[{i}]", f"{name!r} is not a label name")
        return InhibitRule(source, target, equal) if source and target else None
