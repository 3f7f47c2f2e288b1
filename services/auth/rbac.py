"""Who may hold which roles, and who may act on whose account (no I/O).

The method → permission map and the role → permission sets live in ``mesh.permissions`` because every
service enforces them; the rules here are the auth service's own: which roles each kind of principal may be
given, and when a caller may act on another user's account.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from mesh.interceptors import Principal
from mesh.permissions import ROLES

HUMAN_ROLES: Final = frozenset({"admin", "operator", "analyst", "viewer"})
ACCOUNT_ROLES: Final = frozenset(ROLES) - {"device"}
"""Service accounts normally hold ``service``; any role but ``device`` is allowed."""


def role_problem(roles: Iterable[str], allowed: frozenset[str]) -> str | None:
    """Why ``roles`` cannot be given, or None: at least one, all known and allowed, no duplicates."""
    listed = list(roles)
    if not listed:
        return "at least one role is required"
    unknown = sorted(set(listed) - allowed)
    if unknown:
        return f"not allowed here: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
    if len(set(listed)) != len(listed):
        return "roles must not repeat"
    return None


def acts_on_self(caller: Principal, user_id: str) -> bool:
    """Whether ``user_id`` is the caller's own account (an empty id means the caller)."""
    return not user_id or (caller.kind == "user" and caller.subject == user_id)


def may_manage_other_users(caller: Principal) -> bool:
    """Whether the caller may change another user's password or MFA (admins hold users:update)."""
    return caller.can("users:update")
