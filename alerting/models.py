"""Alerts, their timeline, notification channels and deliveries (one set per tenant schema).

An alert is identified by its fingerprint (rule + device): while one is open, repeats bump its
counter instead of opening another (a partial unique constraint makes that hold under races).
Its state moves triggered -> acknowledged -> resolved only through alerting.services, and every
move appends an AlertEvent: the timeline, SLA figures and live updates read from those rows.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from alerting.choices import Severity


class AlertState(models.TextChoices):
    TRIGGERED = "triggered", "Triggered"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


OPEN_STATES = (AlertState.TRIGGERED, AlertState.ACKNOWLEDGED)

# The only moves a service may make; anything else is refused with 409 and the current state.
# Staying in the same state is a no-op (idempotent), not a transition.
ALERT_TRANSITIONS: dict[str, frozenset[str]] = {
    AlertState.TRIGGERED: frozenset({AlertState.ACKNOWLEDGED, AlertState.RESOLVED}),
    AlertState.ACKNOWLEDGED: frozenset({AlertState.RESOLVED}),
    AlertState.RESOLVED: frozenset(),
}


def alert_can_move(current: str, target: str) -> bool:
    return target in ALERT_TRANSITIONS.get(current, frozenset())


def alert_fingerprint(rule_id: int | None, device_id: int | None) -> str:
    """What makes two firings the same alert: the rule and the device ('-' when there is none)."""
    return f"rule:{'-' if rule_id is None else rule_id}|device:{'-' if device_id is None else device_id}"


class AlertQuerySet(models.QuerySet):
    def open(self) -> AlertQuerySet:
        return self.filter(state__in=OPEN_STATES)

    def triggered(self) -> AlertQuerySet:
        return self.filter(state=AlertState.TRIGGERED)

    def unacknowledged(self) -> AlertQuerySet:
        return self.triggered()

    def resolved(self) -> AlertQuerySet:
        return self.filter(state=AlertState.RESOLVED)

    def for_fingerprint(self, rule_id: int | None, device_id: int | None) -> AlertQuerySet:
        return self.filter(fingerprint=alert_fingerprint(rule_id, device_id))

    def seen_between(self, start: datetime | None, end: datetime | None) -> AlertQuerySet:
        """Alerts whose active span [first_seen, last_seen] overlaps [start, end)."""
        queryset = self
        if start is not None:
            queryset = queryset.filter(last_seen_at__gte=start)
        if end is not None:
            queryset = queryset.filter(first_seen_at__lt=end)
        return queryset


class Alert(models.Model):
    fingerprint = models.CharField(max_length=100, editable=False)
    # A plain id, not a foreign key: a rule may be deleted and its alerts' history kept.
    rule_id = models.BigIntegerField(null=True, blank=True)
    rule_name = models.CharField(max_length=200, blank=True)
    device = models.ForeignKey("devices.Device", on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts")
    device_uid = models.CharField(max_length=64, blank=True, help_text="The device's uid when the alert opened.")
    severity = models.CharField(max_length=16, choices=Severity.choices)
    state = models.CharField(max_length=16, choices=AlertState.choices, default=AlertState.TRIGGERED)
    message = models.CharField(max_length=1000, blank=True)
    value = models.FloatField(null=True, blank=True, help_text="The latest value that fired the rule.")
    details = models.JSONField(default=dict, blank=True)
    count = models.PositiveIntegerField(default=1, help_text="Firings folded into this alert.")
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    auto_resolved = models.BooleanField(default=False, help_text="Resolved because the condition cleared.")
    # When the timeline last got a 'repeated' event (repeats are folded into `count`; the
    # timeline notes them at most once per ALERT_REPEAT_EVENT_INTERVAL_S).
    repeat_logged_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = AlertQuerySet.as_manager()

    class Meta:
        ordering = ["-first_seen_at", "-id"]
        indexes = [
            models.Index(fields=["state", "-first_seen_at"], name="alert_state_first_seen"),
            models.Index(fields=["severity", "-first_seen_at"], name="alert_severity_first_seen"),
            models.Index(fields=["device", "-first_seen_at"], name="alert_device_first_seen"),
            models.Index(fields=["rule_id", "-first_seen_at"], name="alert_rule_first_seen"),
            models.Index(fields=["-first_seen_at", "-id"], name="alert_first_seen"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["fingerprint"],
                condition=Q(state__in=["triggered", "acknowledged"]),
                name="alert_one_open_per_fingerprint",
            ),
            models.CheckConstraint(
                name="alert_state_timestamps",
                condition=Q(state="triggered", acknowledged_at__isnull=True, resolved_at__isnull=True)
                | Q(state="acknowledged", acknowledged_at__isnull=False, resolved_at__isnull=True)
                | Q(state="resolved", resolved_at__isnull=False),
            ),
            models.CheckConstraint(
                name="alert_auto_resolved_is_resolved", condition=Q(auto_resolved=False) | Q(state="resolved")
            ),
            models.CheckConstraint(name="alert_count_positive", condition=Q(count__gte=1)),
            models.CheckConstraint(name="alert_seen_ordered", condition=Q(first_seen_at__lte=models.F("last_seen_at"))),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.rule_name or 'alert'} on {self.device_uid or '-'} ({self.state})"

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def time_to_acknowledge_s(self) -> float | None:
        if self.acknowledged_at is None:
            return None
        return max((self.acknowledged_at - self.first_seen_at).total_seconds(), 0.0)

    @property
    def time_to_resolve_s(self) -> float | None:
        if self.resolved_at is None:
            return None
        return max((self.resolved_at - self.first_seen_at).total_seconds(), 0.0)


class AlertEventKind(models.TextChoices):
    TRIGGERED = "triggered", "Triggered"
    REPEATED = "repeated", "Repeated"
    ESCALATED = "escalated", "Severity raised"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"
    AUTO_RESOLVED = "auto_resolved", "Auto-resolved (condition cleared)"
    NOTE = "note", "Note"
    NOTIFICATION_SENT = "notification_sent", "Notification sent"
    NOTIFICATION_FAILED = "notification_failed", "Notification failed"


class AlertEvent(models.Model):
    """One line of an alert's timeline: what happened, when, and who did it (None: the system)."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=24, choices=AlertEventKind.choices)
    at = models.DateTimeField(db_default=Now())
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    actor_email = models.CharField(max_length=254, blank=True)
    text = models.TextField(blank=True, help_text="The note, or a short description of the event.")
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["alert", "at", "id"], name="alert_event_timeline")]

    def __str__(self) -> str:
        return f"{self.kind} @ {self.at:%Y-%m-%d %H:%M:%S}"


