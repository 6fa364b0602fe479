"""Notification channels: one small interface, one class per kind, one registry.

A notifier validates its channel's `config` (called from NotificationChannel.clean, so the API and
the admin refuse the same things) and sends one payload. It raises DeliveryFailed with
`retryable` saying whether trying again may help; the Celery task does the retrying and
alerting.services records every attempt.
"""

from __future__ import annotations

import json
import smtplib
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import urllib3
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.validators import validate_email
from django.db import connection
from django.template.loader import render_to_string

from alerting import webhooks
from alerting.choices import Severity
from alerting.models import ChannelKind, NotificationChannel

SEVERITY_COLOURS = {
    Severity.CRITICAL: "#b71c1c",
    Severity.MAJOR: "#e65100",
    Severity.MINOR: "#f9a825",
    Severity.WARNING: "#fbc02d",
    Severity.INFO: "#1565c0",
}
RESERVED_HEADER_PREFIXES = ("x-iiot-",)
RESERVED_HEADERS = {"host", "content-length", "content-type", "transfer-encoding", "connection", "user-agent"}
MAX_RECIPIENTS = 50


@dataclass(frozen=True)
class DeliveryResult:
    response_code: int | None = None
    response_excerpt: str = ""


class DeliveryFailed(Exception):
    def __init__(self, message: str, *, retryable: bool, response_code: int | None = None, response_excerpt: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.response_code = response_code
        self.response_excerpt = response_excerpt


@dataclass(frozen=True)
class Envelope:
    """What every notifier gets: the JSON payload plus the ids that go into headers."""

    delivery_id: int
    event: str  # "alert.triggered", "alert.escalated", "test"
    payload: dict[str, Any]


class Notifier(Protocol):
    kind: ClassVar[str]

    def validate_config(self, config: dict[str, Any]) -> dict[str, Any]: ...

    def send(self, channel: NotificationChannel, envelope: Envelope) -> DeliveryResult: ...


def _config_error(field: str, message: str) -> ValidationError:
    return ValidationError({f"config.{field}" if field else "config": [message]})


def _only_keys(config: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValidationError({f"config.{name}": ["Unknown setting for this channel kind."] for name in unknown})


class EmailNotifier:
    kind = ChannelKind.EMAIL

    def validate_config(self, config: dict[str, Any]) -> dict[str, Any]:
        _only_keys(config, {"recipients", "subject_prefix"})
        recipients = config.get("recipients")
        if not isinstance(recipients, list) or not recipients:
            raise _config_error("recipients", "A list of at least one email address.")
        if len(recipients) > MAX_RECIPIENTS:
            raise _config_error("recipients", f"At most {MAX_RECIPIENTS} recipients.")
        for index, address in enumerate(recipients):
            try:
                if not isinstance(address, str):
                    raise ValidationError("not a string")
                validate_email(address)
            except ValidationError:
                raise _config_error(f"recipients.{index}", f"{address!r} is not a valid email address.") from None
        prefix = config.get("subject_prefix", "")
        if not isinstance(prefix, str) or len(prefix) > 50:
            raise _config_error("subject_prefix", "A string of at most 50 characters.")
        return {"recipients": list(dict.fromkeys(recipients)), **({"subject_prefix": prefix} if prefix else {})}

    def render(self, channel: NotificationChannel, envelope: Envelope) -> EmailMultiAlternatives:
        alert = envelope.payload.get("alert") or {}
        severity = alert.get("severity", Severity.INFO)
        context = {
            "payload": envelope.payload,
            "alert": alert,
            "event": envelope.event,
            "is_test": envelope.event == "test",
            "severity_label": Severity(severity).label if severity in Severity.values else severity,
            "severity_colour": SEVERITY_COLOURS.get(severity, "#455a64"),
            "details_json": json.dumps(alert.get("details") or {}, indent=2, sort_keys=True)[:4000],
        }
        prefix = channel.config.get("subject_prefix") or "IIoT"
        if envelope.event == "test":
            subject = f"[{prefix}] Test notification from channel {channel.name}"
        else:
            where = f" on {alert['device_uid']}" if alert.get("device_uid") else ""
            subject = (
                f"[{prefix} {context['severity_label']}] {alert.get('rule_name') or 'Alert'}{where}: {alert.get('message', '')}"
            )
        subject = " ".join(subject.split())[:250]
        text = render_to_string("alerting/email/alert.txt", context)
        html = render_to_string("alerting/email/alert.html", context)
        message = EmailMultiAlternatives(
            subject=subject,
            body=text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=channel.config["recipients"],
            headers={"X-IIoT-Delivery": str(envelope.delivery_id), "X-IIoT-Event": envelope.event},
        )
        message.attach_alternative(html, "text/html")
        return message

    def send(self, channel: NotificationChannel, envelope: Envelope) -> DeliveryResult:
        message = self.render(channel, envelope)
        try:
            with get_connection(timeout=settings.EMAIL_TIMEOUT) as mail:
                message.connection = mail
                sent = message.send()
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryFailed(f"Every recipient was refused: {exc.recipients}", retryable=False) from exc
        except smtplib.SMTPResponseException as exc:
            raise DeliveryFailed(
                f"SMTP error {exc.smtp_code}: {exc.smtp_error!r}",
                retryable=400 <= exc.smtp_code < 500,  # 4xx: transient; 5xx: permanent
                response_code=exc.smtp_code,
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"SMTP delivery failed: {exc}", retryable=True) from exc
        return DeliveryResult(
            response_code=250 if sent else None, response_excerpt=f"accepted for {len(message.to)} recipient(s)"
        )


class WebhookNotifier:
    kind = ChannelKind.WEBHOOK

    def validate_config(self, config: dict[str, Any]) -> dict[str, Any]:
        _only_keys(config, {"url", "headers"})
        url = config.get("url")
        try:
            webhooks.check_url_statically(url)
        except webhooks.WebhookRefused as exc:
            raise _config_error("url", str(exc)) from None
        headers = config.get("headers", {})
        if not isinstance(headers, dict) or len(headers) > 20:
            raise _config_error("headers", "An object of at most 20 string headers.")
        for name, value in headers.items():
            lowered = name.lower()
            if not name or not all(33 <= ord(ch) < 127 and ch != ":" for ch in name):
                raise _config_error(f"headers.{name}", "Not a valid header name.")
            if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_HEADER_PREFIXES):
                raise _config_error(f"headers.{name}", "This header is set by the platform.")
            if not isinstance(value, str) or len(value) > 1000 or any(ch in value for ch in "\r\n\x00"):
                raise _config_error(f"headers.{name}", "A single-line string of at most 1000 characters.")
        return {"url": url, **({"headers": headers} if headers else {})}

    def send(self, channel: NotificationChannel, envelope: Envelope) -> DeliveryResult:
        body = json.dumps(envelope.payload, separators=(",", ":"), sort_keys=True, default=str).encode()
        if len(body) > settings.WEBHOOK_MAX_PAYLOAD_BYTES:
            raise DeliveryFailed(
                f"Payload of {len(body)} bytes is over the {settings.WEBHOOK_MAX_PAYLOAD_BYTES}-byte cap; not sent.",
                retryable=False,
            )
        url = channel.config["url"]
        try:
            target = webhooks.resolve_and_pin(url)
        except webhooks.WebhookRefused as exc:
            raise DeliveryFailed(str(exc), retryable=False) from exc
        except OSError as exc:
            raise DeliveryFailed(str(exc), retryable=True) from exc
        try:
            webhooks.acquire_rate_slot(url)
        except webhooks.WebhookRateLimited as exc:
            raise DeliveryFailed(str(exc), retryable=True) from exc
        timestamp = int(time.time())
        headers = {
            **channel.config.get("headers", {}),
            "Content-Type": "application/json",
            "User-Agent": "IIoT-Platform-Webhook/1",
            "X-IIoT-Event": envelope.event,
            "X-IIoT-Delivery": str(envelope.delivery_id),
            "X-IIoT-Timestamp": str(timestamp),
            "X-IIoT-Signature": webhooks.sign(channel.secret, timestamp, body),
        }
        try:
            response = webhooks.post(target, body, headers)
        except urllib3.exceptions.SSLError as exc:  # an untrusted or mismatched certificate: fix the receiver
            raise DeliveryFailed(f"TLS verification failed: {exc}", retryable=False) from exc
        except Exception as exc:  # urllib3's other errors (timeouts, refused connections) mean "try later"
            raise DeliveryFailed(f"Request failed: {type(exc).__name__}: {exc}", retryable=True) from exc
        if 200 <= response.status < 300:
            return DeliveryResult(response_code=response.status, response_excerpt=response.excerpt)
        if 300 <= response.status < 400:
            location = response.location or "(no Location)"
            reason = "redirects are not followed"
            try:
                webhooks.resolve_and_pin(response.location)
            except webhooks.WebhookRefused as refused:
                reason = f"redirects are not followed, and its target is refused ({refused})"
            except OSError:
                pass
            raise DeliveryFailed(
                f"Answered {response.status} to {location}: {reason}.",
                retryable=False,
                response_code=response.status,
                response_excerpt=response.excerpt,
            )
        retryable = response.status in (408, 425, 429) or response.status >= 500
        raise DeliveryFailed(
            f"Answered {response.status}.", retryable=retryable, response_code=response.status, response_excerpt=response.excerpt
        )


def live_notification_group(schema: str) -> str:
    return f"{schema}.notifications"


class LiveNotifier:
    """Pushes the notification to the tenant's dashboards (channel-layer group "<schema>.notifications")."""

    kind = ChannelKind.LIVE

    def validate_config(self, config: dict[str, Any]) -> dict[str, Any]:
        _only_keys(config, set())
        return {}

    def send(self, channel: NotificationChannel, envelope: Envelope) -> DeliveryResult:
        layer = get_channel_layer()
        if layer is None:
            raise DeliveryFailed("No channel layer is configured.", retryable=False)
        message = {"type": "alert.notification", "channel": channel.name, "event": envelope.event, "payload": envelope.payload}
        try:
            async_to_sync(layer.group_send)(live_notification_group(connection.schema_name), message)
        except Exception as exc:  # Redis down or the message too big for the layer
            raise DeliveryFailed(f"Channel layer send failed: {exc}", retryable=True) from exc
        return DeliveryResult(response_excerpt="pushed to the channel layer")


NOTIFIERS: dict[str, Notifier] = {notifier.kind: notifier for notifier in (EmailNotifier(), WebhookNotifier(), LiveNotifier())}


def get_notifier(kind: str) -> Notifier:
    return NOTIFIERS[kind]


def validate_channel_config(kind: str, config: Any) -> dict[str, Any]:
    if kind not in NOTIFIERS:
        raise ValidationError({"kind": [f"Unknown channel kind {kind!r}."]})
    if not isinstance(config, dict):
        raise ValidationError({"config": ["Expected an object."]})
    return NOTIFIERS[kind].validate_config(config)
