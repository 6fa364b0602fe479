"""Choices shared by rules and alerts (rules import these; alerts store them)."""

from django.db import models


class Severity(models.TextChoices):
    CRITICAL = "critical", "Critical"
    MAJOR = "major", "Major"
    MINOR = "minor", "Minor"
    WARNING = "warning", "Warning"
    INFO = "info", "Info"


# Most severe first: the order lists and dashboards sort by.
SEVERITY_RANK = {severity.value: rank for rank, severity in enumerate(Severity)}
