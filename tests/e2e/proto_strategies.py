"""Hypothesis strategies for any protobuf message, built from its descriptor: the shapes a careless or
hostile client can send (empty, huge, negative, unknown enum values, odd unicode, deep nesting)."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

FD = descriptor.FieldDescriptor
NASTY_TEXT = st.sampled_from(
    ["", " ", "a" * 5000, "../../etc/passwd", "' OR 1=1 --", "\x00", "cam-1", "😀", "-1", "1e309", "null"]
)
TEXT = st.one_of(NASTY_TEXT, st.text(max_size=40))
INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = st.sampled_from([low, high, 0, -1 if low < 0 else 1, 1])
    return st.one_of(edges, st.integers(low, high))


def _scalar(field: FD) -> st.SearchStrategy[Any]:
    if field.type in INT_RANGES:
        return _ints(*INT_RANGES[field.type])
    if field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        width = 64 if field.type == FD.TYPE_DOUBLE else 32
        return st.floats(width=width, allow_nan=True, allow_infinity=True)
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_STRING:
        return TEXT
    if field.type == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FD.TYPE_ENUM:
        numbers = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-3, max(numbers) + 3))
    raise TypeError(f"no strategy for field type {field.type}")


def _value(field: FD, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FD.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _scalar(field)


def messages(desc: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of type ``desc`` with a random subset of fields set (nesting stops at depth 3)."""
    cls = message_factory.GetMessageClass(desc)
    if depth >= 3:
        return st.just(cls())
    fields = list(desc.fields)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        chosen = draw(st.lists(st.sampled_from(fields), max_size=len(fields), unique=True)) if fields else []
        for field in chosen:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_field, value_field = (
                    field.message_type.fields_by_name["key"],
                    field.message_type.fields_by_name["value"],
                )
                entries = draw(
                    st.dictionaries(_value(key_field, depth), _value(value_field, depth), max_size=3)
                )
                target = getattr(msg, field.name)
                for key, value in entries.items():
                    if value_field.type == FD.TYPE_MESSAGE:
                        target[key].CopyFrom(value)
                    else:
                        target[key] = value
            elif field.is_repeated:
                values = draw(st.lists(_value(field, depth), max_size=3))
                target = getattr(msg, field.name)
                for value in values:
                    if field.type == FD.TYPE_MESSAGE:
                        target.add().CopyFrom(value)
                    else:
                        target.append(value)
            elif field.type == FD.TYPE_MESSAGE:
                getattr(msg, field.name).CopyFrom(draw(_value(field, depth)))
            else:
                setattr(msg, field.name, draw(_value(field, depth)))
        return msg

    return build()
