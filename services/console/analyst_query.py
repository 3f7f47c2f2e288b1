"""REST query parameters → analytics requests (pure): enum names, time ranges and buckets.

Enum values are written in lower case without their prefix (``kind=wrong_way`` for
VIOLATION_KIND_WRONG_WAY); an unknown name is a 400 naming the parameter. Times without a zone are UTC.
Everything else (range order, bucket bounds, paging) is the analytics service's to judge: its
INVALID_ARGUMENT comes back as a 400 naming the REST parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from itsmesh.v1 import common_pb2
from services.console.errors import invalid_argument


def enum_value(enum: Any, prefix: str, name: str, field: str) -> Any:
    """``name`` (``"wrong_way"``) as the value of ``PREFIX_WRONG_WAY`` in the generated ``enum`` wrapper.

    400 naming ``field`` if unknown. Typed ``Any``: each generated enum has its own ``ValueType``.
    """
    try:
        value = int(enum.Value(f"{prefix}_{name.strip().upper()}"))
    except ValueError:
        choices = [
            k.removeprefix(prefix + "_").lower()
            for k in enum.DESCRIPTOR.values_by_name
            if not k.endswith("_UNSPECIFIED")
        ]
        raise invalid_argument(field, f"unknown value {name!r}; one of {', '.join(choices)}") from None
    if value == 0:
        raise invalid_argument(field, f"{name!r} is not a value")
    return value


def enum_values(enum: Any, prefix: str, names: Sequence[str] | None, field: str) -> list[Any]:
    """Each of ``names`` through ``enum_value``; empty for None."""
    return [enum_value(enum, prefix, n, field) for n in names or ()]


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp of ``moment``; a naive time is taken as UTC."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))
    return stamp


def time_range(start: datetime, end: datetime | None) -> common_pb2.TimeRange:
    """[start, end); end unset lets the service use its own default (now, where allowed)."""
    result = common_pb2.TimeRange(start_time=timestamp(start))
    if end is not None:
        result.end_time.CopyFrom(timestamp(end))
    return result


def bucket(seconds: int | None) -> dict[str, Any]:
    """The ``bucket`` field for a request's keyword arguments (absent: the service's default, 10 s)."""
    return {} if seconds is None else {"bucket": duration_pb2.Duration(seconds=seconds)}


def sort_order(order: str) -> Any:
    """``newest`` / ``oldest`` as a SortOrder."""
    return common_pb2.SORT_ORDER_OLDEST_FIRST if order == "oldest" else common_pb2.SORT_ORDER_NEWEST_FIRST
