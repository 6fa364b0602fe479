"""Device registry: profiles, devices, credentials, attributes, commands (one set per tenant schema)."""

from __future__ import annotations

import uuid

from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

# A device uid is one MQTT topic level and half of the device's MQTT username: no '/', '+', '#'.
device_uid_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
    "1-64 characters: letters, digits, '_', '.', ':' and '-', starting with a letter or digit.",
)
metric_name_validator = RegexValidator(
    r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$",
    "1-64 characters: letters, digits, '_', '.' and '-', starting with a letter.",
)


class DeviceProfile(models.Model):
    """A device type: the metrics it reports (with units and valid ranges) and its defaults."""

    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=500, blank=True)
    # Metrics not listed in the profile: register them on first sight, or reject the points.
    auto_register_metrics = models.BooleanField(default=False)
    # Shared attributes every new device of this profile starts with.
    default_attributes = models.JSONField(default=dict, blank=True)
    # Seconds without data after which a device of this profile is considered offline.
    offline_after_s = models.PositiveIntegerField(default=300)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ProfileMetric(models.Model):
    """One metric of a profile: its unit and the range of values accepted at ingest."""

    profile = models.ForeignKey(DeviceProfile, on_delete=models.CASCADE, related_name="metrics")
    metric = models.ForeignKey("telemetry.Metric", on_delete=models.PROTECT, related_name="profiles")
    min_value = models.FloatField(null=True, blank=True)
    max_value = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["profile_id", "metric__name"]
        constraints = [
            models.UniqueConstraint(fields=["profile", "metric"], name="profile_metric_unique"),
            models.CheckConstraint(
                name="profile_metric_range_ordered",
                condition=Q(min_value__isnull=True) | Q(max_value__isnull=True) | Q(min_value__lte=models.F("max_value")),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.profile_id}:{self.metric_id}"


class DeviceStatus(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"


class Device(models.Model):
    uid = models.CharField(max_length=64, unique=True, validators=[device_uid_validator])
    name = models.CharField(max_length=200)
    profile = models.ForeignKey(DeviceProfile, on_delete=models.PROTECT, related_name="devices")
    location = models.CharField(max_length=200, blank=True)
    latitude = models.FloatField(null=True, blank=True)
    longitude = models.FloatField(null=True, blank=True)
    labels = models.JSONField(default=dict, blank=True, help_text='String labels, e.g. {"line": "2", "area": "boilers"}')
    enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.UNKNOWN)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["uid"]
        indexes = [models.Index(fields=["profile", "uid"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return self.uid


class CredentialStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    REVOKED = "revoked", "Revoked"


class DeviceCredential(models.Model):
    """A device's secret (its MQTT password). Only a hash is stored; the secret is shown once."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="credentials")
    secret_hash = models.CharField(max_length=128)
    secret_prefix = models.CharField(max_length=8, help_text="First characters of the secret, to tell credentials apart.")
    status = models.CharField(max_length=16, choices=CredentialStatus.choices, default=CredentialStatus.ACTIVE)
    created_at = models.DateTimeField(db_default=Now())
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["device"], condition=Q(status="active"), name="one_active_credential_per_device"),
            models.CheckConstraint(
                name="credential_revoked_has_time",
                condition=Q(status="active", revoked_at__isnull=True) | Q(status="revoked", revoked_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.secret_prefix}… ({self.status})"


class AttributeScope(models.TextChoices):
    CLIENT = "client", "Client-reported"
    SERVER = "server", "Server-side"
    SHARED = "shared", "Shared to device"


class DeviceAttribute(models.Model):
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="attributes")
    scope = models.CharField(max_length=8, choices=AttributeScope.choices)
    key = models.CharField(max_length=100)
    value = models.JSONField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["device_id", "scope", "key"]
        constraints = [models.UniqueConstraint(fields=["device", "scope", "key"], name="device_attribute_unique")]

    def __str__(self) -> str:
        return f"{self.scope}:{self.key}"


class CommandStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"


COMMAND_TERMINAL = (CommandStatus.SUCCEEDED, CommandStatus.FAILED, CommandStatus.TIMED_OUT)


class DeviceCommand(models.Model):
    """A command sent to a device over its command topic, and what became of it."""

    command_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="commands")
    name = models.CharField(max_length=100)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=CommandStatus.choices, default=CommandStatus.PENDING)
    timeout_s = models.PositiveIntegerField(default=30)
    created_by_id = models.BigIntegerField(null=True, blank=True)
    created_by_email = models.CharField(max_length=254, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    delivered_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"]), models.Index(fields=["device", "-created_at"])]
        constraints = [
            models.CheckConstraint(
                name="command_terminal_has_completed_at",
                condition=Q(status__in=["pending", "delivered"], completed_at__isnull=True)
                | Q(status__in=["succeeded", "failed", "timed_out"], completed_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} -> {self.device_id} ({self.status})"
