"""Checks every request gets before its handler runs, whatever the service: the shapes protobuf accepts on
the wire but no handler can use (pure; the server interceptor chain answers INVALID_ARGUMENT with them).

- a Timestamp or Duration outside the range ``google.protobuf`` defines (its conversions raise on them);
- an enum number the enum does not define (proto3 keeps unknown numbers; ``Name()`` raises on them);
- a NaN or infinite float (every range check compares false with NaN, so it would slip through);
- a NUL character in a string (PostgreSQL text cannot hold one).

Violations are ``(field path, reason)`` pairs, paths like ``camera.zones[2].name``.
"""

from __future__ import annotations

import math
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["request_violations"]

_TIMESTAMP: Final = "google.protobuf.Timestamp"
_DURATION: Final = "google.protobuf.Duration"
_MIN_SECONDS: Final = -62_135_596_800  # 0001-01-01T00:00:00Z
_MAX_SECONDS: Final = 253_402_300_799  # 9999-12-31T23:59:59Z
_MAX_DURATION_SECONDS: Final = 315_576_000_000  # 10,000 years
_FLOATS: Final = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)

Violations = list[tuple[str, str]]


def request_violations(message: Message, max_reported: int = 10) -> Violations:
    """What is wrong with ``message`` (at most ``max_reported`` entries); empty when it can be handled."""
    found: Violations = []
    _walk(message, "", found, max_reported)
    return found[:max_reported]


def _walk(message: Message, prefix: str, found: Violations, limit: int) -> None:
    name = message.DESCRIPTOR.full_name
    if name == _TIMESTAMP:
        _check_timestamp(message, prefix, found)
        return
    if name == _DURATION:
        _check_duration(message, prefix, found)
        return
    for field, value in message.ListFields():
        if len(found) >= limit:
            return
        path = f"{prefix}{field.name}"
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            _check_map(message_type, value, path, found, limit)
        elif field.is_repeated:
            for index, item in enumerate(value):
                if len(found) >= limit:
                    return
                _check_value(field, item, f"{path}[{index}]", found, limit)
        else:
            _check_value(field, value, path, found, limit)


def _check_map(entry: Descriptor, mapping: Any, path: str, found: Violations, limit: int) -> None:
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    for key, value in mapping.items():
        _check_value(key_field, key, f"{path}[{key!r}]", found, limit)
        _check_value(value_field, value, f"{path}[{key!r}]", found, limit)


def _check_value(field: FieldDescriptor, value: Any, path: str, found: Violations, limit: int) -> None:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        _walk(value, f"{path}.", found, limit)
    elif kind == FieldDescriptor.TYPE_STRING:
        if "\x00" in value:
            found.append((path, "must not contain NUL characters"))
    elif kind == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        if enum is not None and enum.values_by_number.get(value) is None:
            found.append((path, f"{value} is not a value of {enum.name}"))
    elif kind in _FLOATS and not math.isfinite(value):
        found.append((path, "must be a finite number"))


def _check_timestamp(message: Any, path: str, found: Violations) -> None:
    where = path.rstrip(".") or "timestamp"
    if not _MIN_SECONDS <= message.seconds <= _MAX_SECONDS:
        found.append((where, "must be between 0001-01-01 and 9999-12-31"))
    elif not 0 <= message.nanos <= 999_999_999:
        found.append((where, "nanos must be between 0 and 999999999"))


def _check_duration(message: Any, path: str, found: Violations) -> None:
    where = path.rstrip(".") or "duration"
    seconds, nanos = message.seconds, message.nanos
    if not -_MAX_DURATION_SECONDS <= seconds <= _MAX_DURATION_SECONDS:
        found.append((where, "must be within ±10,000 years"))
    elif not -999_999_999 <= nanos <= 999_999_999 or (seconds and nanos and (seconds > 0) != (nanos > 0)):
        found.append((where, "nanos must be within ±999999999 and have the sign of seconds"))
