"""Read queries the API, the admin and tasks share (one tenant schema each)."""

from __future__ import annotations

from django.db.models import QuerySet

from alerting.models import Alert, AlertEvent, NotificationChannel, NotificationDelivery


def alerts() -> QuerySet[Alert]:
    """Alerts with the users who acknowledged/resolved them: one query for a page."""
    return Alert.objects.select_related("acknowledged_by", "resolved_by")


def alert_timeline(alert: Alert) -> QuerySet[AlertEvent]:
    return AlertEvent.objects.filter(alert=alert).order_by("at", "id")


def channels() -> QuerySet[NotificationChannel]:
    return NotificationChannel.objects.all()


def channel_deliveries(channel: NotificationChannel) -> QuerySet[NotificationDelivery]:
    return NotificationDelivery.objects.filter(channel=channel).order_by("-created_at", "-id")
