"""Domain errors of the alert service; server.py maps each to its gRPC status in one place."""

from __future__ import annotations


class AlertError(Exception):
    """Base of the alert service's domain errors."""


class AlertNotFound(AlertError):
    """No alert with this id."""


class AlertAlreadyResolved(AlertError):
    """The alert is resolved, so it cannot be acknowledged."""


class SilenceNotFound(AlertError):
    """No silence with this id."""


class SilenceExpired(AlertError):
    """The silence has expired and can no longer be updated."""
