"""The per-tenant metric catalogue. Points live in the partitioned table `telemetry_point`
(created by migration 0002 with SQL: see `telemetry/storage.py`), not in an ORM model."""

from __future__ import annotations

from django.db import models

from devices.models import metric_name_validator


class Metric(models.Model):
    """A metric name and its unit, once per tenant; points refer to it by id."""

    name = models.CharField(max_length=64, unique=True, validators=[metric_name_validator])
    unit = models.CharField(max_length=32, blank=True, help_text="Normalised unit symbol, e.g. °C, %, bar, mm/s, A")
    description = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} [{self.unit}]" if self.unit else self.name