class ChannelKind(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook"
    LIVE = "live", "Live (dashboards)"


class NotificationChannelQuerySet(models.QuerySet):
    def enabled(self) -> NotificationChannelQuerySet:
        return self.filter(enabled=True)


class NotificationChannel(models.Model):
    """Where a tenant's notifications go. `config` is validated per kind (alerting.notifiers)."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=ChannelKind.choices)
    enabled = models.BooleanField(default=True)
    config = models.JSONField(default=dict, blank=True)
    # Least severe alert the channel is sent (blank: every severity).
    min_severity = models.CharField(max_length=16, choices=Severity.choices, blank=True)
    # Webhook signing key: generated by the service, shown once, never returned again.
    secret = models.CharField(max_length=128, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = NotificationChannelQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def clean(self) -> None:
        from alerting.notifiers import validate_channel_config

        self.config = validate_channel_config(self.kind, self.config)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RETRYING = "retrying", "Retrying"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


DELIVERY_FINAL = (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED)


class NotificationDeliveryQuerySet(models.QuerySet):
    def unfinished(self) -> NotificationDeliveryQuerySet:
        return self.filter(status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING])


class NotificationDelivery(models.Model):
    """One notification to one channel; `attempts` counts the tries (retries reuse the row)."""

    channel = models.ForeignKey(NotificationChannel, on_delete=models.CASCADE, related_name="deliveries")
    alert = models.ForeignKey(Alert, on_delete=models.SET_NULL, null=True, blank=True, related_name="deliveries")
    event_kind = models.CharField(max_length=24, blank=True, help_text="Alert event that caused it ('test' for a test send).")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    payload = models.JSONField(default=dict, blank=True)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_excerpt = models.CharField(max_length=2000, blank=True)
    error = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = NotificationDeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["channel", "-created_at"], name="delivery_channel_created"),
            models.Index(fields=["status"], name="delivery_status"),
        ]
        constraints = [
            models.CheckConstraint(
                name="delivery_final_has_finished_at",
                condition=Q(status__in=["pending", "retrying"], finished_at__isnull=True)
                | Q(status__in=["succeeded", "failed"], finished_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel_id} {self.event_kind} ({self.status}, {self.attempts} attempts)"
