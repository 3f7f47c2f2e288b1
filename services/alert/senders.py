"""Sending one notification to one receiver (webhook, Slack-compatible webhook, email, Kafka topic).

Each sender returns an ``AttemptResult`` instead of raising, so the delivery worker records every
attempt the same way. What is stored is the whole group's notification; each receiver gets it
``prepared``: at most its ``max_alerts`` alerts with the rest counted in ``truncated_alerts``, and the
console link. The webhook body is signed: ``X-Itsmesh-Signature: sha256=<hex>`` is the HMAC-SHA256,
keyed with the receiver's ``secret``, of ``<X-Itsmesh-Timestamp>.<body>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiosmtplib
from google.protobuf import json_format

from itsmesh.v1 import events_pb2
from mesh.events import ALERT_NOTIFICATIONS_TOPIC, EventPublisher, PublishError
from services.alert.http_post import HttpError, HttpPoster
from services.alert.mailer import MissingPassword, send_email, timeout_s
from services.alert.routing import Receiver, parse_duration

OUTCOME_SUCCESS = 1  # itsmesh.v1.DeliveryOutcome numbers
OUTCOME_ERROR = 2
OUTCOME_TIMEOUT = 3
OUTCOME_UNREACHABLE = 4
DEFAULT_TIMEOUT_S = 10.0
SIGNATURE_HEADER = "X-Itsmesh-Signature"
TIMESTAMP_HEADER = "X-Itsmesh-Timestamp"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt came to."""

    outcome: int
    http_status_code: int = 0
    error: str = ""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value of ``body`` sent at ``timestamp`` (receivers recompute and compare)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def console_link(console_url: str) -> str:
    """Where a notification points operators: the console's alert feed (empty without a console URL)."""
    return f"{console_url.rstrip('/')}/#alerts" if console_url else ""


def prepared(payload: Mapping[str, Any], max_alerts: int, console_url: str) -> dict[str, Any]:
    """The payload as one receiver gets it: at most ``max_alerts`` alerts (0 = all) with the number left
    out in ``truncated_alerts`` (as Alertmanager's webhook does), and the console link."""
    alerts = list(payload.get("alerts", []))
    kept = alerts[:max_alerts] if max_alerts > 0 else alerts
    return {
        **payload,
        "alerts": kept,
        "truncated_alerts": len(alerts) - len(kept),
        "console_url": console_link(console_url),
    }


def slack_text(payload: Mapping[str, Any]) -> str:
    """A one-screen summary for a Slack-compatible incoming webhook."""
    kind = payload.get("notification_type", "firing").upper()
    lines = [f"[{kind}] {payload.get('group_key', '')}"]
    for alert in payload.get("alerts", []):
        labels = ", ".join(f"{k}={v}" for k, v in sorted(alert.get("labels", {}).items()))
        summary = alert.get("annotations", {}).get("summary", "")
        lines.append(f"• {alert.get('severity', '')} {labels} {summary}".rstrip())
    if payload.get("truncated_alerts"):
        lines.append(f"… and {payload['truncated_alerts']} more")
    if payload.get("console_url"):
        lines.append(f"Console: {payload['console_url']}")
    return "\n".join(lines)


class Senders:
    """Holds the HTTP client and the Kafka publisher the senders share."""

    def __init__(self, http: HttpPoster, publisher: EventPublisher | None, console_url: str = "") -> None:
        self.http = http
        self.publisher = publisher
        self.console_url = console_url

    async def send(self, receiver: Receiver, stored: Mapping[str, Any]) -> AttemptResult:
        """Deliver the stored notification ``stored`` to ``receiver`` once."""
        settings = receiver.settings
        payload = prepared(stored, receiver.max_alerts, self.console_url)
        if receiver.type == "kafka":
            return await self._kafka(str(settings.get("topic", ALERT_NOTIFICATIONS_TOPIC)), payload)
        if receiver.type == "email":
            return await self._email(settings, payload)
        timeout = parse_duration(settings.get("timeout", DEFAULT_TIMEOUT_S))
        if receiver.type == "webhook":
            body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
            stamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp}
            if settings.get("secret"):
                headers[SIGNATURE_HEADER] = sign(str(settings["secret"]), stamp, body)
            return await self._post(str(settings["url"]), body, headers, timeout)
        if receiver.type == "slack":
            body = json.dumps({"text": slack_text(payload)}).encode()
            return await self._post(str(settings["url"]), body, {"Content-Type": "application/json"}, timeout)
        return AttemptResult(OUTCOME_ERROR, error=f"receiver type {receiver.type!r} is not supported yet")

    async def _post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> AttemptResult:
        try:
            answer = await self.http.post(url, body, headers, timeout_s)
        except TimeoutError:
            return AttemptResult(OUTCOME_TIMEOUT, error=f"no answer within {timeout_s:g} s")
        except HttpError as exc:
            return AttemptResult(OUTCOME_UNREACHABLE if exc.unreachable else OUTCOME_ERROR, error=str(exc))
        if 200 <= answer.status < 300:
            return AttemptResult(OUTCOME_SUCCESS, answer.status)
        text = answer.body[:200].decode("utf-8", errors="replace")
        return AttemptResult(OUTCOME_ERROR, answer.status, f"HTTP {answer.status}: {text}")

    async def _email(self, settings: Mapping[str, Any], payload: Mapping[str, Any]) -> AttemptResult:
        try:
            await send_email(settings, payload)
        except aiosmtplib.SMTPTimeoutError as exc:
            return AttemptResult(
                OUTCOME_TIMEOUT, error=f"no answer within {timeout_s(settings):g} s ({type(exc).__name__})"
            )
        except aiosmtplib.SMTPConnectError as exc:
            return AttemptResult(OUTCOME_UNREACHABLE, error=f"{type(exc).__name__}: {exc}")
        except aiosmtplib.SMTPResponseException as exc:  # the server's code and text, never our credentials
            return AttemptResult(OUTCOME_ERROR, error=f"SMTP {exc.code}: {exc.message[:200]}")
        except (aiosmtplib.SMTPException, MissingPassword, OSError) as exc:
            return AttemptResult(OUTCOME_ERROR, error=f"{type(exc).__name__}: {exc}")
        return AttemptResult(OUTCOME_SUCCESS)

    async def _kafka(self, topic: str, payload: Mapping[str, Any]) -> AttemptResult:
        if self.publisher is None or not self.publisher.started:
            return AttemptResult(OUTCOME_UNREACHABLE, error="Kafka is not connected")
        message = notification_message(payload)
        try:
            key = str(payload.get("group_key", ""))
            await self.publisher.publish_and_wait(topic, key, message, message.notification_id)
        except PublishError as exc:
            return AttemptResult(OUTCOME_ERROR, error=str(exc))
        return AttemptResult(OUTCOME_SUCCESS)


def notification_message(payload: Mapping[str, Any]) -> events_pb2.AlertNotification:
    """The AlertNotification (events.proto) of a stored payload."""
    message = events_pb2.AlertNotification()
    json_format.ParseDict(
        {k: v for k, v in payload.items() if k != "notification_type"}, message, ignore_unknown_fields=True
    )
    types = {"firing": 1, "repeat": 2, "escalation": 3, "resolved": 4}  # itsmesh.v1.NotificationType
    message.notification_type = types.get(str(payload.get("notification_type")), 1)  # type: ignore[assignment]
    message.send_time.FromDatetime(datetime.now(UTC))
    return message
