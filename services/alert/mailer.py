"""The email receiver: one notification as one message over SMTP (aiosmtplib).

Receiver settings (routing file, ``email:``): ``host``, ``port`` (default 587 with STARTTLS, 465 with TLS,
else 25), ``starttls`` / ``tls`` (at most one), ``from``, ``to`` (an address or a list), ``username`` and
``password_env`` — the *name* of the environment variable holding the password, so the secret is never in
the file, in GetRoutingConfig or in a log line — ``timeout``, ``verify_certs`` and ``max_alerts``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import Any

import aiosmtplib

from services.alert.routing import parse_duration

DEFAULT_TIMEOUT_S = 10.0
MAX_SUBJECT_ALERTS = 3


def recipients(settings: Mapping[str, Any]) -> list[str]:
    """The ``to`` setting as a list of addresses."""
    to = settings.get("to", [])
    return (
        [str(a) for a in to] if isinstance(to, list) else [a.strip() for a in str(to).split(",") if a.strip()]
    )


def default_port(settings: Mapping[str, Any]) -> int:
    """465 for implicit TLS, 587 for STARTTLS, 25 otherwise — unless ``port`` is set."""
    if "port" in settings:
        return int(settings["port"])
    return 465 if settings.get("tls") else 587 if settings.get("starttls") else 25


def _describe(alert: Mapping[str, Any]) -> str:
    labels = alert.get("labels", {})
    name = labels.get("kind", "alert")
    where = labels.get("camera_id") or labels.get("device_id") or ""
    return f"{name} {where}".strip()


def subject(payload: Mapping[str, Any]) -> str:
    """``[FIRING:2] camera_offline cam-1, camera_offline cam-2`` — the status, the count and the alerts."""
    alerts: Sequence[Mapping[str, Any]] = payload.get("alerts", [])
    total = len(alerts) + int(payload.get("truncated_alerts", 0))  # those left out count too
    kind = str(payload.get("notification_type", "firing")).upper()
    named = ", ".join(_describe(a) for a in alerts[:MAX_SUBJECT_ALERTS])
    shown = min(len(alerts), MAX_SUBJECT_ALERTS)
    more = f" and {total - shown} more" if total > shown else ""
    return f"[{kind}:{total}] {named}{more}"


def body(payload: Mapping[str, Any]) -> str:
    """Plain text: the group, then each alert with its status, severity, labels and summary."""
    lines = [
        f"Notification: {payload.get('notification_type', 'firing')}",
        f"Group: {payload.get('group_key', '')}",
        f"Notification id: {payload.get('notification_id', '')}",
    ]
    if payload.get("console_url"):
        lines.append(f"Console: {payload['console_url']}")
    lines.append("")
    for alert in payload.get("alerts", []):
        labels = ", ".join(f"{k}={v}" for k, v in sorted(alert.get("labels", {}).items()))
        lines.append(f"- [{alert.get('status', '')}] {alert.get('severity', '')} {labels}")
        for key, value in sorted(alert.get("annotations", {}).items()):
            lines.append(f"    {key}: {value}")
        lines.append(f"    alert id: {alert.get('alert_id', '')}, seen {alert.get('occurrence_count', '1')}x")
    if payload.get("truncated_alerts"):
        lines.append(
            f"... and {payload['truncated_alerts']} more alerts, not listed (the receiver's max_alerts)"
        )
    return "\n".join(lines) + "\n"


def message(settings: Mapping[str, Any], payload: Mapping[str, Any]) -> EmailMessage:
    """The email of one notification."""
    mail = EmailMessage()
    mail["From"] = str(settings.get("from", "itsmesh@localhost"))
    mail["To"] = ", ".join(recipients(settings))
    mail["Subject"] = subject(payload)
    if payload.get("notification_id"):
        mail["X-Itsmesh-Notification-Id"] = str(payload["notification_id"])
    mail.set_content(body(payload))
    return mail


class MissingPassword(LookupError):
    """The environment variable named by ``password_env`` is not set."""


async def send_email(settings: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
    """Send once; raises ``MissingPassword`` or aiosmtplib's errors (whose text holds no credentials)."""
    password: str | None = None
    env_name = settings.get("password_env")
    if env_name:
        password = os.environ.get(str(env_name))
        if password is None:
            raise MissingPassword(f"environment variable {env_name} (password_env) is not set")
    await aiosmtplib.send(
        message(settings, payload),
        hostname=str(settings["host"]),
        port=default_port(settings),
        username=str(settings["username"]) if settings.get("username") else None,
        password=password,
        use_tls=bool(settings.get("tls", False)),
        start_tls=bool(settings.get("starttls", False)),
        validate_certs=bool(settings.get("verify_certs", True)),
        timeout=timeout_s(settings),
    )


def timeout_s(settings: Mapping[str, Any]) -> float:
    """The receiver's ``timeout`` in seconds (default 10 s)."""
    return parse_duration(settings.get("timeout", DEFAULT_TIMEOUT_S))
