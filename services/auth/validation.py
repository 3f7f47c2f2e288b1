"""Input checks both fronts share: each returns the clean value or raises InvalidArgument naming the field."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from mesh.permissions import PERMISSIONS
from services.auth import passwords, rbac
from services.auth.errors import InvalidArgument

ID_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
USERNAME_PATTERN: Final = re.compile(r"^[a-z0-9._-]{3,64}$")
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000
MAX_TEXT: Final = 200
MAX_TOKEN: Final = 8192


def page_size(value: int, field: str = "page_size") -> int:
    """0 → the default; more than the maximum or negative → INVALID_ARGUMENT."""
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument(field, f"must be between 0 and {MAX_PAGE_SIZE}")
    return value or DEFAULT_PAGE_SIZE


def required(value: str, field: str, *, max_length: int = MAX_TEXT) -> str:
    """A non-blank string of at most ``max_length`` characters."""
    if not value.strip():
        raise InvalidArgument(field, "is required")
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    return value


def text(value: str, field: str, *, max_length: int = MAX_TEXT) -> str:
    """An optional string of at most ``max_length`` characters."""
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    return value


def identifier(value: str, field: str) -> str:
    """A device, camera or service-account id."""
    if not ID_PATTERN.match(value):
        raise InvalidArgument(
            field, "must be 1-63 characters of [a-z0-9._-], starting with a letter or digit"
        )
    return value


def username(value: str, field: str) -> str:
    """A login name."""
    if not USERNAME_PATTERN.match(value):
        raise InvalidArgument(field, "must be 3-64 characters of [a-z0-9._-]")
    return value


def password(value: str, field: str) -> str:
    """A new password that meets the policy."""
    problem = passwords.password_problem(value)
    if problem is not None:
        raise InvalidArgument(field, problem)
    return value


def roles(names: Iterable[str], field: str, allowed: frozenset[str]) -> tuple[str, ...]:
    """Role names, all allowed here, at least one, no repeats."""
    listed = tuple(names)
    problem = rbac.role_problem(listed, allowed)
    if problem is not None:
        raise InvalidArgument(field, problem)
    return listed


def labels(values: Mapping[str, str], field: str) -> dict[str, str]:
    """Free-form labels: keys 1-63 and values at most 63 characters."""
    for key, value in values.items():
        if not key or len(key) > 63 or len(value) > 63:
            raise InvalidArgument(field, "keys must be 1-63 and values at most 63 characters")
    return dict(values)


def update_mask(paths: Sequence[str], allowed: Sequence[str]) -> set[str]:
    """The fields an update names; empty or unknown → INVALID_ARGUMENT."""
    if not paths:
        raise InvalidArgument("update_mask", f"name the fields to change: {', '.join(allowed)}")
    unknown = sorted(set(paths) - set(allowed))
    if unknown:
        raise InvalidArgument(
            "update_mask", f"cannot change {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return set(paths)


def permission(value: str, field: str) -> str:
    """Empty, or a known permission."""
    if value and value not in PERMISSIONS:
        raise InvalidArgument(field, "is not a permission")
    return value
