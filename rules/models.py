"""Rules: a condition over a target's telemetry and what to do when it holds (one set per tenant).

A rule's `condition` is a JSON object whose shape depends on its `type` (rules/conditions.py
documents and validates each shape); `schedule` limits when it may fire; `actions` say what firing
does (raise an alert, notify channels, send a device command). Invariants live in `clean()` (the
API and the admin both call `full_clean()`) and in the constraints below.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from alerting.choices import Severity


class RuleType(models.TextChoices):
    # Streaming: evaluated in the ingest pipeline on each point as it arrives.
    THRESHOLD = "threshold", "Threshold"
    COMPARISON = "comparison", "Comparison (expression)"
    # Windowed (time-based and statistical): evaluated by Celery beat every RULES_WINDOW_INTERVAL_S.
    NO_DATA = "no_data", "No data for N seconds"
    RATE_OF_CHANGE = "rate_of_change", "Rate of change over a window"
    STATISTICAL = "statistical", "Rolling aggregate over a window"
    ZSCORE = "zscore", "Z-score against a rolling baseline"


STREAMING_TYPES = (RuleType.THRESHOLD, RuleType.COMPARISON)
WINDOWED_TYPES = (RuleType.NO_DATA, RuleType.RATE_OF_CHANGE, RuleType.STATISTICAL, RuleType.ZSCORE)


class TargetKind(models.TextChoices):
    DEVICE = "device", "One device"
    PROFILE = "profile", "Every device of a profile"
    LABELS = "labels", "Every device carrying all the given labels"


class RuleQuerySet(models.QuerySet):
    def enabled(self) -> RuleQuerySet:
        return self.filter(enabled=True)

    def streaming(self) -> RuleQuerySet:
        return self.filter(type__in=STREAMING_TYPES)

    def windowed(self) -> RuleQuerySet:
        return self.filter(type__in=WINDOWED_TYPES)


class Rule(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.CharField(max_length=1000, blank=True)
    type = models.CharField(max_length=20, choices=RuleType.choices)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    enabled = models.BooleanField(default=True)
    target_kind = models.CharField(max_length=10, choices=TargetKind.choices)
    target_device = models.ForeignKey("devices.Device", null=True, blank=True, on_delete=models.CASCADE, related_name="rules")
    target_profile = models.ForeignKey("devices.DeviceProfile", null=True, blank=True, on_delete=models.CASCADE, related_name="rules")
    target_labels = models.JSONField(default=dict, blank=True, help_text='Devices carrying all these labels, e.g. {"line": "2"}')
    condition = models.JSONField(help_text="Shape depends on the type: see rules/conditions.py.")
    schedule = models.JSONField(
        null=True, blank=True, help_text='Active only then, e.g. {"days": [0,1,2,3,4], "start": "08:00", "end": "18:00"}'
    )
    cooldown_s = models.PositiveIntegerField(default=0, help_text="Minimum seconds between two firings for the same device.")
    actions = models.JSONField(default=dict, blank=True, help_text="raise_alert, channel_ids, command: see rules/conditions.py.")
    created_by_email = models.CharField(max_length=254, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RuleQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["enabled", "type"])]
        constraints = [
            models.CheckConstraint(
                name="rule_target_consistent",
                condition=Q(target_kind="device", target_device__isnull=False, target_profile__isnull=True)
                | Q(target_kind="profile", target_profile__isnull=False, target_device__isnull=True)
                | Q(target_kind="labels", target_device__isnull=True, target_profile__isnull=True),
            ),
            models.CheckConstraint(name="rule_cooldown_bounded", condition=Q(cooldown_s__lte=7 * 86400)),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_streaming(self) -> bool:
        return self.type in STREAMING_TYPES

    def clean(self) -> None:
        from rules import conditions

        errors: dict[str, list[str]] = {}
        if self.target_kind == TargetKind.DEVICE:
            if self.target_device_id is None:
                errors.setdefault("target_device", []).append("Required when the target is one device.")
            self.target_profile = None
            self.target_labels = {}
        elif self.target_kind == TargetKind.PROFILE:
            if self.target_profile_id is None:
                errors.setdefault("target_profile", []).append("Required when the target is a profile.")
            self.target_device = None
            self.target_labels = {}
        elif self.target_kind == TargetKind.LABELS:
            self.target_device = None
            self.target_profile = None
            try:
                self.target_labels = conditions.validate_labels(self.target_labels)
            except ValidationError as exc:
                errors.setdefault("target_labels", []).extend(exc.messages)
        if self.cooldown_s is not None and self.cooldown_s > 7 * 86400:
            errors.setdefault("cooldown_s", []).append("At most 604800 (7 days).")
        if errors:
            raise ValidationError(errors)
        if self.type in RuleType.values:
            self.condition = conditions.validate_condition(self)
        self.schedule = conditions.validate_schedule(self.schedule)
        self.actions = conditions.validate_actions(self.actions, rule_type=self.type)
